// The runsc command line: one sandbox per --root, the same global flags on every
// subcommand (runsc refuses `start` without the --network=none that `create` had), each
// call bounded in time and its failure a SandboxError naming the subcommand.
import { execFile, spawn } from 'node:child_process';
import { appendFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SandboxError, type SandboxErrorCode } from '../errors.ts';
import { LAUNCH_EXEC, LAUNCH_PRELUDE, launchEnv } from '../host.ts';

export type GvisorPlatform = 'systrap' | 'ptrace';

export interface Runsc {
  binary: string;
  platform: GvisorPlatform;
  root: string;
}

/** Global flags. No network (runsc's own needs iptables and refuses the root netns); cgroups are Lodger's, not runsc's. */
export function globalFlags(r: Runsc): string[] {
  return [`--root=${r.root}`, '--network=none', '--ignore-cgroups', `--platform=${r.platform}`];
}

export interface RunOptions {
  timeoutMs?: number;
  code?: SandboxErrorCode;
  /** cgroup.procs files the runsc process joins first: its sandbox and gofer are born there, placed by the cgroup alone. */
  cgroupProcs?: string[];
  /** The host's /sys, given for a boot: its processes may run on every online CPU, placed by their cgroup. */
  sys?: string;
  /** stderr also appended here (the sandbox's log, read for a VmmExitedError's detail). */
  log?: string;
  /** A boot: the sandbox and gofer runsc forks inherit SANDBOX_RLIMITS. */
  rlimits?: boolean;
}

/**
 * What a sandbox's runsc processes may hold: no core dumps (a sentry's would hold the
 * job's memory), and a bound on open files (the gofer keeps a host fd per file the job has
 * open; QEMU needs only 4096). Set by the launcher shell's builtin, no extra exec.
 */
export const SANDBOX_RLIMITS = { core: 0, nofile: 65536 } as const;

/** Runs `runsc <flags> args...`; resolves with stdout (at most 1 MiB) or throws with its stderr's tail. */
export function runsc(r: Runsc, args: string[], o: RunOptions = {}): Promise<string> {
  const argv = [...globalFlags(r), ...args];
  const procs = o.cgroupProcs ?? [];
  // The sandbox process runsc forks inherits the score (a batch sandbox goes before the service).
  // Raising the file limit fails where the inherited hard limit is lower and may not be
  // raised (no CAP_SYS_RESOURCE, as on Lodger's test machines): that lower one bounds it then.
  const limits = o.rlimits ? `ulimit -c ${SANDBOX_RLIMITS.core} && { ulimit -n ${SANDBOX_RLIMITS.nofile} 2>/dev/null || true; } && ` : '';
  // A boot (given `sys`) drops lodgerd's CPU affinity as QEMU's launch does; a short command keeps it.
  const script = `${LAUNCH_PRELUDE}${limits}${LAUNCH_EXEC}`;
  return new Promise((resolve, reject) => {
    // Pipes, never a regular file (runsc's output overwrote one from offset 0). The
    // container's processes inherit them, so the end is 'exit', not the pipes closing.
    const child = spawn('/bin/sh', ['-c', script, 'lodger-runsc', r.binary, ...argv], {
      env: { ...process.env, ...launchEnv(procs, o.sys) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout!.on('data', (c: Buffer) => { if (out.length < 1 << 20) out += c.toString(); });
    child.stderr!.on('data', (c: Buffer) => { err = (err + c.toString()).slice(-4096); });
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 30_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new SandboxError('SANDBOX_RUNSC_FAILED', `runsc ${args[0]}: ${e.message}`, { cause: e }));
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      // What was written before the exit is read by now or in the next turn.
      setImmediate(() => {
        child.stdout!.destroy();
        child.stderr!.destroy();
        if (o.log && err) { try { appendFileSync(o.log, `runsc ${args[0]}: ${err}\n`); } catch { /* run dir gone */ } }
        if (code === 0) return resolve(out);
        const how = signal === 'SIGKILL' ? `timed out after ${o.timeoutMs ?? 30_000} ms` : code === 125 ? 'could not join its cgroup' : `exit ${code ?? signal}`;
        reject(new SandboxError(o.code ?? 'SANDBOX_RUNSC_FAILED', `runsc ${args.join(' ')}: ${how}: ${err.trim().split('\n').slice(-3).join(' | ')}`));
      });
    });
  });
}

