// Every host path the runtime touches, injected so logic runs against a temp dir in
// unit tests and against the real kernel in integration tests.
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

export interface HostPaths {
  /** Root of the cgroup filesystem (v2 mount, or the tmpfs holding v1 hierarchies). */
  cgroupRoot: string;
  proc: string;
  sys: string;
  dev: string;
  /** Where kernels live when none is configured. */
  boot: string;
  /** Kernel modules root (`/lib/modules`). */
  modules: string;
  qemuBinary: string;
  /** Per-sandbox runtime files: sockets, disks, logs. */
  runDir: string;
  /** Built guest images, keyed by the hash of their inputs. */
  cacheDir: string;
}

export function defaultHostPaths(overrides: Partial<HostPaths> = {}): HostPaths {
  const cache = process.env.LODGER_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'lodger');
  return {
    cgroupRoot: '/sys/fs/cgroup',
    proc: '/proc',
    sys: '/sys',
    dev: '/dev',
    boot: '/boot',
    modules: '/lib/modules',
    qemuBinary: process.env.LODGER_QEMU ?? 'qemu-system-x86_64',
    runDir: process.env.LODGER_RUN_DIR ?? join(process.getuid?.() === 0 ? '/run/lodger' : join(cache, 'run')),
    cacheDir: cache,
    // An override left undefined keeps the default.
    ...Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined)),
  };
}

/**
 * A batch sandbox's OOM score (its VMM or runsc sandbox, and what they fork): under memory
 * pressure the kernel's OOM killer takes a batch sandbox (its state is on disk after a
 * suspend, or its job is retried) before the online service, which keeps the default 0.
 * The most there is: the score is the adjustment plus the task's share of memory in
 * thousandths, so 500 lost to a service holding most of it (bench:memory 21:35, redis at
 * 1.8 of 2.5 GiB was killed before a 430 MiB VMM). Raising one's own score needs no privilege.
 */
export const VMM_OOM_SCORE_ADJ = 1000;

/**
 * How every sandbox process (QEMU, jailed or not; runsc) begins: a shell that takes the
 * batch OOM score and joins the sandbox's cgroups (exit 125 if it cannot) before it execs,
 * so the process and all it forks are born in place. Its inputs: launchEnv().
 */
export const LAUNCH_PRELUDE = '[ -n "$LODGER_OOM_SCORE_ADJ" ] && echo "$LODGER_OOM_SCORE_ADJ" > /proc/$$/oom_score_adj; '
  + 'for f in $LODGER_CGROUP_PROCS; do echo $$ > "$f" || exit 125; done; ';
/**
 * How the launcher ends: exec "$@" with the CPU affinity inherited from lodgerd dropped
 * (every online CPU, `LODGER_CPUS`): where a sandbox runs is its cgroup's cpuset alone. A
 * lodgerd pinned to housekeeping CPUs (taskset, systemd's CPUAffinity=) would otherwise pin
 * its sandboxes there too: since Linux 6.2 an affinity asked for is kept through cpuset
 * changes and inherited, so widening the batch cpuset would not widen them.
 */
export const LAUNCH_EXEC = 'if [ -n "$LODGER_CPUS" ] && command -v taskset >/dev/null; then exec taskset -c "$LODGER_CPUS" "$@"; fi; exec "$@"';
/** The launcher's inputs; `sys` (the host's /sys) given for a sandbox's own processes, whose affinity LAUNCH_EXEC drops. */
export function launchEnv(cgroupProcs: readonly string[], sys?: string): Record<string, string> {
  let cpus = '';
  if (sys) try { cpus = readFileSync(join(sys, 'devices/system/cpu/online'), 'utf8').trim(); } catch { /* keep the inherited affinity */ }
  return { LODGER_CGROUP_PROCS: cgroupProcs.join(' '), LODGER_OOM_SCORE_ADJ: String(VMM_OOM_SCORE_ADJ), LODGER_CPUS: cpus };
}
