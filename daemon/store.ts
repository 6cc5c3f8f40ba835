// The job store: SQLite in WAL mode in the state directory. Every state transition is
// stored with its time and reason; job output is stored as it arrives, so a daemon
// restart loses neither.
import Database from 'better-sqlite3';
import { createHash } from 'node:crypto';

export type JobState = 'queued' | 'starting' | 'running' | 'paused' | 'suspended' | 'succeeded' | 'failed' | 'cancelled';
export const FINAL_STATES: ReadonlySet<JobState> = new Set(['succeeded', 'failed', 'cancelled']);
export const JOB_STATES: readonly JobState[] = ['queued', 'starting', 'running', 'paused', 'suspended', 'succeeded', 'failed', 'cancelled'];

export interface JobSpec {
  name: string;
  command: string[];
  env: Record<string, string>;
  rootfs: string;
  outputDir: string;
  vcpus: { min: number; max: number };
  memoryMiB: { min: number; max: number };
  priority: number;
  timeoutSeconds: number;
  retries: number;
  /** The backend (resolved at submission); '' or absent (a job stored before there was a choice): lodgerd's default. 'auto' only before it is resolved. */
  runtime?: '' | 'auto' | 'qemu' | 'gvisor';
  /** An OCI image ref (host path) whose root the job runs in; its config filled command, env, workdir and user at submission. */
  image?: string;
  /** The image's ID (config digest) when it was submitted: the cache entry a start uses. */
  imageId?: string;
  /** Working directory in the job's root; default '/'. */
  workdir?: string;
  /** User to run as (`uid[:gid]` or a name of the image's /etc/passwd); default root. */
  user?: string;
}

export interface Transition {
  state: JobState;
  at: number;
  reason: string;
}

export interface JobRecord {
  id: string;
  spec: JobSpec;
  state: JobState;
  exitCode: number | null;
  error: string;
  attempts: number;
  sandboxId: string;
  /** What is needed to find a running sandbox again after a daemon restart. */
  attach: Record<string, unknown> | null;
  createdAt: number;
  transitions: Transition[];
}

export interface LogChunk {
  seq: number;
  stream: 'stdout' | 'stderr';
  data: Buffer;
  at: number;
}

export class StoreError extends Error {
  constructor(readonly code: 'JOB_NOT_FOUND' | 'JOB_EXISTS' | 'BAD_TRANSITION' | 'STORE_LOCKED', message: string) {
    super(message);
  }
}

export function specDigest(spec: JobSpec): string {
  return createHash('sha256').update(JSON.stringify(spec)).digest('hex');
}

interface JobRow {
  id: string;
  spec: string;
  state: JobState;
  exit_code: number | null;
  error: string;
  attempts: number;
  sandbox_id: string;
  attach: string | null;
  created_at: number;
}

export class JobStore {
  private readonly db: Database.Database;
  /** Prepared once: a job's log lines are stored as they come, many per second. */
  private readonly statements = new Map<string, Database.Statement>();

