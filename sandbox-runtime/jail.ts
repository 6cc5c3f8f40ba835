// What every backend's jail shares: the uid range each sandbox takes one uid of, and a
// jailed process's properties as /proc shows them. How a backend confines its process is
// its own (qemu/jail.ts: util-linux around QEMU; gvisor/jail.ts: a user namespace for runsc).
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, symlinkSync, unlinkSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { nativeAvailable, withFileLock } from '../native/index.ts';
import { SandboxError } from './errors.ts';

export interface JailOptions {
  /** First uid (and gid, the same number) of the range; each live sandbox holds one. */
  uidBase: number;
  uidCount: number;
  /** The host's /usr, bound read-only into every jail (QEMU, libraries, firmware). */
  usr?: string;
  /**
   * Where the range's leases are kept, host-wide: `<leases>/<uid>` is a symlink to the run
   * directory of the sandbox holding it, so that every Lodger process on the host (lodgerd,
   * `lodger run`, either backend) sees a suspended sandbox's uid. Default DEFAULT_LEASES.
   */
  leases?: string;
}

/** Above the subordinate-uid ranges (100000 + 65536 per user) of a few dozen users. */
export const DEFAULT_JAIL: JailOptions = { uidBase: 3_000_000, uidCount: 100_000 };
export const DEFAULT_LEASES = '/var/lib/lodger/jail-uids';

export interface JailIdentity {
  uid: number;
  gid: number;
}

/** uids handed out by this process and not yet given back. */
const reserved = new Set<number>();

/**
 * The lease directory, made if missing; refused unless it is a directory of this process's
 * user that nobody else may write (whoever could would block uids or drop leases).
 */
function leaseDir(j: JailOptions): string {
  const dir = resolve(j.leases ?? DEFAULT_LEASES);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = lstatSync(dir);
    if (!st.isDirectory() || st.uid !== process.geteuid?.() || (st.mode & 0o022) !== 0) throw new Error(`${dir} must be a directory of uid ${process.geteuid?.()} that no one else can write`);
  } catch (e) {
    throw new SandboxError('SANDBOX_JAIL_FAILED', `jail uid leases: ${(e as Error).message}`);
  }
  return dir;
}

/**
 * Runs `fn` with the lease directory locked against every other Lodger process (flock on
 * `.lock`, dropped by the kernel if the holder dies), so that a take-over or a release
 * never undoes another process's fresh lease. Without the native addon: unlocked.
 */
function locked<T>(dir: string, fn: () => T): T {
  return nativeAvailable() ? withFileLock(join(dir, '.lock'), fn) : fn();
}

/**
 * Takes `uid`'s lease for `owner` (an absolute run directory; the lock held). A lease is
 * live while the directory it names exists; a stale one (its sandbox gone without
 * cleanup) is taken over. False: another live sandbox's.
 */
function takeLease(dir: string, uid: number, owner: string): boolean {
  const path = join(dir, String(uid));
  let holder: string | null = null;
  try { holder = readlinkSync(path); } catch { /* none */ }
  if (holder === owner) return true;
  if (holder !== null) {
    if (existsSync(holder)) return false;
    unlinkSync(path);
  }
  symlinkSync(owner, path);
  return true;
}

/**
 * A uid of the range no live sandbox holds: not reserved here, not in a record of this
 * runtime's run directory (`usedByRecords`), not any running process's, not leased on
 * this host to another sandbox's run directory; its lease is taken for `owner`.
 */
export function allocateUid(j: JailOptions, proc: string, usedByRecords: Set<number>, owner: string): JailIdentity {
  const running = new Set<number>();
  for (const name of readdirSync(proc)) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const m = /^Uid:\s+(\d+)/m.exec(readFileSync(join(proc, name, 'status'), 'utf8'));
      if (m) running.add(Number(m[1]));
    } catch { /* exited */ }
  }
  const dir = leaseDir(j);
  let uid: number | null;
  try {
    uid = locked(dir, () => {
      for (let k = 0; k < j.uidCount; k++) {
        const u = j.uidBase + k;
        if (!reserved.has(u) && !running.has(u) && !usedByRecords.has(u) && takeLease(dir, u, resolve(owner))) return u;
      }
      return null;
    });
  } catch (e) {
    throw new SandboxError('SANDBOX_JAIL_FAILED', `jail uid leases in ${dir}: ${(e as Error).message}`);
  }
  if (uid === null) throw new SandboxError('SANDBOX_JAIL_FAILED', `no free uid in the jail range ${j.uidBase}-${j.uidBase + j.uidCount - 1}`);
  reserved.add(uid);
  return { uid, gid: uid };
}

/** Gives `uid` back: this process's reservation, and its lease once `owner` is gone. */
export function releaseUid(j: JailOptions, uid: number, owner: string): void {
  reserved.delete(uid);
  try {
    const dir = leaseDir(j);
    const path = join(dir, String(uid));
    locked(dir, () => {
      if (readlinkSync(path) === resolve(owner) && !existsSync(owner)) unlinkSync(path);
    });
  } catch { /* not leased, or no lease directory: a stale lease is taken over anyway */ }
}

