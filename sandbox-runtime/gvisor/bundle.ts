// The OCI bundle Lodger writes for a gVisor sandbox, and the in-sandbox runner. Pure
// (paths in, text out) so the bundle's shape is unit-tested without runsc.
import { join } from 'node:path';

export interface GvisorPaths {
  dir: string;
  /** The OCI bundle (config.json). */
  bundle: string;
  /** runsc's --root: its own state for this one sandbox. */
  runscRoot: string;
  /** Read-only inside (/.lodger/cmd): the spooler, busybox, each command's script. */
  cmd: string;
  /** Writable inside (/.lodger/io): each command's stdout, stderr, pid and exit status. */
  io: string;
  /** Bound to /output; copied to the job's output directory by collectOutput(). */
  output: string;
  /** runsc checkpoint image (suspend to disk). */
  checkpoint: string;
  record: string;
  /** stderr of the runsc commands: the sandbox's own last words. */
  log: string;
  /** Jailed only (jail.ts): the root as its uid sees it, the idmapped binds of its layers under it (0, 1, ...), and the mount points' layer. */
  rootfs: string;
  idroot: string;
  skel: string;
}

export function gvisorPaths(runDir: string, id: string): GvisorPaths {
  const dir = join(runDir, id);
  return {
    dir, bundle: join(dir, 'bundle'), runscRoot: join(dir, 'runsc'), cmd: join(dir, 'cmd'), io: join(dir, 'io'),
    output: join(dir, 'output'), checkpoint: join(dir, 'checkpoint'), record: join(dir, 'sandbox.json'), log: join(dir, 'runsc.log'),
    rootfs: join(dir, 'rootfs'), idroot: join(dir, 'idroot'), skel: join(dir, 'skel'),
  };
}

/** Where the sandbox sees Lodger's two directories; a dot name keeps them out of `ls /`. */
export const IN_CMD = '/.lodger/cmd';
export const IN_IO = '/.lodger/io';
export const IN_SH = `${IN_CMD}/busybox`;
/** The spooler's script in the command directory, and where PID 1 finds it. */
export const SPOOLER_FILE = 'spool.sh';
export const IN_SPOOLER = `${IN_CMD}/${SPOOLER_FILE}`;

export interface BundleInput {
  rootfs: string;
  paths: GvisorPaths;
  hostname: string;
  /** The host uid/gid container root is mapped to (a user namespace of one id), when jailed. */
  jail?: { uid: number; gid: number } | null;
}

/** config.json: the root read-only, /output writable, no network (runsc --network=none), init is the spooler. */
export function ociConfig(b: BundleInput): object {
  const bind = (destination: string, source: string, rw: boolean): object => ({ destination, type: 'bind', source, options: ['rbind', rw ? 'rw' : 'ro'] });
  return {
    ociVersion: '1.0.2',
    process: {
      // PID 1 is the spooler (spoolerScript): every command is its child, none comes through `runsc exec`.
      args: [IN_SH, 'sh', IN_SPOOLER],
      cwd: '/',
      // The QEMU guest agent's defaults (agent.c), so that the same command line works on both.
      env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'HOME=/root', 'LODGER_OUTPUT=/output'],
      user: { uid: 0, gid: 0 },
      noNewPrivileges: true,
    },
    root: { path: b.rootfs, readonly: true },
    hostname: b.hostname,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      // gVisor's own sysfs and cgroupfs (nothing of the host's): the spooler writes the
      // memory size into it, so a job sees its limit where a container looks (spoolerScript).
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['ro', 'nosuid', 'nodev', 'noexec'] },
      { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup' },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'mode=755'] },
      { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev'] },
      bind('/output', b.paths.output, true),
      bind(IN_CMD, b.paths.cmd, false),
      bind(IN_IO, b.paths.io, true),
    ],
    linux: b.jail ? {
      namespaces: ['pid', 'ipc', 'uts', 'mount', 'network', 'user'].map((type) => ({ type })),
      uidMappings: [{ containerID: 0, hostID: b.jail.uid, size: 1 }],
      gidMappings: [{ containerID: 0, hostID: b.jail.gid, size: 1 }],
    } : { namespaces: ['pid', 'ipc', 'uts', 'mount', 'network'].map((type) => ({ type })) },
  };
}

/**
 * Nap between two looks at the command directory. Measured on an idle sandbox (systrap,
 * 10 s): 3.8% of a CPU napping 100 s, 4.4% at 50 ms, 5.1-6.1% at 30 ms; first output
 * 49 ms (median) after exec at 30 ms. 50 ms: half the cost of 30, first output well under 300 ms.
 */
export const SPOOL_POLL_S = 0.05;
/**
 * For the first second after the boot and after each command the spooler naps 10 ms:
 * a job's command comes right after the start, and commands come in bursts; a second
 * of faster looks costs little, and an idle sandbox is back to SPOOL_POLL_S.
 */
export const SPOOL_FAST_POLL_S = 0.01;
export const SPOOL_FAST_NAPS = 100;
/** The host's word on the sandbox's size (read-only inside), and the spooler's answer. */
export const SIZE_FILE = 'size';
export const SIZE_ACK_FILE = 'size.ack';
export const SIZE_LOOK_NAPS = 100;

