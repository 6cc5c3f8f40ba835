// The shim's one task (one `ctr run`, one container) as a Lodger job. Create checks the
// bundle, mounts its rootfs and opens the FIFOs; Start submits the job to lodgerd; its
// output is copied from StreamLogs to the FIFOs; Wait answers when lodgerd says the job
// ended; Kill signals it; Delete unmounts and forgets. Every lodgerd call has a deadline.
import { existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Code, TtrpcError } from '../../lib/index.ts';
import type { ApiClient, ApiJob as CliApiJob } from '../cli/index.ts';
import { BundleError, jobIdFor, mountAll, readBundleJob, unmountAll, type BundleJob, type Mount } from './bundle.ts';
import type { TaskEvent } from './events.ts';
import type { Log } from './log.ts';
import { timestamp } from './proto.ts';
import { ExecProcess, MAX_EXECS, type ExecCreate } from './exec.ts';
import { Stdio } from './fifo.ts';
import type { SandboxUse } from './stats.ts';

type Status = 'CREATED' | 'RUNNING' | 'STOPPED';

type ApiJob = Pick<CliApiJob, 'id' | 'state' | 'exitCode' | 'hasExitCode' | 'error'>;

const FINAL = new Set(['succeeded', 'failed', 'cancelled']);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface TaskDeps {
  api: ApiClient;
  /** What lodgerd is reached on, for error messages. */
  socket: string;
  namespace: string;
  log: Log;
  publish: (e: TaskEvent) => Promise<void>;
}

export interface CreateRequest {
  id: string;
  bundle: string;
  rootfs: Mount[];
  terminal: boolean;
  stdin: string;
  stdout: string;
  stderr: string;
  checkpoint: string;
}

export class Task {
  status: Status = 'CREATED';
  jobId: string | null = null;
  exitStatus = 0;
  exitedAtMs = 0;
  deleted = false;
  readonly pid = process.pid; // the task's process here is the shim: its command runs in a VM
  private readonly job: BundleJob;
  private readonly rootfsDir: string;
  private mounted = false;
  private readonly stdio: Stdio;
  private lastSignal = 0;
  private exitedResolve!: () => void;
  readonly exited = new Promise<void>((r) => { this.exitedResolve = r; });
  private readonly execs = new Map<string, ExecProcess>();

  private constructor(readonly req: CreateRequest, private readonly d: TaskDeps) {
    this.stdio = new Stdio(d.log);
    this.job = readBundleJob(req.bundle, req.id);
    this.rootfsDir = this.job.spec.rootfs;
  }

  static async create(req: CreateRequest, d: TaskDeps): Promise<Task> {
    if (req.terminal) throw new TtrpcError(Code.INVALID_ARGUMENT, 'a terminal (ctr run -t, tty: true) is not supported by the Lodger shim');
    if (req.checkpoint) throw new TtrpcError(Code.UNIMPLEMENTED, 'restoring a checkpoint is not supported by the Lodger shim');
    let t: Task;
    try {
      t = new Task(req, d);
    } catch (e) {
      if (e instanceof BundleError) throw new TtrpcError(Code.INVALID_ARGUMENT, e.message);
      throw e;
    }
    for (const i of t.job.ignored) d.log(`config.json: ignored ${i}`);
    try {
      // lodgerd first: nothing is mounted for a task that cannot run.
      await d.api.call('GetStatus', {}, 10_000).catch((e: Error) => { throw new TtrpcError(Code.UNAVAILABLE, `lodgerd on ${d.socket}: ${e.message}`); });
      if (req.rootfs.length) {
        mountAll(req.rootfs, t.rootfsDir);
        t.mounted = true;
      }
      if (!existsSync(t.rootfsDir) || readdirSync(t.rootfsDir).length === 0) throw new TtrpcError(Code.FAILED_PRECONDITION, `the rootfs ${t.rootfsDir} is empty: no image was mounted there`);
      t.stdio.open(req);
    } catch (e) {
      await t.release();
      if (e instanceof BundleError) throw new TtrpcError(Code.FAILED_PRECONDITION, e.message);
      throw e;
    }
    void d.publish({ topic: '/tasks/create', containerId: req.id, bundle: req.bundle, pid: t.pid, stdin: req.stdin, stdout: req.stdout, stderr: req.stderr });
    return t;
  }

