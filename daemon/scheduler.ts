// Runs queued jobs in sandboxes: highest priority first, as many at once as the budget
// allows. Each job gets a sandbox sized to its minimum, which the controller may grow
// to its maximum; its output is stored as it arrives; /output is copied back when it
// ends, also when it fails. Every state change goes through the store with a reason.
import { EventEmitter } from 'node:events';
import { resolveUser, type ExecHandle, type ExecRequest, type ImageCache, type ImageLease, type Sandbox, type SandboxRuntime, type SandboxSpec } from '../sandbox-runtime/index.ts';
import { WarmPool, POOL_BASE_MEMORY_MIB } from './pool.ts';
import { FINAL_STATES, type JobRecord, type JobState, type JobStore } from './store.ts';

export interface SchedulerOptions {
  store: JobStore;
  runtime: SandboxRuntime;
  /** How many jobs may run at once (from the batch budget). */
  maxRunning: () => number;
  /** Pre-booted sandboxes; jobs that fit start in one of them. */
  pool?: WarmPool | null;
  /** Output stored per job attempt (stdout and stderr together); past it, dropped with a marker. Default: no limit. */
  logLimitBytes?: number;
  log?: (m: string) => void;
  /** Roots of jobs from images (built once per image, shared); without it such jobs fail. */
  images?: ImageCache | null;
}

/** Emitted as 'jobStart': admission to the command handed to the guest. */
export interface JobStartEvent {
  jobId: string;
  ms: number;
  source: 'pool' | 'cold';
}

interface Running {
  job: JobRecord;
  /** run() of this job, settled when its outcome is stored. */
  done?: Promise<void>;
  sandbox: Sandbox | null;
  exec: ExecHandle | null;
  cancel: { state: JobState; reason: string } | null;
  timer: NodeJS.Timeout | null;
  /** Output stored for this attempt, and what was dropped past the limit. */
  logBytes: number;
  droppedBytes: number;
  logFull: boolean;
  storeFailed: boolean;
  /** The image cache entry the job's sandbox runs on, held until the sandbox is stopped. */
  image: ImageLease | null;
}

/**
 * Stored in the job record while it runs: what a restarted daemon needs to take the job up
 * again. No VMM pid: the runtime finds the VMM from the sandbox's id (attach, list, shutdown).
 */
export interface AttachInfo {
  sandboxId: string;
  /** The agent's exec id of the job's command; absent until the command was sent. */
  execId?: number;
  /** Log sequence number before this attempt's output. */
  logSeq: number;
}

export function sandboxSpecFor(job: JobRecord, sandboxId: string): SandboxSpec {
  const spec = job.spec;
  return {
    id: sandboxId, vcpus: spec.vcpus.min, maxVcpus: spec.vcpus.max, memoryMiB: spec.memoryMiB.min, maxMemoryMiB: spec.memoryMiB.max,
    rootfsDir: spec.rootfs || undefined, outputDir: spec.outputDir || undefined,
    backend: spec.runtime === 'qemu' || spec.runtime === 'gvisor' ? spec.runtime : undefined,
  };
}

/** A signal for a job whose command is not running (queued, still starting, or ended). */
export class JobNotRunning extends Error {
  readonly code = 'JOB_NOT_RUNNING';
}

export interface JobEvent {
  at: number;
  jobId: string;
  state: JobState;
  reason: string;
}

export class Scheduler extends EventEmitter {
  private readonly running = new Map<string, Running>();
  private timer: NodeJS.Timeout | null = null;
  private pumping = false;
  private stopped = false;
  /** No new job starts (a drain); running ones go on. */
  private held = false;

  constructor(private readonly o: SchedulerOptions) {
    super();
    this.setMaxListeners(0);
  }

  start(): void {
    this.timer = setInterval(() => void this.pump(), 250);
    void this.pump();
  }

  /** Sandboxes of running jobs, for the controller and GetStatus. */
  sandboxes(): { jobId: string; sandbox: Sandbox }[] {
    return [...this.running.values()].filter((r) => r.sandbox).map((r) => ({ jobId: r.job.id, sandbox: r.sandbox! }));
  }