/** The range's leases for `lodger doctor`: where they are, how many name a live run directory, how many are stale. */
export function leaseReport(j: JailOptions): { dir: string; live: number; stale: number; error?: string } {
  const dir = resolve(j.leases ?? DEFAULT_LEASES);
  const r = { dir, live: 0, stale: 0 };
  try {
    if (!existsSync(dir)) return r;
    for (const name of readdirSync(dir)) {
      try {
        if (existsSync(readlinkSync(join(dir, name)))) r.live++;
        else r.stale++;
      } catch { /* the lock file, or not a lease */ }
    }
    return r;
  } catch (e) {
    return { ...r, error: (e as NodeJS.ErrnoException).code ?? (e as Error).message };
  }
}

/**
 * Marks a uid taken up from a record (attach) as held, and its lease (a reboot may have
 * left it stale) as this owner's. Throws SANDBOX_JAIL_FAILED when another live sandbox's
 * run directory holds it: the two would share a uid, and so each other's files.
 */
export function holdUid(j: JailOptions, uid: number, owner: string): void {
  reserved.add(uid);
  let dir: string;
  try {
    dir = leaseDir(j);
  } catch {
    return; // a lease directory gone wrong refuses new sandboxes; one already running is still taken up
  }
  const path = join(dir, String(uid));
  locked(dir, () => {
    if (!takeLease(dir, uid, resolve(owner))) {
      let holder = '?';
      try { holder = readlinkSync(path); } catch { /* given back meanwhile */ }
      throw new SandboxError('SANDBOX_JAIL_FAILED', `jail uid ${uid} of ${owner} is leased to another live sandbox (${holder})`);
    }
  });
}

/** A jailed VMM's properties as /proc shows them (what docs/RELIABILITY.md records). */
export interface JailStatus {
  uid: number[];
  gid: number[];
  groups: number[];
  seccomp: number;
  noNewPrivs: number;
  capEff: string;
  capPrm: string;
  capBnd: string;
  root: string;
  /** Its root is this process's own (compared by device and inode: a pivot_root'ed root reads as "/" too). */
  hostRoot: boolean;
  /** Its user namespace's uid_map, one line per range ("0 3000001 1"); the host's own is "0 0 4294967295". */
  uidMap: string;
  /** The VMM's namespaces that differ from this process's (mnt, ipc, uts, net). */
  ownNamespaces: string[];
}

export function readJailStatus(proc: string, pid: number): JailStatus {
  const status = readFileSync(join(proc, String(pid), 'status'), 'utf8');
  const field = (k: string): string => new RegExp(`^${k}:[ \\t]*(.*)$`, 'm').exec(status)?.[1]?.trim() ?? '';
  const nums = (k: string): number[] => field(k).split(/\s+/).filter(Boolean).map(Number);
  const ns = ['mnt', 'ipc', 'uts', 'net', 'pid', 'user', 'cgroup'].filter((n) => {
    try {
      return readlinkSync(join(proc, String(pid), 'ns', n)) !== readlinkSync(join(proc, 'self', 'ns', n));
    } catch {
      return false;
    }
  });
  return {
    uid: nums('Uid'), gid: nums('Gid'), groups: nums('Groups'), seccomp: Number(field('Seccomp')), noNewPrivs: Number(field('NoNewPrivs')),
    capEff: field('CapEff'), capPrm: field('CapPrm'), capBnd: field('CapBnd'), root: readlinkSync(join(proc, String(pid), 'root')), ownNamespaces: ns,
    hostRoot: sameFile(join(proc, String(pid), 'root/'), join(proc, 'self', 'root/')),
    uidMap: readFileSync(join(proc, String(pid), 'uid_map'), 'utf8').trim().split('\n').map((l) => l.trim().split(/\s+/).join(' ')).join('\n'),
  };
}

function sameFile(a: string, b: string): boolean {
  const x = statSync(a);
  const y = statSync(b);
  return x.dev === y.dev && x.ino === y.ino;
}

/** What every jail must show: its own uid and gid, no_new_privs, a root other than the host's. */
export function jailMismatch(s: JailStatus, want: JailIdentity): string | null {
  if (!s.uid.every((u) => u === want.uid) || !s.gid.every((g) => g === want.gid)) return `runs as uid ${s.uid.join('/')} gid ${s.gid.join('/')}, not ${want.uid}:${want.gid}`;
  if (s.noNewPrivs !== 1) return 'no_new_privs is not set';
  if (s.hostRoot) return 'its root is the host\'s root';
  return null;
}

/** A process `jailedProcesses` found: its pid, the name `match` gave it, its jail as /proc shows it. */
export interface JailedProcess { pid: number; name: string; status: JailStatus }

/**
 * Every process whose command line `match` names (a VMM's sandbox id, a runsc process's
 * role), with its jail read back from /proc: what `lodger doctor` reports, per backend.
 */
export function jailedProcesses(proc: string, match: (argv: string[]) => string | null): JailedProcess[] {
  const out: JailedProcess[] = [];
  for (const pid of readdirSync(proc)) {
    if (!/^\d+$/.test(pid)) continue;
    let name: string | null;
    try {
      name = match(readFileSync(join(proc, pid, 'cmdline'), 'utf8').split('\0'));
    } catch { continue; }
    if (name === null) continue;
    try {
      out.push({ pid: Number(pid), name, status: readJailStatus(proc, Number(pid)) });
    } catch { /* exited */ }
  }
  return out;
}
