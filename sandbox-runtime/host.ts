// Every host path the runtime touches, injected so logic runs against a temp dir in
// unit tests and against the real kernel in integration tests.
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