/**
 * PID 1 of every gVisor sandbox: runs command N once its script N.sh appears in the
 * command directory (the host writes 1, 2, 3... in order, each renamed into place whole),
 * as its own child: its output into io/N.out and io/N.err, its pid into io/N.pid, then
 * its exit status into io/N.exit (written last, renamed into place, so the host reads a
 * whole one; a shell reports death by signal S as 128+S). Output lives in files, so a new
 * lodgerd picks up where the old one stopped.
 *
 * Why not `runsc exec`: a checkpoint taken while an exec session lives does not restore
 * (gVisor #11439: "no host FD available for :host:0"), and where that is fixed runsc
 * kills every process exec started after a restore (#11544). The spooler and its children
 * are the container's own processes, holding no host FD (its stdio is /dev/null), so they
 * go through a checkpoint and keep running after a restore, counter included.
 *
 * The size: gVisor fixes its CPU count and MemTotal at boot, so the host writes
 * "TOKEN CPUS BYTES" into cmd/size on each resize and the spooler makes the sandbox show
 * it: every process's CPU affinity (what nproc and sched_getaffinity report; new
 * commands inherit PID 1's) and the memory cgroup's limit. The host's cgroup is what
 * enforces both; this is the job's view of it, acknowledged with TOKEN in io/size.ack.
 * The spooler reads the file at boot, on SIGUSR1 (the host's "look now") and every
 * SIZE_LOOK_NAPS naps (a signal lost to a pause): reading it on every nap, through the
 * gofer, doubled an idle sandbox's CPU (4.4% to 8.5%).
 *
 * Idle, it naps in a builtin (`read -t` on a FIFO no one else can open: it is unlinked at
 * once), so a poll forks nothing, and reads the size file with the builtin `read`; `jobs`
 * reaps finished runners and orphans. Only the host writes the command directory
 * (read-only inside); nothing here reads io/.
 *
 * Forks are dear in gVisor (about 10 ms each, 20 with an exec, measured under systrap),
 * so applets are called by name (Debian's static busybox runs its own applets whatever
 * the root holds: FEATURE_SH_STANDALONE, which setup checks) and a command's script is
 * sourced in the runner's subshell, not run by a new shell, before it execs the job.
 */
export function spoolerScript(d: { cmd: string; io: string; sh: string; pollS?: number } = { cmd: IN_CMD, io: IN_IO, sh: IN_SH }): string {
  const poll = d.pollS ?? SPOOL_POLL_S;
  const fast = Math.min(poll, SPOOL_FAST_POLL_S);
  return `R=1
# First of all: gVisor does not shield PID 1 from a signal it has no handler for, and an untrapped USR1 ends it.
trap 'R=1' USR1
B=${shQuote(d.sh)}; C=${shQuote(d.cmd)}; I=${shQuote(d.io)}
exec </dev/null >/dev/null 2>&1
run() {
  exec 3<&-
  ( . "$C/$1.sh" ) > "$I/$1.out" 2> "$I/$1.err" < /dev/null &
  p=$!
  echo $p > "$I/$1.pid"
  wait $p
  echo $? > "$I/$1.exit.tmp"
  exec "$B" mv -f "$I/$1.exit.tmp" "$I/$1.exit"
}
S=
G=
size() {
  read g c m < "$C/${SIZE_FILE}" || return
  [ "$g" = "$G" ] && return
  G=$g
  case "$c$m" in *[!0-9]*|'') return;; esac
  # A mask past the sandbox's CPUs is cut to them by gVisor, as by Linux.
  [ "$c" -lt 1 ] && c=1
  if [ "$c" != "$S" ]; then
    for p in /proc/[0-9]*; do taskset -a -p -c 0-$((c-1)) "\${p#/proc/}"; done
    S=$c
  fi
  [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ] && echo "$m" > /sys/fs/cgroup/memory/memory.limit_in_bytes
  # One write by a builtin: the host compares the whole text, so a half-written one is only "not yet".
  echo "$g" > "$I/${SIZE_ACK_FILE}"
}
# /tmp is the sandbox's own, new at boot.
W=/tmp/.lodger-spool.$$
if mkfifo -m 600 $W && [ -p $W ]; then
  exec 3<>$W
  rm -f $W
  nap() { read -t $1 x <&3; }
else
  nap() { usleep $(($2)); }
fi
n=1
f=${SPOOL_FAST_NAPS}
k=0
while :; do
  if [ $R = 1 ] || [ $k -ge ${SIZE_LOOK_NAPS} ]; then R=0; k=0; size; fi
  k=$((k+1))
  if [ -f "$C/$n.sh" ]; then
    run $n &
    n=$((n+1))
    f=${SPOOL_FAST_NAPS}
    continue
  fi
  jobs
  if [ $f -gt 0 ]; then f=$((f-1)); nap ${fast} ${Math.round(fast * 1e6)}; else nap ${poll} ${Math.round(poll * 1e6)}; fi
done
`;
}

/** Single-quoted for sh: nothing inside is expanded. */
export function shQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The script of one command: cwd, environment, then exec of the argv as given (no shell parsing). */
export function commandScript(req: { argv: string[]; env?: Record<string, string>; cwd?: string }): string {
  const lines = [`cd ${shQuote(req.cwd ?? '/')} || exit 127`];
  for (const [k, v] of Object.entries(req.env ?? {})) {
    if (!ENV_NAME.test(k)) throw new Error(`environment variable name ${JSON.stringify(k)} is not valid`);
    lines.push(`export ${k}=${shQuote(v)}`);
  }
  lines.push(`exec ${req.argv.map(shQuote).join(' ')}`);
  return `${lines.join('\n')}\n`;
}

/** Exit file text -> status; null when it is not a whole, valid one (a sandbox writes it). */
export function parseExit(text: string): { code: number | null; signal: number | null } | null {
  const m = /^(\d{1,3})\n?$/.exec(text);
  if (!m) return null;
  const n = Number(m[1]);
  if (n > 255) return null;
  // 129-192: the shell's way of saying "killed by signal n-128" (a real exit code there is read the same way).
  return n > 128 && n <= 128 + 64 ? { code: null, signal: n - 128 } : { code: n, signal: null };
}
