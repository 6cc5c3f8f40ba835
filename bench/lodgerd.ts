// A real lodgerd for end-to-end tests, and the real CLI against it. It remembers the VMM
// pids lodgerd logs ("... pid N)") so that `end()` can stop them by pid, then has
// `lodgerd --end-sandboxes` end what is left by id (a sandbox killed mid-boot was never
// logged; a gVisor one has a gofer and mounts): a stopped lodgerd keeps its sandboxes on
// purpose, a test must not.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { ApiClient } from '../daemon/index.ts';

const root = join(import.meta.dirname, '..');

export interface CliResult { code: number | null; stdout: string; stderr: string }

export class TestDaemon {
  proc: ChildProcess | null = null;
  /** Everything lodgerd wrote to stderr since the last start. */
  log = '';
  readonly vmmPids = new Set<number>();
  /** The flags of the latest start, for the sweep in end(). */
  private started: string[] | null = null;

  /**
   * `args`: the flags every start gets (state dir, policy dir...); `--socket` is added.
   * `cpus`: run it on these (taskset execs it, so the pid stays lodgerd's), as a control
   * plane on housekeeping CPUs would be. `cgroupProcs`: a cgroup.procs file it is started
   * in (a shell joins it and execs lodgerd: a memory budget around lodgerd and its VMMs).
   */
  constructor(readonly socket: string, readonly args: string[], readonly cpus: string | null = null, readonly cgroupProcs: string | null = null) {}

  /** Starts lodgerd and resolves once it listens; rejects with its log if it exits or takes longer than `timeoutMs`. */
  start(extra: string[] = [], timeoutMs = 30_000): Promise<void> {
    this.log = '';
    this.started = [...this.args, ...extra];
    const cmd = [...(this.cgroupProcs ? ['sh', '-c', 'echo $$ > "$0" && exec "$@"', this.cgroupProcs] : []), ...(this.cpus ? ['taskset', '-c', this.cpus] : []), process.execPath, join(root, 'bin', 'lodgerd.js'), '--socket', this.socket, ...this.args, ...extra];
    const d = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc = d;
    d.stderr!.on('data', (b) => {
      this.log += b;
      for (const m of String(b).matchAll(/pid (\d+)\)/g)) this.vmmPids.add(Number(m[1]));
    });
    return new Promise((resolve, reject) => {
      const deadline = Date.now() + timeoutMs;
      const check = (): void => {
        if (this.log.includes(`listening on ${this.socket}`)) return resolve();
        if (d.exitCode !== null || Date.now() > deadline) return reject(new Error(`lodgerd did not start:\n${this.log}`));
        setTimeout(check, 50);
      };
      check();
    });
  }

  get running(): boolean {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Sends `signal` and waits for the exit (at once if it has already exited). */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const d = this.proc;
    if (!d || !this.running) return;
    const exited = new Promise((r) => d.once('exit', r));
    d.kill(signal);
    await exited;
  }

  /** The CLI against this daemon (or another endpoint). */
  lodger(args: string[], endpoint = ['--socket', this.socket]): Promise<CliResult> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, [join(root, 'bin', 'lodger.js'), ...endpoint, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (b) => { stdout += b; });
      child.stderr.on('data', (b) => { stderr += b; });
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  }

  /**
   * For test.after.always: lodgerd and every VMM it logged, by pid; then every sandbox
   * left in its state directory, by id (refused, harmlessly, while another lodgerd holds it).
   */
  async end(): Promise<void> {
    await endLodgerd(this.proc, this.vmmPids, this.started);
  }
}

/**
 * A lodgerd that must not outlive its test or bench: SIGKILLed (awaited), every VMM it
 * logged killed by pid, then, given its flags, what is left ended by id. Resolves with the
 * sweep's log.
 */
export async function endLodgerd(proc: ChildProcess | null, vmmPids: Iterable<number>, flags: string[] | null): Promise<string> {
  if (proc?.pid !== undefined && proc.exitCode === null && proc.signalCode === null) {
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGKILL');
    await exited;
  }
  for (const pid of vmmPids) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
  }
  return flags ? (await endSandboxes(flags)).log : '';
}

/** `lodgerd --end-sandboxes` with these flags (its state directory, config): its exit code and log. */
export function endSandboxes(flags: string[]): Promise<{ code: number | null; log: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(root, 'bin', 'lodgerd.js'), ...flags, '--end-sandboxes'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    child.stderr.on('data', (b) => { log += b; });
    child.on('close', (code) => resolve({ code, log }));
  });
}

/** A job's stored stdout, all of it, through lodgerd's API (StreamLogs without follow). */
export function storedStdout(api: ApiClient, id: string): Promise<string> {
  let out = '';
  return new Promise((resolve) => {
    const s = api.stream('StreamLogs', { id, follow: false });
    s.on('data', (c: { stream?: string; data?: Buffer }) => { if (c.stream === 'stdout' && c.data) out += c.data.toString(); });
    s.on('end', () => resolve(out));
    s.on('error', () => resolve(out));
  });
}