  private move(id: string, state: JobState, reason: string, fields: Parameters<JobStore['transition']>[3] = {}): JobRecord {
    const job = this.o.store.transition(id, state, reason, fields);
    const ev: JobEvent = { at: Date.now(), jobId: id, state, reason };
    this.emit('job', ev);
    this.o.log?.(`job ${id}: ${state} (${reason})`);
    return job;
  }

  /** Starts what the budget allows. */
  async pump(): Promise<void> {
    if (this.pumping || this.stopped || this.held) return;
    this.pumping = true;
    try {
      for (const job of this.o.store.queued()) {
        if (this.running.size >= Math.max(1, this.o.maxRunning())) break;
        if (this.running.has(job.id)) continue;
        this.launch(job, null);
      }
    } finally {
      this.pumping = false;
    }
  }

  private launch(job: JobRecord, adopt: AttachInfo | null): void {
    const r: Running = { job, sandbox: null, exec: null, cancel: null, timer: null, logBytes: 0, droppedBytes: 0, logFull: false, storeFailed: false, image: null };
    this.running.set(job.id, r);
    r.done = this.run(r, adopt).catch((e: unknown) => this.o.log?.(`job ${job.id}: ${(e as Error).message}`)).finally(() => {
      if (r.timer) clearTimeout(r.timer);
      this.running.delete(job.id);
      this.emit('idle-check');
      void this.pump();
    });
  }

  /**
   * Takes up a job an earlier daemon left running: its sandbox is attached, its command's
   * output after what is stored is replayed, and it goes on to its end. Nothing runs again.
   */
  adopt(job: JobRecord): void {
    const a = job.attach as unknown as AttachInfo;
    this.o.log?.(`job ${job.id}: taking up sandbox ${a.sandboxId} (exec ${a.execId})`);
    this.launch(job, a);
  }