  async start(): Promise<void> {
    if (this.status !== 'CREATED') throw new TtrpcError(Code.FAILED_PRECONDITION, `task ${this.req.id} is ${this.status.toLowerCase()}, not created`);
    if (this.job.podSandbox) {
      // The pause process would do nothing: the shim holds the task until it is killed.
      this.status = 'RUNNING';
      this.d.log('pod sandbox container: held by the shim, no job (the pod\'s containers are the jobs)');
      void this.d.publish({ topic: '/tasks/start', containerId: this.req.id, pid: this.pid });
      return;
    }
    const id = jobIdFor(this.d.namespace, this.req.id);
    try {
      await this.d.api.call('SubmitJob', { id, spec: this.job.spec }, 30_000);
    } catch (e) {
      const code = (e as { grpcCode?: number }).grpcCode;
      // lodgerd's own status (INVALID_ARGUMENT for a spec it refuses) is passed on.
      throw new TtrpcError(code && code !== 14 ? code : Code.UNAVAILABLE, `lodgerd refused the job: ${(e as Error).message}`);
    }
    if ((this.status as Status) !== 'CREATED') {
      // Killed while lodgerd took the job: the task has ended, so must the job.
      await this.d.api.call('CancelJob', { id, reason: `containerd killed the task while it started` }, 10_000).catch((e: Error) => this.d.log(`job ${id}: not cancelled: ${e.message}`));
      throw new TtrpcError(Code.FAILED_PRECONDITION, `task ${this.req.id} was killed while it started`);
    }
    this.jobId = id;
    writeFileSync(join(this.req.bundle, 'lodger-job'), id); // for `delete` after a crash of this shim
    this.status = 'RUNNING';
    this.d.log(`job ${id} submitted`);
    void this.d.publish({ topic: '/tasks/start', containerId: this.req.id, pid: this.pid });
    void this.follow(id);
  }

  /** Copies the job's output to the FIFOs, then waits for its end and records it. */
  private async follow(id: string): Promise<void> {
    await new Promise<void>((resolve) => {
      const s = this.d.api.stream('StreamLogs', { id, follow: true });
      s.on('data', (c: { stream?: string; data?: Buffer }) => this.stdio.write(c.stream, c.data ?? Buffer.alloc(0)));
      s.on('end', () => resolve());
      s.on('error', (e: Error) => {
        this.d.log(`job ${id}: log stream ended: ${e.message}; output after this is not copied`);
        resolve();
      });
    });
    const job = await this.waitJob(id);
    if (!job) return; // deleted meanwhile
    this.exitStatus = job.hasExitCode ? job.exitCode : this.lastSignal ? 128 + this.lastSignal : 255;
    if (!job.hasExitCode) this.stdio.write('stderr', Buffer.from(`lodger: job ${id} ${job.state} without an exit status: ${job.error || 'no reason given'}\n`));
    this.d.log(`job ${id}: ${job.state}, exit status ${this.exitStatus}${job.error ? ` (${job.error.split('\n')[0]})` : ''}`);
    await this.stdio.end();
    this.exit(this.exitStatus);
  }

  /** lodgerd's final word on the job: WaitJob in bounded rounds, retried while lodgerd is away. */
  private async waitJob(id: string): Promise<ApiJob | null> {
    for (let round = 1; !this.deleted; round++) {
      try {
        const job = await this.d.api.call<ApiJob>('WaitJob', { id }, 60_000);
        if (FINAL.has(job.state)) return job;
      } catch (e) {
        const code = (e as { grpcCode?: number }).grpcCode;
        if (code === 5) return { id, state: 'failed', exitCode: 0, hasExitCode: false, error: `lodgerd no longer knows job ${id}` };
        this.d.log(`job ${id}: WaitJob round ${round}: ${(e as Error).message}${code === 4 ? ' (still running)' : '; retrying in 1 s'}`);
        if (code !== 4) await sleep(1000);
      }
    }
    return null;
  }

  private exit(status: number): void {
    if (this.status === 'STOPPED') return;
    this.status = 'STOPPED';
    this.exitStatus = status;
    this.exitedAtMs = Date.now();
    this.exitedResolve();
    void this.d.publish({ topic: '/tasks/exit', containerId: this.req.id, pid: this.pid, exitStatus: status, exitedAtMs: this.exitedAtMs });
  }

  async kill(signal: number): Promise<void> {
    if (this.status === 'STOPPED') throw new TtrpcError(Code.NOT_FOUND, `task ${this.req.id}: process already finished`);
    this.lastSignal = signal;
    if (this.status === 'CREATED' || this.job.podSandbox) {
      // Nothing runs in lodgerd (never started, or a pod sandbox): the task ends as a killed process would.
      await this.stdio.end();
      return this.exit(128 + signal);
    }
    const id = this.jobId!;
    try {
      await this.d.api.call('SignalJob', { id, signal }, 10_000);
      this.d.log(`job ${id}: signal ${signal} sent`);
    } catch (e) {
      // No command runs yet (the sandbox is still starting): the job is cancelled instead.
      if ((e as { grpcCode?: number }).grpcCode !== 9) throw new TtrpcError(Code.UNAVAILABLE, `signal ${signal} to job ${id}: ${(e as Error).message}`);
      await this.d.api.call('CancelJob', { id, reason: `containerd sent signal ${signal} before the command ran` }, 10_000);
      this.d.log(`job ${id}: cancelled (signal ${signal} before its command ran)`);
    }
  }

