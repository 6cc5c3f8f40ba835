// Where a sandbox's files (and its cgroup) live, and its record (sandbox.json): what
// a later process needs to take the sandbox up again or to clean up after it.
import { join } from 'node:path';
import { readRecordFile, recordedUids as recordedUidsIn, writeRecordFile, type RecordBase } from '../record.ts';

/** The cgroup of sandbox `id`, under the runtime's parent: private to this backend. */
export const cgroupName = (id: string): string => `sb-${id}`;

export interface QemuPaths {
  runDir: string;
  /** The VMM's own directory (its sockets): owned by its jail uid; the rest of runDir is not. */
  socketDir: string;
  /** The jailed VMM's root: /usr and this sandbox's files at their host paths. */
  jailRoot: string;
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
  // Sockets in a short-named subdirectory: a unix socket path is at most 107 bytes.
  const sock = join(dir, 's');
  return {
    runDir: dir,
    socketDir: sock,
    jailRoot: join(dir, 'root'),
    qmpSocket: join(sock, 'qmp.sock'),
    agentSocket: join(sock, 'agent.sock'),
    console: join(dir, 'console.log'),
    outputImage: join(dir, 'output.img'),
    rootfsImage: join(dir, 'rootfs.img'),
    vmmLog: join(dir, 'vmm.log'),
    record: join(dir, 'sandbox.json'),
    savedState: join(dir, 'suspended.state'),
    migrateOut: join(sock, 'migrate-out.sock'),
    migrateIn: join(sock, 'migrate-in.sock'),
  };
}

/** Written to the sandbox's record file; read back by attach(), list() and shutdown(). */
export interface SandboxRecord extends RecordBase {
  baseMemTotalKiB: number;
  wasPausedWhenSuspended: boolean;
}

export const writeRecord: (path: string, rec: SandboxRecord) => void = writeRecordFile;
export const readRecord = (path: string): SandboxRecord | Error => readRecordFile<SandboxRecord>(path);

export const recordedUids = (runDir: string): Set<number> => recordedUidsIn(runDir, readRecord);