  private async run(r: Running, adopt: AttachInfo | null): Promise<void> {
    const { store } = this.o;
    const spec = r.job.spec;
    const attempt = adopt ? r.job.attempts : r.job.attempts + 1;
    const t0 = performance.now();
    const warm = adopt ? null : this.o.pool?.take(spec) ?? null;
    const sandboxId = adopt?.sandboxId ?? warm?.id ?? `job-${r.job.id}-${attempt}`.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 64);
    if (!adopt) this.move(r.job.id, 'starting', `attempt ${attempt}: admitted${warm ? ` to warm sandbox ${sandboxId}` : ''}`, { attempts: attempt, sandboxId });
    if (spec.timeoutSeconds > 0) {
      // A job taken up after a restart keeps the deadline of its attempt's start.
      const startedAt = [...r.job.transitions].reverse().find((x) => x.state === 'starting')?.at ?? Date.now();
      const left = adopt ? Math.max(0, startedAt + spec.timeoutSeconds * 1000 - Date.now()) : spec.timeoutSeconds * 1000;
      r.timer = setTimeout(() => void this.cancel(r.job.id, `timed out after ${spec.timeoutSeconds} s`, 'failed'), left);
    }
    let outcome: { state: JobState; reason: string; exitCode?: number; error?: string };
    try {
      // The image's root, from the cache (built there first if it is not: once per image).
      let imageNote = '';
      if (spec.image && adopt) r.image = this.o.images?.hold(spec.imageId ?? '') ?? null;
      else if (spec.image) {
        if (!this.o.images) throw new Error('IMAGE_CACHE_FAILED: this lodgerd has no image cache');
        r.image = await this.o.images.acquire(spec.image, spec.imageId);
        imageNote = `; image ${r.image.id.slice(0, 19)} ${r.image.fromCache ? 'from the cache' : 'unpacked and packed'} in ${r.image.ms.toFixed(0)} ms`;
      }
      // Resolved in the job's own root: a user name is the image's.
      const user = spec.user ? resolveUser(r.image?.rootfsDir ?? spec.rootfs ?? '', spec.user, spec.image ?? spec.rootfs ?? 'the base image') ?? undefined : undefined;
      if (adopt) {
        r.sandbox = await this.o.runtime.attach(sandboxId);
        r.exec = await r.sandbox.resumeExec(adopt.execId!, store.logBytes(r.job.id, adopt.logSeq));
        const found = r.sandbox.status().state;
        if (found === 'paused' || found === 'suspended' || found === 'running') this.sandboxState(sandboxId, found, `sandbox ${sandboxId} found ${found} after a lodgerd restart`);
        this.emit('job', { at: Date.now(), jobId: r.job.id, state: store.get(r.job.id).state, reason: `taken up again after a lodgerd restart (sandbox ${sandboxId})` } satisfies JobEvent);
      } else if (warm) {
        r.sandbox = warm;
        // The job's output directory and limits, and its minimum size by hotplug.
        const grow = spec.vcpus.min > 1 || spec.memoryMiB.min > POOL_BASE_MEMORY_MIB;
        await warm.update({
          outputDir: spec.outputDir || undefined, limits: { maxVcpus: spec.vcpus.max, maxMemoryMiB: spec.memoryMiB.max },
          ...(grow ? { vcpus: spec.vcpus.min, memoryMiB: spec.memoryMiB.min } : {}),
        });
      } else {
        const sbSpec = sandboxSpecFor(r.job, sandboxId);
        if (r.image) Object.assign(sbSpec, { rootfsDir: r.image.rootfsDir, rootfsImage: r.image.rootfsImage ?? undefined });
        r.sandbox = await this.o.runtime.create(sbSpec);
        if (r.cancel) throw new Error('cancelled before start');
        await r.sandbox.start();
      }
      if (!adopt) {
        const logSeq = store.lastLogSeq();
        const attach: AttachInfo = { sandboxId, logSeq };
        this.move(r.job.id, 'running', `sandbox ${sandboxId} ready${imageNote}`, { attach: attach as unknown as Record<string, unknown> });
        if (r.cancel) throw new Error('cancelled while starting');
        r.exec = await r.sandbox.exec({ argv: spec.command, env: spec.env, ...(spec.workdir ? { cwd: spec.workdir } : {}), ...(user ? { user } : {}) });
        store.note(r.job.id, { attach: { ...attach, execId: r.exec.id } });
        this.emit('jobStart', { jobId: r.job.id, ms: performance.now() - t0, source: warm ? 'pool' : 'cold' } satisfies JobStartEvent);
      }
      const exec = r.exec as ExecHandle | null;
      if (!exec) throw new Error('no command was started');
      if (adopt) {
        r.logBytes = store.logBytes(r.job.id, adopt.logSeq).reduce((a, b) => a + b, 0);
        r.logFull = r.logBytes >= (this.o.logLimitBytes ?? Infinity); // the marker is stored already
      }
      exec.onStdout((b) => this.output(r, 'stdout', b));
      exec.onStderr((b) => this.output(r, 'stderr', b));
      const exit = await exec.wait();
      const code = exit.code ?? 128 + (exit.signal ?? 0);
      // Stored before the guest is told it may forget the exit status (on a later tick).
      store.note(r.job.id, { exitCode: code });
      // Re-read: cancel() may have set it while we waited (TypeScript narrowed it above).
      const cancelled = r.cancel as Running['cancel'];
      outcome = cancelled ? { ...cancelled, exitCode: code }
        : code === 0 ? { state: 'succeeded', reason: 'exit 0', exitCode: 0 }
          : { state: 'failed', reason: exit.signal ? `killed by signal ${exit.signal}` : `exit ${code}`, exitCode: code };
    } catch (e) {
      const msg = `${(e as { code?: string }).code ? `${(e as { code: string }).code}: ` : ''}${(e as Error).message}`;
      const known = adopt ? store.get(r.job.id).exitCode : null;
      // The exit status was stored just before the daemon died: the guest let it go.
      outcome = r.cancel ? { ...r.cancel, error: msg }
        : known !== null ? { state: known === 0 ? 'succeeded' : 'failed', reason: `exit ${known}`, exitCode: known }
          : { state: 'failed', reason: msg.split('\n')[0]!, error: msg };
    }
    // Always stop the sandbox: it copies /output back, also after a failure.
    await r.sandbox?.stop({ graceMs: r.cancel ? 0 : 2000 }).catch((e: unknown) => this.o.log?.(`job ${r.job.id}: stopping its sandbox: ${(e as Error).message}`));
    r.image?.release();
    r.image = null;
    if (outcome.state === 'failed' && !r.cancel && attempt <= spec.retries && !this.stopped) {
      this.move(r.job.id, 'queued', `attempt ${attempt} failed (${outcome.reason}); retrying`, { attach: null, error: outcome.error ?? '' });
      return;
    }
    if (FINAL_STATES.has(store.get(r.job.id).state)) return;
    if (r.logFull) {
      const why = `SANDBOX_OUTPUT_LIMIT: output past ${this.o.logLimitBytes} bytes dropped (${r.droppedBytes} bytes)`;
      outcome = { ...outcome, reason: `${outcome.reason}; ${why}`, error: outcome.error ? `${outcome.error}\n${why}` : why };
    }
    this.move(r.job.id, outcome.state, outcome.reason, { exitCode: outcome.exitCode, error: outcome.error ?? '', attach: null });
  }

  /**
   * Stores a job's output up to the log limit (a guest that floods its stdout must not fill
   * the store); the first byte past it stores a marker instead, and the rest is counted,
   * acknowledged to the guest (so the job runs on) and dropped.
   */
  private output(r: Running, stream: 'stdout' | 'stderr', data: Buffer): void {
    const limit = this.o.logLimitBytes ?? Infinity;
    if (r.logFull || r.storeFailed) {
      r.droppedBytes += data.length;
      return;
    }
    const room = limit - r.logBytes;
    if (data.length <= room) {
      r.logBytes += data.length;
      return this.append(r.job.id, stream, data);
    }
    if (room > 0) this.append(r.job.id, stream, data.subarray(0, room));
    r.logBytes = limit;
    r.logFull = true;
    r.droppedBytes += data.length - Math.max(0, room);
    this.append(r.job.id, 'stderr', Buffer.from(`\n[lodger: output limit of ${limit} bytes reached (jobLogMaxBytes); further output of this job is dropped]\n`));
    this.o.log?.(`job ${r.job.id}: output limit of ${limit} bytes reached; dropping the rest`);
  }

  /**
   * A store that cannot take the output (its disk is full) fails the job, naming the cause:
   * what was stored stays, and the error must not escape into the agent's socket handler.
   */
  private append(id: string, stream: 'stdout' | 'stderr', data: Buffer): void {
    let seq: number;
    try {
      seq = this.o.store.appendLog(id, stream, data);
    } catch (e) {
      const r = this.running.get(id);
      if (r && !r.cancel) {
        const why = `output not stored: ${(e as { code?: string }).code ?? 'STORE_ERROR'}: ${(e as Error).message}`;
        this.o.log?.(`job ${id}: ${why}`);
        r.storeFailed = true; // store nothing more of it
        void this.cancel(id, why, 'failed').catch((c: unknown) => this.o.log?.(`job ${id}: not cancelled: ${(c as Error).message}`));
      }
      return;
    }
    this.emit(`log:${id}`, { seq, stream, data, at: Date.now() });
  }

  /**
   * The controller paused, resumed, suspended or restored a job's sandbox: the job's
   * state follows, with the controller's reason.
   */
  sandboxState(sandboxId: string, state: 'running' | 'paused' | 'suspended', reason: string): void {
    const r = [...this.running.values()].find((x) => x.sandbox?.id === sandboxId);
    if (!r) return;
    const cur = this.o.store.get(r.job.id).state;
    if (cur === state || !['running', 'paused', 'suspended'].includes(cur)) return;
    this.move(r.job.id, state, reason);
  }

  /** Cancels a queued job at once, or stops a running one (SIGTERM, then its sandbox). */
  async cancel(id: string, reason: string, as: JobState = 'cancelled'): Promise<JobRecord> {
    const job = this.o.store.get(id);
    if (FINAL_STATES.has(job.state)) return job;
    const r = this.running.get(id);
    if (!r) return this.move(id, as, reason);
    r.cancel = { state: as, reason };
    await r.exec?.signal(15).catch(() => {});
    // Give the job a moment to exit on SIGTERM, then take its sandbox down.
    setTimeout(() => { void r.sandbox?.stop({ graceMs: 0 }).catch(() => {}); }, 3000).unref();
    return this.o.store.get(id);
  }

  /** Sends a signal to a running job's command; its end is the job's, as for any exit. */
  async signal(id: string, signo: number): Promise<JobRecord> {
    const job = this.o.store.get(id);
    const exec = this.running.get(id)?.exec;
    if (!exec || FINAL_STATES.has(job.state)) throw new JobNotRunning(`job ${id} is ${job.state}: no command runs to take signal ${signo}`);
    await exec.signal(signo);
    return this.o.store.get(id);
  }

  /** The sandbox of a job that runs (or is paused); JobNotRunning otherwise. */
  private liveSandbox(id: string): Sandbox {
    const job = this.o.store.get(id);
    const sandbox = this.running.get(id)?.sandbox;
    if (!sandbox || (job.state !== 'running' && job.state !== 'paused')) throw new JobNotRunning(`job ${id} is ${job.state}: no sandbox runs a command for it`);
    const st = sandbox.status().state;
    // A paused sandbox runs the command once the controller resumes it; one on disk cannot run it.
    if (st !== 'running' && st !== 'paused') throw new JobNotRunning(`job ${id}: its sandbox is ${st}`);
    return sandbox;
  }

  /** One more command in a running job's sandbox (ExecInJob); it ends with the sandbox. */
  async exec(id: string, req: ExecRequest): Promise<ExecHandle> {
    return this.liveSandbox(id).exec(req);
  }

  /** What a running job's sandbox uses now (GetJobStats). */
  async stats(id: string): Promise<{ id: string; cpuUsageNs: number; memoryUsedBytes: number; memoryLimitBytes: number; vcpus: number; maxVcpus: number; hostMemoryBytes: number }> {
    const sandbox = this.liveSandbox(id);
    const st = sandbox.status();
    const m = await sandbox.metrics();
    const guest = m.guest && m.guest.memTotalKiB > 0 ? Math.max(0, m.guest.memTotalKiB - m.guest.memAvailableKiB) * 1024 : null;
    return {
      id, cpuUsageNs: m.cpuUsageUsec * 1000, memoryUsedBytes: guest ?? m.memoryBytes, memoryLimitBytes: st.memoryMiB * 1048576,
      vcpus: st.vcpus, maxVcpus: st.maxVcpus, hostMemoryBytes: m.memoryBytes,
    };
  }

  /** Resolves with the job once it is in a final state. */
  waitFinal(id: string): Promise<JobRecord> {
    const job = this.o.store.get(id);
    if (FINAL_STATES.has(job.state)) return Promise.resolve(job);
    return new Promise((resolve) => {
      const on = (ev: JobEvent): void => {
        if (ev.jobId === id && FINAL_STATES.has(ev.state)) {
          this.off('job', on);
          resolve(this.o.store.get(id));
        }
      };
      this.on('job', on);
    });
  }

  /** Starts no more jobs; resolves when none runs (a drain). */
  async drain(): Promise<void> {
    this.held = true;
    while (this.running.size) await new Promise((r) => this.once('idle-check', r));
  }

  /**
   * Stops taking jobs. With `stopSandboxes`, also stops the running ones' sandboxes, with
   * `why` as the jobs' reason, and waits until each job's outcome is stored.
   */
  async stop(stopSandboxes: boolean, why = 'lodgerd stopped with its sandboxes'): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (!stopSandboxes) return;
    const running = [...this.running.values()];
    for (const r of running) r.cancel ??= { state: 'failed', reason: why };
    await Promise.all(running.map((r) => r.sandbox?.stop({ graceMs: 0 }).catch(() => {})));
    await Promise.all(running.map((r) => r.done));
  }
}
