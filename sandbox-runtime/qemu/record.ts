// Where a sandbox's files (and its cgroup) live, and its record (sandbox.json): what
// a later process needs to take the sandbox up again or to clean up after it.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SandboxLimits, SandboxSpec } from '../contract.ts';

/** The cgroup of sandbox `id`, under the runtime's parent: private to this backend. */
export const cgroupName = (id: string): string => `sb-${id}`;

export interface QemuPaths {
  runDir: string;
  qmpSocket: string;
  agentSocket: string;
  console: string;
  outputImage: string;
  rootfsImage: string;
  /** QEMU's stderr: a file, so a later process that attaches can read it too. */
  vmmLog: string;
  /** The sandbox record: pid, size, state. */
  record: string;
  /** The VM saved to disk by suspend(). */
  savedState: string;
  migrateOut: string;
  migrateIn: string;
}

export function sandboxPaths(runDir: string, id: string): QemuPaths {
  const dir = join(runDir, id);
  return {
    runDir: dir,
    qmpSocket: join(dir, 'qmp.sock'),
    agentSocket: join(dir, 'agent.sock'),
    console: join(dir, 'console.log'),
    outputImage: join(dir, 'output.img'),
    rootfsImage: join(dir, 'rootfs.img'),
    vmmLog: join(dir, 'vmm.log'),
    record: join(dir, 'sandbox.json'),
    savedState: join(dir, 'suspended.state'),
    migrateOut: join(dir, 'migrate-out.sock'),
    migrateIn: join(dir, 'migrate-in.sock'),
  };
}

/** Written to the sandbox's record file; read back by attach(), list() and shutdown(). */
export interface SandboxRecord {
  spec: SandboxSpec;
  limits: SandboxLimits;
  pid: number | null;
  state: 'running' | 'paused' | 'suspended';
  vcpus: number;
  memoryMiB: number;
  baseMemTotalKiB: number;
  wasPausedWhenSuspended: boolean;
}

/** Replaces the record atomically: a reader never sees half of one. */
export function writeRecord(path: string, rec: SandboxRecord): void {
  writeFileSync(`${path}.tmp`, JSON.stringify(rec));
  renameSync(`${path}.tmp`, path);
}

/** The record, or the reason there is none. */
export function readRecord(path: string): SandboxRecord | Error {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as SandboxRecord;
  } catch (e) {
    return e as Error;
  }
}
