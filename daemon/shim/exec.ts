// One exec of the shim's task (`ctr task exec`, CRI's ExecSync and exec probes): a
// command run by lodgerd in the job's sandbox through ExecInJob, its output copied to the
// exec's FIFOs, its exit status kept for Wait, State and Delete. Kill cancels the call,
// which ends the command (lodgerd kills it): the exit status is then 128 + the signal.
import { Code, TtrpcError } from '../../lib/index.ts';
import type { ApiClient } from '../cli/index.ts';
import { BundleError, execFromSpec } from './bundle.ts';
import type { TaskEvent } from './events.ts';
import type { Log } from './log.ts';
import { timestamp } from './proto.ts';
import { Stdio } from './fifo.ts';

export interface ExecCreate {
  id: string;
  execId: string;
  terminal: boolean;
  stdin: string;
  stdout: string;
  stderr: string;
  spec?: { typeUrl?: string; value?: Buffer } | null;
}

/** At most this many execs at once per task: a probe loop that never deletes its execs is bounded. */
export const MAX_EXECS = 64;
const EXEC_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export class ExecProcess {
  status: 'CREATED' | 'RUNNING' | 'STOPPED' = 'CREATED';
  exitStatus = 0;
  exitedAtMs = 0;
  private readonly cmd: ReturnType<typeof execFromSpec>;
  private readonly stdio: Stdio;
  private call: ReturnType<ApiClient['stream']> | null = null;
  private killedBy = 0;
  private exitedResolve!: () => void;
  readonly exited = new Promise<void>((r) => { this.exitedResolve = r; });

  constructor(readonly req: ExecCreate, private readonly d: { api: ApiClient; log: Log; publish: (e: TaskEvent) => Promise<void>; pid: number }) {
    if (!EXEC_ID.test(req.execId)) throw new TtrpcError(Code.INVALID_ARGUMENT, `exec id ${JSON.stringify(req.execId)}: 1-128 of [A-Za-z0-9_.-]`);
    if (req.terminal) throw new TtrpcError(Code.INVALID_ARGUMENT, 'a terminal (exec -t) is not supported by the Lodger shim');
    const ignored: string[] = [];
    try {
      this.cmd = execFromSpec(req.spec, ignored);
    } catch (e) {
      if (e instanceof BundleError) throw new TtrpcError(Code.INVALID_ARGUMENT, e.message);
      throw e;
    }
    for (const i of ignored) d.log(`exec ${req.execId}: ignored ${i}`);
    this.stdio = new Stdio(d.log);
    this.stdio.open(req);
  }

  /** Runs the command in the job's sandbox (jobId: lodgerd's job for the task). */
  start(jobId: string | null): void {
    if (this.status !== 'CREATED') throw new TtrpcError(Code.FAILED_PRECONDITION, `exec ${this.req.execId} is ${this.status.toLowerCase()}, not created`);
    if (!jobId) throw new TtrpcError(Code.FAILED_PRECONDITION, `task ${this.req.id} runs no job to exec in`);
    this.status = 'RUNNING';
    const call = this.d.api.stream('ExecInJob', { id: jobId, ...this.cmd });
    this.call = call;
    let code: number | null = null;
    call.on('data', (m: { stream?: string; data?: Buffer; exitCode?: number }) => {
      if (m.stream === 'exit') code = m.exitCode ?? 0;
      else this.stdio.write(m.stream, m.data ?? Buffer.alloc(0));
    });
    const done = (why: string | null): void => {
      if (why && code === null) this.stdio.write('stderr', Buffer.from(`lodger: exec ${this.req.execId}: ${why}\n`));
      void this.end(code ?? (this.killedBy ? 128 + this.killedBy : 255), why);
    };
    call.on('end', () => done(null));
    call.on('error', (e: Error & { code?: number }) => done(this.killedBy ? null : e.message));
    this.d.log(`exec ${this.req.execId}: started in job ${jobId}: ${JSON.stringify(this.cmd.command).slice(0, 200)}`);
    void this.d.publish({ topic: '/tasks/exec-started', containerId: this.req.id, execId: this.req.execId, pid: this.d.pid });
  }

  private async end(status: number, why: string | null): Promise<void> {
    if (this.status === 'STOPPED') return;
    this.call = null;
    await this.stdio.end();
    this.status = 'STOPPED';
    this.exitStatus = status;
    this.exitedAtMs = Date.now();
    this.d.log(`exec ${this.req.execId}: exit status ${status}${why ? ` (${why})` : ''}`);
    this.exitedResolve();
    void this.d.publish({ topic: '/tasks/exit', containerId: this.req.id, execId: this.req.execId, pid: this.d.pid, exitStatus: status, exitedAtMs: this.exitedAtMs });
  }

  async kill(signal: number): Promise<void> {
    if (this.status === 'STOPPED') throw new TtrpcError(Code.NOT_FOUND, `exec ${this.req.execId}: process already finished`);
    this.killedBy = signal;
    if (this.status === 'CREATED') return this.end(128 + signal, `signal ${signal} before it started`);
    this.call?.cancel();
  }

  closeStdin(): void {
    this.stdio.closeStdin();
  }

  /** Ends what is still open (the call, the FIFOs). */
  async release(): Promise<void> {
    this.call?.cancel();
    await this.stdio.close();
  }

  state(): Record<string, unknown> {
    return {
      id: this.req.id, execId: this.req.execId, pid: this.d.pid, status: this.status, stdin: this.req.stdin, stdout: this.req.stdout, stderr: this.req.stderr,
      terminal: false, exitStatus: this.exitStatus, exitedAt: timestamp(this.exitedAtMs),
    };
  }
}
