// The VMM's jail (Firecracker's jailer, done with util-linux): each sandbox's QEMU runs as
// its own uid/gid from a configured range, in fresh mount, IPC, UTS and network namespaces,
// chrooted into a directory that holds only /usr (read-only: QEMU, its libraries and
// firmware) and that sandbox's kernel, initramfs, disks, console and sockets, at the same
// paths as on the host (so QEMU's command line and its identity check do not change).
// no_new_privs, no capabilities at all (bounding set emptied), rlimits (files, tasks, file
// size, no core dumps), a clean environment; QEMU then adds its own seccomp filter. The
// cgroup is joined by the launcher shell before any of this, so nothing runs outside it.
//
// Why util-linux rather than QEMU's -runas/-chroot: those drop privileges inside QEMU,
// after its seccomp filter is installed, and `elevateprivileges=deny` then kills QEMU at
// its own setgid(); the filter would have to allow set*id. Here QEMU is never root, so it
// keeps its strictest filter. Why not a C helper: util-linux is on every Debian host,
// audited, and costs a few execs (measured in docs/RELIABILITY.md).
import { chownSync, existsSync, linkSync, lstatSync, mkdirSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { SandboxError } from '../errors.ts';
import { LAUNCH_EXEC, LAUNCH_PRELUDE } from '../host.ts';
import { jailedProcesses, jailMismatch, type JailIdentity, type JailStatus } from '../jail.ts';

export { allocateUid, DEFAULT_JAIL, holdUid, readJailStatus, releaseUid, type JailIdentity, type JailOptions, type JailStatus } from '../jail.ts';

/** What one sandbox's jail holds besides /usr; every path is an absolute host path, kept as it is inside. */
export interface JailFiles {
  /** Read-only to the VMM: kernel, initramfs, the job's root image. */
  readOnly: string[];
  /** Owned by the VMM's uid: the /output disk and the console log. */
  writable: string[];
  /** The VMM's own directory (sockets), owned by its uid, mode 0700. */
  socketDir: string;
  /** Device nodes it may open (only /dev/kvm, and only under KVM). */
  devices: string[];
}

/** Per-task limits: QEMU needs a few hundred fds and threads; a guest cannot make it need more. */
export const JAIL_NOFILE = 4096;
export const JAIL_NPROC = 512;

const SAFE_PATH = /^\/[A-Za-z0-9_.,+@%=/-]*$/;

/**
 * Builds the jail's root under `root` (removed first): /usr and the sockets directory as
 * mount points, the files hard-linked at their host paths (a bind mount where they are on
 * another filesystem). Returns the bind mounts the launcher makes inside the namespace.
 */
export function prepareJail(root: string, files: JailFiles, id: JailIdentity, usr = '/usr'): { ro: string[]; rw: string[] } {
  for (const p of [...files.readOnly, ...files.writable, files.socketDir, ...files.devices, usr]) {
    // The launcher splits its lists on whitespace; a path that needs quoting is refused.
    if (!SAFE_PATH.test(p)) throw new SandboxError('SANDBOX_JAIL_FAILED', `jail path ${JSON.stringify(p)} has characters the launcher does not pass`);
  }
  rmSync(root, { recursive: true, force: true });
  mkdirSync(join(root, usr), { recursive: true, mode: 0o755 });
  // Merged /usr: /bin, /lib, /lib64, /sbin are symlinks into it (the dynamic loader is found through /lib64).
  for (const l of ['bin', 'lib', 'lib64', 'sbin']) {
    try {
      if (lstatSync(join('/', l)).isSymbolicLink()) symlinkSync(readlinkSync(join('/', l)), join(root, l));
    } catch { /* absent on this host */ }
  }
  const ro: string[] = [usr];
  const rw: string[] = [files.socketDir];
  mkdirSync(files.socketDir, { recursive: true, mode: 0o700 });
  chownSync(files.socketDir, id.uid, id.gid);
  mkdirSync(join(root, files.socketDir), { recursive: true });
  for (const f of files.writable) {
    if (!existsSync(f)) writeFileSync(f, '');
    chownSync(f, id.uid, id.gid);
  }
  const place = (f: string, binds: string[]): void => {
    const inside = join(root, f);
    mkdirSync(dirname(inside), { recursive: true });
    try {
      linkSync(f, inside);
    } catch {
      writeFileSync(inside, '');
      binds.push(f);
    }
  };
  for (const f of files.readOnly) place(f, ro);
  for (const f of files.writable) place(f, rw);
  for (const d of files.devices) {
    mkdirSync(dirname(join(root, d)), { recursive: true });
    writeFileSync(join(root, d), '');
    rw.push(d);
  }
  return { ro, rw };
}

/** The supplementary group that opens /dev/kvm, where it is used. */
export function deviceGroups(devices: string[]): number[] {
  return [...new Set(devices.map((d) => statSync(d).gid).filter((g) => g !== 0))];
}


/**
 * The launcher: argv for /bin/sh that joins the cgroups, then becomes (by exec, so the pid
 * stays the VMM's) unshare -> sh (bind mounts) -> chroot -> setpriv -> prlimit -> QEMU.
 * Exit 125: the cgroup could not be joined; 124: the jail could not be set up.
 */
export function jailedLaunch(qemu: string, args: string[], j: { root: string; id: JailIdentity; ro: string[]; rw: string[]; groups: number[]; fsizeBytes: number }): { argv: string[]; env: Record<string, string> } {
  const inner = 'R=$1; shift; '
    + 'for b in $LODGER_JAIL_RO; do mount --bind -o ro "$b" "$R$b" || exit 124; done; '
    + 'for b in $LODGER_JAIL_RW; do mount --bind "$b" "$R$b" || exit 124; done; '
    + 'exec chroot "$R" setpriv --reuid="$LODGER_JAIL_UID" --regid="$LODGER_JAIL_GID" $LODGER_JAIL_GROUPS --no-new-privs --inh-caps=-all --bounding-set=-all -- '
    + `prlimit --nofile=${JAIL_NOFILE}:${JAIL_NOFILE} --nproc=${JAIL_NPROC}:${JAIL_NPROC} --core=0:0 --fsize=${j.fsizeBytes}:${j.fsizeBytes} -- "$@"`;
  const outer = LAUNCH_PRELUDE
    // A file past RLIMIT_FSIZE (a flooded console log) fails the write instead of killing QEMU.
    + "trap '' XFSZ; "
    + 'set -- unshare --mount --ipc --uts --net --propagation private -- /bin/sh -c "$LODGER_JAIL_INNER" lodger-jail "$LODGER_JAIL_ROOT" "$@"; '
    + LAUNCH_EXEC;
  return {
    argv: ['-c', outer, 'lodger-vmm', qemu, ...args],
    // Nothing of lodgerd's environment reaches the VMM (setpriv --reset-env needs a passwd entry).
    env: {
      PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
      LODGER_JAIL_INNER: inner, LODGER_JAIL_ROOT: j.root, LODGER_JAIL_RO: j.ro.join(' '), LODGER_JAIL_RW: j.rw.join(' '),
      LODGER_JAIL_UID: String(j.id.uid), LODGER_JAIL_GID: String(j.id.gid),
      LODGER_JAIL_GROUPS: j.groups.length ? `--groups=${j.groups.join(',')}` : '--clear-groups',
    },
  };
}

/** Why the VMM is not jailed as it should be, or null. Checked before the guest runs its first instruction. */
export function jailViolation(s: JailStatus, want: JailIdentity, seccomp: boolean): string | null {
  const base = jailMismatch(s, want);
  if (base) return base;
  if (seccomp && s.seccomp !== 2) return `seccomp mode is ${s.seccomp}, not 2 (filter)`;
  if (!/^0+$/.test(s.capEff) || !/^0+$/.test(s.capPrm)) return `holds capabilities (CapEff ${s.capEff}, CapPrm ${s.capPrm})`;
  for (const n of ['mnt', 'ipc', 'uts', 'net']) if (!s.ownNamespaces.includes(n)) return `shares the ${n} namespace with lodgerd`;
  return null;
}

/** The jail of one start of a sandbox's VMM: its files, built under the run directory. */
export function sandboxJail(p: { jailRoot: string; socketDir: string; console: string; outputImage: string; rootfsImage: string },
  s: { kernel: string; initramfs: string; kvmDevice: string | null; outputDiskMiB: number | null; rootfs: boolean; usr?: string }, id: JailIdentity): NonNullable<Parameters<typeof jailedLaunch>[2]> {
  const devices = s.kvmDevice ? [s.kvmDevice] : [];
  const { ro, rw } = prepareJail(p.jailRoot, {
    readOnly: [s.kernel, s.initramfs, ...(s.rootfs ? [p.rootfsImage] : [])],
    writable: [p.console, ...(s.outputDiskMiB !== null ? [p.outputImage] : [])],
    socketDir: p.socketDir, devices,
  }, id, s.usr);
  // QEMU writes within the /output disk; the console log is held to the same bound (at least 64 MiB).
  const fsizeBytes = Math.max(64, s.outputDiskMiB ?? 0) * 1048576;
  return { root: p.jailRoot, id, ro, rw, groups: deviceGroups(devices), fsizeBytes };
}

/** Every Lodger VMM on the host with its jail as /proc shows it (for `lodger doctor`). */
export function jailReport(proc: string): { pid: number; id: string; summary: string; violation: string | null }[] {
  const suffix = ',debug-threads=on';
  const id = (argv: string[]): string | null => argv.find((a) => a.startsWith('lodger-') && a.endsWith(suffix))?.slice('lodger-'.length, -suffix.length) ?? null;
  return jailedProcesses(proc, id).map(({ pid, name, status: s }) => ({
    pid, id: name, violation: jailViolation(s, { uid: s.uid[0]!, gid: s.gid[0]! }, true) ?? (s.uid[0] === 0 ? 'runs as root' : null),
    summary: `uid ${s.uid[0]} gid ${s.gid[0]}, root ${s.root}, own ns ${s.ownNamespaces.join(',') || 'none'}, Seccomp ${s.seccomp}, NoNewPrivs ${s.noNewPrivs}, CapEff ${s.capEff}`,
  }));
}