  async delete(): Promise<{ pid: number; exitStatus: number; exitedAt: { seconds: number; nanos: number } }> {
    if (this.status === 'RUNNING') throw new TtrpcError(Code.FAILED_PRECONDITION, `task ${this.req.id} is running: kill it first`);
    if (this.status === 'CREATED') this.exit(0);
    this.deleted = true;
    rmSync(join(this.req.bundle, 'lodger-job'), { force: true }); // nothing left for `delete` to cancel
    const problem = await this.release();
    if (problem) throw new TtrpcError(Code.INTERNAL, problem);
    void this.d.publish({ topic: '/tasks/delete', containerId: this.req.id, pid: this.pid, exitStatus: this.exitStatus, exitedAtMs: this.exitedAtMs });
    return { pid: this.pid, exitStatus: this.exitStatus, exitedAt: timestamp(this.exitedAtMs) };
  }

  /** containerd's Exec: a process to run in the job's sandbox once started. */
  addExec(req: ExecCreate): void {
    if (this.status === 'STOPPED') throw new TtrpcError(Code.FAILED_PRECONDITION, `task ${this.req.id} has exited: no exec runs in it`);
    if (this.execs.has(req.execId)) throw new TtrpcError(Code.ALREADY_EXISTS, `exec ${req.execId} exists in task ${this.req.id}`);
    if (this.execs.size >= MAX_EXECS) throw new TtrpcError(Code.RESOURCE_EXHAUSTED, `task ${this.req.id} holds ${MAX_EXECS} execs: delete some first`);
    if (this.job.podSandbox) throw new TtrpcError(Code.FAILED_PRECONDITION, 'the pod sandbox container runs no command to exec beside');
    this.execs.set(req.execId, new ExecProcess(req, { api: this.d.api, log: this.d.log, publish: this.d.publish, pid: this.pid }));
    void this.d.publish({ topic: '/tasks/exec-added', containerId: this.req.id, execId: req.execId });
  }

  exec(execId: string): ExecProcess {
    const e = this.execs.get(execId);
    if (!e) throw new TtrpcError(Code.NOT_FOUND, `exec ${execId} not found in task ${this.req.id}`);
    return e;
  }

  startExec(execId: string): void {
    this.exec(execId).start(this.status === 'RUNNING' ? this.jobId : null);
  }

  async deleteExec(execId: string): Promise<{ pid: number; exitStatus: number; exitedAt: { seconds: number; nanos: number } }> {
    const e = this.exec(execId);
    if (e.status === 'RUNNING') throw new TtrpcError(Code.FAILED_PRECONDITION, `exec ${execId} is running: kill it first`);
    await e.release();
    this.execs.delete(execId);
    return { pid: this.pid, exitStatus: e.exitStatus, exitedAt: timestamp(e.exitedAtMs) };
  }

  /** containerd's Stats: the sandbox's use from lodgerd; a task with no job running (a pod's pause, not started) uses nothing. */
  async stats(): Promise<SandboxUse | null> {
    if (this.status === 'STOPPED') throw new TtrpcError(Code.NOT_FOUND, `task ${this.req.id} has exited: no stats`);
    if (!this.jobId) return null;
    try {
      return await this.d.api.call<SandboxUse>('GetJobStats', { id: this.jobId }, 10_000);
    } catch (e) {
      const code = (e as { grpcCode?: number }).grpcCode;
      // Between lodgerd's start of the job and its sandbox running there is nothing to measure yet.
      if (code === 9) return null;
      throw new TtrpcError(Code.UNAVAILABLE, `stats of job ${this.jobId}: ${(e as Error).message}`);
    }
  }

  closeStdin(): void {
    this.stdio.closeStdin();
  }

  /** Closes the FIFOs and unmounts the rootfs; returns what could not be undone. */
  async release(): Promise<string | null> {
    for (const e of this.execs.values()) await e.release();
    await this.stdio.close();
    if (!this.mounted) return null;
    const problem = unmountAll(this.rootfsDir);
    if (problem) this.d.log(problem);
    else this.mounted = false;
    return problem;
  }

  state(): Record<string, unknown> {
    return {
      id: this.req.id, bundle: this.req.bundle, pid: this.pid, status: this.status, stdin: this.req.stdin, stdout: this.req.stdout, stderr: this.req.stderr,
      terminal: false, exitStatus: this.exitStatus, exitedAt: timestamp(this.exitedAtMs), execId: '',
    };
  }
}
