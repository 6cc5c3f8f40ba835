// One QEMU process: started by us (spawn) or left by an earlier owner (watch). What its
// exit means is this object's one piece of lifecycle: the sandbox ending, a stop we asked
// for, a VMM retired on purpose (suspend to disk), or one we let go of.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { VmmExitedError } from '../errors.ts';
import { vmmName } from './args.ts';
import { LAUNCH_EXEC, LAUNCH_PRELUDE, launchEnv } from '../host.ts';
import { jailedLaunch } from './jail.ts';
import { tail } from './wait.ts';

export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** We asked for it (stop()). */
  expected: boolean;
}

/** run: an exit is the sandbox's end; stop: the end we asked for; retire/release: not the sandbox's end. */
type Intent = 'run' | 'stop' | 'retire' | 'release';

export interface VmmIdentity {
  proc: string;
  id: string;
  /** QEMU's QMP socket: tells apart sandboxes of the same id in different run directories. */
  qmpSocket: string;
  vmmLog: string;
}

export interface SpawnOptions extends VmmIdentity {
  qemuBinary: string;
  args: string[];
  /** cgroup.procs files the process joins before QEMU's first instruction. */
  cgroupProcs: string[];
  /** The host's /sys: the VMM may run on every online CPU (its cgroup's cpuset narrows that). */
  sys: string;
  detached: boolean;
  /** Run QEMU in its jail (jail.ts); null: as this process's user, in its namespaces. */
  jail: Parameters<typeof jailedLaunch>[2] | null;
}

/** `pid` is alive (not a zombie) and is the QEMU of sandbox `id`: its -name says so. A pid alone may have been reused. */
export function isSandboxVmm(proc: string, pid: number, id: string, qmpSocket?: string): boolean {
  try {
    const stat = readFileSync(join(proc, String(pid), 'stat'), 'utf8');
    if (/^\d+ \(.*\) Z/.test(stat)) return false;
    const argv = readFileSync(join(proc, String(pid), 'cmdline'), 'utf8').split('\0');
    return argv.includes(vmmName(id)) && (!qmpSocket || argv.some((a) => a.includes(`path=${qmpSocket},`)));
  } catch {
    return false;
  }
}

/** The VMM of a sandbox whose record has no pid (it was still starting), found by its identity. */
export function findSandboxVmm(proc: string, id: string, qmpSocket: string): number | null {
  for (const name of readdirSync(proc)) {
    if (/^\d+$/.test(name) && isSandboxVmm(proc, Number(name), id, qmpSocket)) return Number(name);
  }
  return null;
}

/** SIGKILL to the VMM of sandbox `id` (its identity checked first), then up to 5 s for it to go. */
export async function killVmm(proc: string, pid: number, id: string, qmpSocket: string): Promise<void> {
  if (!isSandboxVmm(proc, pid, id, qmpSocket)) return;
  try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  for (let i = 0; i < 500 && isSandboxVmm(proc, pid, id, qmpSocket); i++) await new Promise((r) => setTimeout(r, 10));
}

/**
 * Sandbox ids of the VMMs running from this run directory, found by their command line
 * alone: they are found even when their run files were removed (a state directory deleted
 * under a stopped lodgerd).
 */
export function vmmsUnder(proc: string, socketOf: (id: string) => string): string[] {
  const ids: string[] = [];
  for (const name of readdirSync(proc)) {
    if (!/^\d+$/.test(name)) continue;
    let argv: string[];
    try { argv = readFileSync(join(proc, name, 'cmdline'), 'utf8').split('\0'); } catch { continue; }
    const id = argv.find((a) => a.startsWith('lodger-') && a.endsWith(',debug-threads=on'))?.slice(7, -17);
    if (id && argv.some((a) => a.includes(`path=${socketOf(id)},`)) && isSandboxVmm(proc, Number(name), id)) ids.push(id);
  }
  return ids;
}

export class VmmProcess {
  private intent: Intent = 'run';
  private stderrTail = '';
  /** Resolves when the process is gone, for whatever reason. */
  readonly gone: Promise<ProcessExit>;
  private resolveGone!: (e: ProcessExit) => void;