  constructor(path: string, private readonly clock: () => number = Date.now) {
    this.db = new Database(path);
    // The store is this process's alone, locked from the start: a second lodgerd on the same
    // state directory, or any process holding a lock on the file, is found here with a clear
    // error, rather than later, when a write would wait (the whole event loop with it: the
    // calls are synchronous) and then fail a running job's output.
    this.db.pragma('busy_timeout = 2000');
    this.db.pragma('locking_mode = EXCLUSIVE');
    try {
      this.db.pragma('journal_mode = WAL');
      this.db.exec('BEGIN EXCLUSIVE; COMMIT');
    } catch (e) {
      this.db.close();
      if ((e as { code?: string }).code?.startsWith('SQLITE_BUSY')) throw new StoreError('STORE_LOCKED', `the job store ${path} is locked by another process (another lodgerd on this state directory?)`);
      throw e;
    }
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY, spec TEXT NOT NULL, digest TEXT NOT NULL, state TEXT NOT NULL, priority INTEGER NOT NULL,
        exit_code INTEGER, error TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,
        sandbox_id TEXT NOT NULL DEFAULT '', attach TEXT, created_at INTEGER NOT NULL);
      CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, priority DESC, created_at);
      CREATE TABLE IF NOT EXISTS transitions (job_id TEXT NOT NULL, seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL);
      CREATE INDEX IF NOT EXISTS transitions_job ON transitions (job_id, seq);
      CREATE TABLE IF NOT EXISTS logs (job_id TEXT NOT NULL, seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, stream TEXT NOT NULL, data BLOB NOT NULL);
      CREATE INDEX IF NOT EXISTS logs_job ON logs (job_id, seq);
    `);
  }

  private sql(text: string): Database.Statement {
    let st = this.statements.get(text);
    if (!st) {
      st = this.db.prepare(text);
      this.statements.set(text, st);
    }
    return st;
  }

  /** Inserts a queued job; the same id with the same spec returns the existing one. */
  submit(id: string, spec: JobSpec): { job: JobRecord; created: boolean } {
    const digest = specDigest(spec);
    return this.db.transaction(() => {
      const existing = this.sql('SELECT digest FROM jobs WHERE id = ?').get(id) as { digest: string } | undefined;
      if (existing) {
        if (existing.digest !== digest) throw new StoreError('JOB_EXISTS', `job ${id} exists with a different spec`);
        return { job: this.get(id), created: false };
      }
      const now = this.clock();
      this.sql('INSERT INTO jobs (id, spec, digest, state, priority, created_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(id, JSON.stringify(spec), digest, 'queued', spec.priority, now);
      this.sql('INSERT INTO transitions (job_id, at, state, reason) VALUES (?, ?, ?, ?)').run(id, now, 'queued', 'submitted');
      return { job: this.get(id), created: true };
    })();
  }

  private row(id: string): JobRow {
    const r = this.sql('SELECT * FROM jobs WHERE id = ?').get(id) as JobRow | undefined;
    if (!r) throw new StoreError('JOB_NOT_FOUND', `no job ${id}`);
    return r;
  }

  private toRecord(r: JobRow): JobRecord {
    const transitions = (this.sql('SELECT at, state, reason FROM transitions WHERE job_id = ? ORDER BY seq').all(r.id) as Transition[]);
    return {
      id: r.id, spec: JSON.parse(r.spec) as JobSpec, state: r.state, exitCode: r.exit_code, error: r.error, attempts: r.attempts,
      sandboxId: r.sandbox_id, attach: r.attach ? JSON.parse(r.attach) as Record<string, unknown> : null, createdAt: r.created_at, transitions,
    };
  }

  get(id: string): JobRecord {
    return this.toRecord(this.row(id));
  }

  list(states: JobState[] = [], limit = 100): JobRecord[] {
    const rows = states.length
      ? this.sql(`SELECT * FROM jobs WHERE state IN (${states.map(() => '?').join(',')}) ORDER BY created_at DESC LIMIT ?`).all(...states, limit)
      : this.sql('SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?').all(limit);
    return (rows as JobRow[]).map((r) => this.toRecord(r));
  }

  /** Queued jobs, highest priority first, then oldest. */
  queued(): JobRecord[] {
    return (this.sql("SELECT * FROM jobs WHERE state = 'queued' ORDER BY priority DESC, created_at, rowid").all() as JobRow[]).map((r) => this.toRecord(r));
  }

  counts(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const s of JOB_STATES) out[s] = 0;
    for (const r of this.sql('SELECT state, COUNT(*) n FROM jobs GROUP BY state').all() as { state: string; n: number }[]) out[r.state] = r.n;
    return out;
  }

  /**
   * Moves a job to `to` with a reason, optionally updating fields. A final state is
   * final: moving out of it is refused, so nothing runs twice.
   */
  transition(id: string, to: JobState, reason: string, fields: Partial<Pick<JobRecord, 'exitCode' | 'error' | 'attempts' | 'sandboxId' | 'attach'>> = {}): JobRecord {
    return this.db.transaction(() => {
      const r = this.row(id);
      if (FINAL_STATES.has(r.state)) throw new StoreError('BAD_TRANSITION', `job ${id} is ${r.state}; it cannot become ${to}`);
      const now = this.clock();
      this.sql(`UPDATE jobs SET state = ?, exit_code = COALESCE(?, exit_code), error = COALESCE(?, error), attempts = COALESCE(?, attempts),
                       sandbox_id = COALESCE(?, sandbox_id), attach = CASE WHEN ? THEN ? ELSE attach END WHERE id = ?`)
        .run(to, fields.exitCode ?? null, fields.error ?? null, fields.attempts ?? null, fields.sandboxId ?? null,
          'attach' in fields ? 1 : 0, fields.attach ? JSON.stringify(fields.attach) : null, id);
      this.sql('INSERT INTO transitions (job_id, at, state, reason) VALUES (?, ?, ?, ?)').run(id, now, to, reason);
      return this.get(id);
    })();
  }

  /** Updates fields of a job without a state change (what a restarted daemon needs to find its sandbox). */
  note(id: string, fields: Partial<Pick<JobRecord, 'exitCode' | 'attach'>>): void {
    this.row(id);
    if ('attach' in fields) this.sql('UPDATE jobs SET attach = ? WHERE id = ?').run(fields.attach ? JSON.stringify(fields.attach) : null, id);
    if (fields.exitCode !== undefined) this.sql('UPDATE jobs SET exit_code = ? WHERE id = ?').run(fields.exitCode, id);
  }

  /** The newest log sequence number (0 when none): later output belongs to a later attempt. */
  lastLogSeq(): number {
    return (this.sql('SELECT COALESCE(MAX(seq), 0) n FROM logs').get() as { n: number }).n;
  }

  /** Bytes of stdout and stderr stored for a job after a log sequence number. */
  logBytes(id: string, afterSeq = 0): [number, number] {
    const rows = this.sql('SELECT stream, SUM(LENGTH(data)) n FROM logs WHERE job_id = ? AND seq > ? GROUP BY stream').all(id, afterSeq) as { stream: string; n: number }[];
    return [rows.find((r) => r.stream === 'stdout')?.n ?? 0, rows.find((r) => r.stream === 'stderr')?.n ?? 0];
  }

  appendLog(id: string, stream: 'stdout' | 'stderr', data: Buffer): number {
    const r = this.sql('INSERT INTO logs (job_id, at, stream, data) VALUES (?, ?, ?, ?)').run(id, this.clock(), stream, data);
    return Number(r.lastInsertRowid);
  }

  logs(id: string, afterSeq = 0): LogChunk[] {
    return (this.sql('SELECT seq, stream, data, at FROM logs WHERE job_id = ? AND seq > ? ORDER BY seq').all(id, afterSeq) as LogChunk[]);
  }

  close(): void {
    this.db.close();
  }
}
