// The gVisor sandbox's jail. runsc's sandbox (the Sentry, which the job talks to) and its
// gofer run as one uid of the jail range: the OCI config asks for a user namespace that
// maps container uid/gid 0 to that host uid alone, so what capabilities runsc keeps
// (chroot, ptrace of its own stubs, file access) hold over nothing but that one uid's
// files. runsc adds its own seccomp filters, no_new_privs and an empty or pivoted root.
//
// What the gofer must reach as that uid, and how:
// - the job's root (an image root or a directory, owned by host root and shared by jobs):
//   through an idmapped, read-only bind of it (root's files show as the uid's), under a
//   read-only overlay whose top layer holds the mount points runsc's gofer would otherwise
//   mkdir in the root (it cannot: the root is read-only, and it must not write a shared
//   image root anyway);
// - /output and the io directory: owned by the uid; the command directory: root's, read
//   through its group (the uid's gid), so the sandbox can read its scripts but not plant
//   a link lodgerd would write through;
// - the path down to all of it: every directory above must be searchable (o+x, as
//   containerd's 0711 state directories are); lodgerd's state directory is 0711 with
//   everything in it 0700/0600 (daemon/lodgerd.ts).
import { execFile } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { idmapMount } from '../../native/index.ts';
import { SandboxError } from '../errors.ts';
import { jailedProcesses, jailMismatch, type JailIdentity, type JailStatus } from '../jail.ts';
import { IN_CMD, IN_IO, type GvisorPaths } from './bundle.ts';

const run = promisify(execFile);

/** Bind destinations in every sandbox's root (ociConfig's binds): the overlay's top layer holds them. */
export const MOUNT_POINTS = [IN_CMD, IN_IO, '/output'];

/** Overlay options split on ',' and ':'; a path with them, or with anything odd, is refused. */
const SAFE_PATH = /^\/[A-Za-z0-9_.+@%=/-]*$/;

/** The first directory from / down to `dir` another uid cannot pass (no o+x), with its mode; null when none. */
export function unsearchable(dir: string): { dir: string; mode: number } | null {
  const chain: string[] = [];
  for (let d = dir; ; d = dirname(d)) {
    chain.unshift(d);
    if (d === '/') break;
  }
  for (const d of chain) {
    let mode: number;
    // One not there yet is made by mkdir, searchable.
    try { mode = statSync(d).mode & 0o7777; } catch { return null; }
    if ((mode & 0o001) === 0) return { dir: d, mode };
  }
  return null;
}

interface MountEntry { at: string; fstype: string; options: string }

/** This process's mounts (/proc/self/mountinfo): where, what filesystem, its superblock options. */
function mountTable(proc: string): MountEntry[] {
  const unescape = (x: string): string => x.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: MountEntry[] = [];
  for (const line of readFileSync(join(proc, 'self', 'mountinfo'), 'utf8').split('\n')) {
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (dash < 0 || !f[4]) continue;
    out.push({ at: unescape(f[4]), fstype: f[dash + 1] ?? '', options: unescape(f[dash + 3] ?? '') });
  }
  return out;
}

const mountedUnder = (proc: string, dir: string): string[] => mountTable(proc).map((m) => m.at).filter((at) => at === dir || at.startsWith(`${dir}/`));

/**
 * The directories to idmap for a root: the root itself, or, where it is an overlay mount
 * (a container's root that containerd's snapshotter made), its layers top first, since
 * an overlay cannot itself be idmapped. Its upper layer is read as one more lower one.
 */
export function rootLayers(proc: string, rootfs: string): string[] {
  const m = mountTable(proc).filter((e) => e.at === rootfs).pop();
  if (!m || m.fstype !== 'overlay') return [rootfs];
  const opt = (k: string): string[] => m.options.split(',').filter((o) => o.startsWith(`${k}=`)).map((o) => o.slice(k.length + 1));
  const layers = [...opt('upperdir'), ...opt('lowerdir').flatMap((l) => l.split(':'))].filter(Boolean);
  return layers.length ? layers : [rootfs];
}

/**
 * Builds (or, for a sandbox whose mounts a reboot took, rebuilds) the jail's files for a
 * sandbox whose root is `rootfs`; returns the root to put in its OCI config.
 */