/** The sandbox process's pid from the file runsc's --pid-file wrote (digits only), validated. */
export function parsePidFile(text: string): number {
  const m = /^(\d{1,7})\n?$/.exec(text);
  if (!m || Number(m[1]) < 2) throw new SandboxError('SANDBOX_RUNSC_FAILED', `runsc --pid-file: not a pid: ${JSON.stringify(text.slice(0, 40))}`);
  return Number(m[1]);
}

/** The sandbox process's pid from `runsc state`, validated. */
export function parseState(json: string): { pid: number; status: string } {
  let v: unknown;
  try { v = JSON.parse(json); } catch (e) { throw new SandboxError('SANDBOX_RUNSC_FAILED', `runsc state: not JSON: ${json.slice(0, 200)}`, { cause: e }); }
  const o = v as { pid?: unknown; status?: unknown };
  if (!Number.isInteger(o.pid) || typeof o.status !== 'string') throw new SandboxError('SANDBOX_RUNSC_FAILED', `runsc state: no pid/status in ${json.slice(0, 200)}`);
  return { pid: o.pid as number, status: o.status };
}

/** `pid` is alive (not a zombie) and is the runsc sandbox process of this --root: a pid alone may have been reused. */
export function isSandboxProcess(proc: string, pid: number, runscRoot: string): boolean {
  try {
    const stat = readFileSync(join(proc, String(pid), 'stat'), 'utf8');
    if (/^\d+ \(.*\) Z/.test(stat)) return false;
    const argv = readFileSync(join(proc, String(pid), 'cmdline'), 'utf8').split('\0');
    return argv[0] === 'runsc-sandbox' && argv.includes(`--root=${runscRoot}`);
  } catch {
    return false;
  }
}

/** Resident set of a process in bytes (VmRSS), 0 when unreadable. */
export function rssBytes(proc: string, pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(join(proc, String(pid), 'status'), 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Whether this runsc runs a sandbox here; the reason when not. Bounded: a platform that hangs (kvm on PVM) times out. */
export async function probeRunsc(binary: string, tmp: string, platform: GvisorPlatform = 'systrap'): Promise<{ ok: boolean; detail: string }> {
  return new Promise((resolve) => {
    execFile(binary, ['--version'], { timeout: 5000 }, (e, stdout) => {
      if (e) return resolve({ ok: false, detail: `${binary} not runnable: ${(e as Error).message.split('\n')[0]}` });
      const version = /runsc version (\S+)/.exec(stdout)?.[1] ?? 'unknown';
      // Debian bookworm's 0.0~20221219 runs, but coreutils fail inside (statx): require the later one.
      const date = /(\d{8})/.exec(version)?.[1];
      if (date && date < '20240729') return resolve({ ok: false, detail: `runsc ${version} is older than 0.0~20240729 (bookworm's breaks coreutils in the sandbox; install it from bookworm-backports)` });
      execFile(binary, [`--root=${join(tmp, 'runsc-probe')}`, '--network=none', `--platform=${platform}`, 'do', '/bin/true'], { timeout: 15_000 }, (e2) => {
        if (e2) return resolve({ ok: false, detail: `runsc ${version} could not run a sandbox (${platform}): ${(e2 as Error).message.split('\n').slice(-2).join(' ')}` });
        resolve({ ok: true, detail: `runsc ${version} runs sandboxes here (${platform} platform)` });
      });
    });
  });
}
