// What every backend's jail shares: the uid range each sandbox takes one uid of, and a
// jailed process's properties as /proc shows them. How a backend confines its process is
// its own (qemu/jail.ts: util-linux around QEMU; gvisor/jail.ts: a user namespace for runsc).
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { SandboxError } from './errors.ts';

export interface JailOptions {
  /** First uid (and gid, the same number) of the range; each live sandbox holds one. */
  uidBase: number;
  uidCount: number;
  /** The host's /usr, bound read-only into every jail (QEMU, libraries, firmware). */
  usr?: string;
}

/** Above the subordinate-uid ranges (100000 + 65536 per user) of a few dozen users. */
export const DEFAULT_JAIL: JailOptions = { uidBase: 3_000_000, uidCount: 100_000 };

export interface JailIdentity {
  uid: number;
  gid: number;
}

/** uids handed out by this process and not yet given back. */
const reserved = new Set<number>();

/**
 * A uid of the range no live sandbox holds: not reserved here, not in a record of `runDir`
 * (`recordUid` reads one), not any running process's (another runtime's VMM).
 */
export function allocateUid(j: JailOptions, proc: string, usedByRecords: Set<number>): JailIdentity {
  const running = new Set<number>();
  for (const name of readdirSync(proc)) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const m = /^Uid:\s+(\d+)/m.exec(readFileSync(join(proc, name, 'status'), 'utf8'));
      if (m) running.add(Number(m[1]));
    } catch { /* exited */ }
  }
  for (let k = 0; k < j.uidCount; k++) {
    const uid = j.uidBase + k;
    if (reserved.has(uid) || running.has(uid) || usedByRecords.has(uid)) continue;
    reserved.add(uid);
    return { uid, gid: uid };
  }
  throw new SandboxError('SANDBOX_JAIL_FAILED', `no free uid in the jail range ${j.uidBase}-${j.uidBase + j.uidCount - 1}`);
}

export function releaseUid(uid: number): void {
  reserved.delete(uid);
}

/** Marks a uid taken up from a record (attach) as held. */
export function holdUid(uid: number): void {
  reserved.add(uid);
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