export async function prepareGvisorJail(p: GvisorPaths, rootfs: string, id: JailIdentity, proc: string): Promise<string> {
  if (!SAFE_PATH.test(p.dir)) throw new SandboxError('SANDBOX_JAIL_FAILED', `gVisor jail: path ${JSON.stringify(p.dir)} has characters an overlay mount cannot take`);
  // The run directory is the runtime's own: passable, not listable (each sandbox's directory is 0711 too, its contents the uid's or root's).
  chmodSync(dirname(p.dir), 0o711);
  const closed = unsearchable(dirname(p.dir));
  if (closed) {
    throw new SandboxError('SANDBOX_JAIL_FAILED', `gVisor jail: the sandbox's uid cannot reach its files: ${closed.dir} is mode 0${closed.mode.toString(8)}; `
      + 'every directory above the run directory must be searchable by others (o+x, e.g. 0711)');
  }
  chmodSync(p.dir, 0o711);
  const own = (d: string, mode: number, gidOnly = false): void => {
    mkdirSync(d, { recursive: true });
    chownSync(d, gidOnly ? 0 : id.uid, id.gid);
    chmodSync(d, mode);
  };
  own(p.io, 0o700);
  own(p.output, 0o700);
  own(p.cmd, 0o750, true);
  for (const m of MOUNT_POINTS) own(join(p.skel, m), 0o755);
  // The root of the sandbox's root is the top layer's: the uid's, so it reads as root's inside.
  own(p.skel, 0o755);
  own(join(p.skel, '.lodger'), 0o755);
  const layers = rootLayers(proc, rootfs);
  for (const l of layers) {
    if (!SAFE_PATH.test(l)) throw new SandboxError('SANDBOX_JAIL_FAILED', `gVisor jail: layer ${JSON.stringify(l)} of ${rootfs} has characters an overlay mount cannot take`);
  }
  const have = new Set(mountedUnder(proc, p.dir));
  const ids = layers.map((_, i) => join(p.idroot, String(i)));
  try {
    for (const [i, l] of layers.entries()) {
      mkdirSync(ids[i]!, { recursive: true });
      if (!have.has(ids[i]!)) idmapMount(l, ids[i]!, id.uid, id.gid);
    }
    mkdirSync(p.rootfs, { recursive: true });
    if (!have.has(p.rootfs)) {
      await run('mount', ['-t', 'overlay', 'overlay', '-o', `ro,nosuid,nodev,lowerdir=${[p.skel, ...ids].join(':')}`, p.rootfs]);
    }
  } catch (e) {
    await releaseGvisorJail(p, proc).catch(() => {});
    throw new SandboxError('SANDBOX_JAIL_FAILED', `gVisor jail of ${rootfs}: ${((e as { stderr?: string }).stderr || (e as Error).message).trim()}`, { cause: e });
  }
  return p.rootfs;
}

/** Unmounts the jail's root (lazily: a gofer still dying keeps it busy); true when nothing under the run directory is mounted any more. */
export async function releaseGvisorJail(p: GvisorPaths, proc: string): Promise<boolean> {
  // The overlay first, then the layers under it.
  for (const m of mountedUnder(proc, p.dir).sort((x, y) => (x === p.rootfs ? -1 : y === p.rootfs ? 1 : 0))) {
    await run('umount', ['-l', m]).catch(() => {});
  }
  return mountedUnder(proc, p.dir).length === 0;
}

/**
 * Why a runsc process (sandbox or gofer) is not jailed as it should be, or null. Its
 * capabilities count only inside a user namespace of its own mapping its uid alone.
 */
export function gvisorJailViolation(s: JailStatus, want: JailIdentity): string | null {
  const base = jailMismatch(s, want);
  if (base) return base;
  if (s.seccomp !== 2) return `seccomp mode is ${s.seccomp}, not 2 (filter)`;
  const capable = !/^0+$/.test(s.capEff) || !/^0+$/.test(s.capPrm);
  if (capable && !(s.ownNamespaces.includes('user') && s.uidMap === `0 ${want.uid} 1`)) {
    return `holds capabilities (CapEff ${s.capEff}) outside a user namespace of its own (uid_map ${JSON.stringify(s.uidMap)})`;
  }
  return null;
}

/** Every runsc sandbox and gofer on the host with its jail as /proc shows it (for `lodger doctor`). */
export function gvisorJailReport(proc: string): { pid: number; what: string; summary: string; violation: string | null }[] {
  const role = (argv: string[]): string | null => (argv[0] === 'runsc-sandbox' || argv[0] === 'runsc-gofer' ? argv[0] : null);
  return jailedProcesses(proc, role).map(({ pid, name, status: s }) => ({
    pid, what: name, violation: s.uid[0] === 0 ? 'runs as root' : gvisorJailViolation(s, { uid: s.uid[0]!, gid: s.gid[0]! }),
    summary: `uid ${s.uid[0]} gid ${s.gid[0]}, own ns ${s.ownNamespaces.join(',') || 'none'}, uid_map ${s.uidMap}, Seccomp ${s.seccomp}, NoNewPrivs ${s.noNewPrivs}, CapEff ${s.capEff}`,
  }));
}
