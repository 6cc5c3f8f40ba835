// The OCI bundle Lodger writes for a gVisor sandbox, and the in-sandbox runner. Pure
// (paths in, text out) so the bundle's shape is unit-tested without runsc.
import { join } from 'node:path';

export interface GvisorPaths {
  dir: string;
  /** The OCI bundle (config.json). */
  bundle: string;
  /** runsc's --root: its own state for this one sandbox. */
  runscRoot: string;
  /** Read-only inside (/.lodger/cmd): the runner, busybox, each command's script. */
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
}

export function gvisorPaths(runDir: string, id: string): GvisorPaths {
  const dir = join(runDir, id);
  return {
    dir, bundle: join(dir, 'bundle'), runscRoot: join(dir, 'runsc'), cmd: join(dir, 'cmd'), io: join(dir, 'io'),
    output: join(dir, 'output'), checkpoint: join(dir, 'checkpoint'), record: join(dir, 'sandbox.json'), log: join(dir, 'runsc.log'),
  };
}

/** Where the sandbox sees Lodger's two directories; a dot name keeps them out of `ls /`. */
export const IN_CMD = '/.lodger/cmd';
export const IN_IO = '/.lodger/io';
export const IN_SH = `${IN_CMD}/busybox`;

export interface BundleInput {
  rootfs: string;
  paths: GvisorPaths;
  hostname: string;
}

/** config.json: the root read-only, /output writable, no network (runsc --network=none), init idles. */
export function ociConfig(b: BundleInput): object {
  const bind = (destination: string, source: string, rw: boolean): object => ({ destination, type: 'bind', source, options: ['rbind', rw ? 'rw' : 'ro'] });
  return {
    ociVersion: '1.0.2',
    process: {
      // PID 1 only keeps the container alive; commands come through `runsc exec`.
      args: [IN_SH, 'sleep', '2147483647'],
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
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'mode=755'] },
      { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev'] },
      bind('/output', b.paths.output, true),
      bind(IN_CMD, b.paths.cmd, false),
      bind(IN_IO, b.paths.io, true),
    ],
    linux: { namespaces: ['pid', 'ipc', 'uts', 'mount', 'network'].map((type) => ({ type })) },
  };
}

/**
 * Runs command N inside the sandbox: its output into io/N.out and io/N.err, its pid into
 * io/N.pid, then its exit status into io/N.exit (written last, renamed into place, so the
 * host reads a whole one). Output lives in files, so a new lodgerd picks up where the old
 * one stopped. A shell reports death by signal S as 128+S.
 */
export const RUNNER = `n=$1
case "$n" in ''|*[!0-9]*) exit 2;; esac
${IN_SH} sh ${IN_CMD}/$n.sh > ${IN_IO}/$n.out 2> ${IN_IO}/$n.err < /dev/null &
p=$!
echo $p > ${IN_IO}/$n.pid
wait $p
echo $? > ${IN_IO}/$n.exit.tmp
${IN_SH} mv ${IN_IO}/$n.exit.tmp ${IN_IO}/$n.exit
`;

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
