// Typed door to the lodger_kvm addon (built by scripts/setup.mjs with node-gyp).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export type KvmVendor = 'kvm_intel' | 'kvm_amd' | 'kvm_pvm';

export interface KvmProbe {
  device: string;
  available: boolean;
  vendor: KvmVendor | null;
  apiVersion?: number;
  recommendedVcpus?: number;
  maxVcpus?: number;
  error?: string;
}

interface Addon {
  probe(dev?: string, sysModule?: string): KvmProbe;
  pinThread(tid: number, cpus: number[]): void;
  threadAffinity(tid: number): number[];
  idmapMount(source: string, target: string, uid: number, gid: number): void;
  lockFile(path: string): number;
  unlockFile(fd: number): void;
}

export class NativeAddonMissingError extends Error {
  readonly code = 'NATIVE_ADDON_MISSING';
}

const here = dirname(fileURLToPath(import.meta.url));
const addonPath = join(here, 'build', 'Release', 'lodger_kvm.node');
let cached: Addon | null = null;

function addon(): Addon {
  if (cached) return cached;
  if (!existsSync(addonPath)) throw new NativeAddonMissingError(`${addonPath} is not built: run \`npm run setup\``);
  cached = createRequire(import.meta.url)(addonPath) as Addon;
  return cached;
}

export const nativeAvailable = (): boolean => existsSync(addonPath);

/** Opens the KVM device and reports what backs it. */
export function probeKvm(dev = '/dev/kvm', sysModule = '/sys/module'): KvmProbe {
  return addon().probe(dev, sysModule);
}

/** sched_setaffinity for one thread (a QEMU vCPU thread, say). */
export function pinThread(tid: number, cpus: number[]): void {
  addon().pinThread(tid, cpus);
}

export function threadAffinity(tid: number): number[] {
  return addon().threadAffinity(tid);
}

/**
 * Binds `source` at `target` read-only (nosuid, nodev) with its owners shifted: what host
 * uid/gid 0 owns shows as `uid`/`gid` (a one-id user namespace). Needs root; the kernel's
 * filesystem must support idmapped mounts (ext4, xfs, btrfs, tmpfs, overlayfs' layers).
 */
export function idmapMount(source: string, target: string, uid: number, gid: number): void {
  addon().idmapMount(source, target, uid, gid);
}

/**
 * Runs `fn` holding an exclusive flock(2) on `path` (created 0600, never through a link):
 * one Lodger process at a time. The kernel drops the lock if the holder dies.
 */
export function withFileLock<T>(path: string, fn: () => T): T {
  const a = addon();
  const fd = a.lockFile(path);
  try {
    return fn();
  } finally {
    a.unlockFile(fd);
  }
}