  private constructor(readonly pid: number | null, private readonly child: ChildProcess | null, private readonly who: VmmIdentity) {
    this.gone = new Promise((r) => { this.resolveGone = r; });
  }

  /**
   * Starts QEMU through a shell that joins the cgroup, then becomes QEMU: every thread QEMU
   * ever makes is born inside the cgroup, none is left in the daemon's. It also drops the
   * CPU affinity inherited from us (LAUNCH_EXEC).
   * `onExit` hears an exit that is the sandbox's end (not a retired or released VMM).
   */
  static spawn(o: SpawnOptions, onExit: (e: ProcessExit) => void): VmmProcess {
    const script = LAUNCH_PRELUDE + LAUNCH_EXEC;
    const errFd = openSync(o.vmmLog, 'a');
    const launch = o.jail ? jailedLaunch(o.qemuBinary, o.args, o.jail) : { argv: ['-c', script, 'lodger-vmm', o.qemuBinary, ...o.args], env: {} };
    const child = spawn('/bin/sh', launch.argv, {
      env: { ...(o.jail ? {} : process.env), ...launch.env, ...launchEnv(o.cgroupProcs, o.sys) },
      stdio: ['ignore', 'ignore', errFd],
      detached: o.detached,
    });
    closeSync(errFd);
    const vmm = new VmmProcess(child.pid ?? null, child, o);
    child.once('exit', (code, signal) => vmm.exited(code, signal, onExit));
    child.on('error', (e) => {
      vmm.stderrTail += `\nspawn failed: ${e.message}`;
      vmm.exited(127, null, onExit);
    });
    return vmm;
  }

  /** Takes up a VMM that is not our child: its exit is seen by polling /proc. */
  static watch(o: VmmIdentity, pid: number, onExit: (e: ProcessExit) => void): VmmProcess {
    const vmm = new VmmProcess(pid, null, o);
    const timer = setInterval(() => {
      if (vmm.intent === 'release') return void clearInterval(timer);
      if (vmm.alive()) return;
      clearInterval(timer);
      vmm.exited(null, null, onExit);
    }, 100);
    return vmm;
  }

  private exited(code: number | null, signal: NodeJS.Signals | null, onExit: (e: ProcessExit) => void): void {
    const e = { code, signal, expected: this.intent === 'stop' };
    this.resolveGone(e);
    if (this.intent === 'run' || this.intent === 'stop') onExit(e);
  }

  /** Still running and still ours: a pid that has exited may belong to another process by now. */
  alive(): boolean {
    if (this.child) return this.child.exitCode === null && this.child.signalCode === null;
    return this.pid !== null && isSandboxVmm(this.who.proc, this.pid, this.who.id, this.who.qmpSocket);
  }

  /** The coming exit is one we ask for: 'stop' ends the sandbox as expected, 'retire' does not end it; 'run': any exit ends it again. */
  expect(intent: 'stop' | 'retire' | 'run'): void {
    if (this.intent !== 'release') this.intent = intent;
  }

  kill(): void {
    if (!this.pid || !this.alive()) return;
    try { process.kill(this.pid, 'SIGKILL'); } catch { /* gone */ }
  }

  /** Lets the process run on for another owner; its exit is no longer ours to hear. */
  release(): void {
    this.intent = 'release';
    this.child?.unref();
  }

  /** The exit as a typed error, with QEMU's last words. */
  exitError(exit: { code: number | null; signal: string | null }): VmmExitedError {
    let log = '';
    try { log = readFileSync(this.who.vmmLog, 'utf8').slice(-8192); } catch { /* removed with the run directory */ }
    // -no-reboot and panic=-1: a guest that reboots, powers off or panics ends QEMU with 0.
    const why = exit.code === 125 ? 'could not join its cgroup'
      : exit.code === 124 ? `could not set up its jail: ${tail(log, 3)}`
        // ... unless QEMU itself was told to quit (a signal, QMP quit), which it logs.
        : exit.code === 0 && this.intent === 'run' && !/terminating on signal|quit/i.test(log + this.stderrTail)
          ? ['the guest shut down, rebooted or panicked', tail(log + this.stderrTail, 5)].filter(Boolean).join(': ')
          : tail(log + this.stderrTail, 5);
    return new VmmExitedError(this.who.id, exit.code, exit.signal, why);
  }
}
