// A sandbox's record (sandbox.json in its run directory): what a later process needs to
// take the sandbox up again or clean up after it. Every backend keeps these fields and
// adds its own; the file is replaced atomically, so a reader never sees half of one.
import { existsSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SandboxLimits, SandboxSpec } from './contract.ts';

export interface RecordBase {
  spec: SandboxSpec;
  limits: SandboxLimits;
  pid: number | null;
  state: 'running' | 'paused' | 'suspended';
  vcpus: number;
  memoryMiB: number;
  /** The jail's uid/gid the sandbox's processes run as; null: not jailed. Absent in records of earlier Lodgers. */
  jail?: { uid: number; gid: number } | null;
}

export function writeRecordFile(path: string, rec: RecordBase): void {
  writeFileSync(`${path}.tmp`, JSON.stringify(rec));
  renameSync(`${path}.tmp`, path);
}

/** The record, or the reason there is none. */
export function readRecordFile<T extends RecordBase>(path: string): T | Error {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch (e) {
    return e as Error;
  }
}

/** The jail uids the records in `runDir` hold (a sandbox suspended to disk keeps its uid, with no process showing it). */
export function recordedUids(runDir: string, read: (path: string) => RecordBase | Error = readRecordFile): Set<number> {
  const uids = new Set<number>();
  if (!existsSync(runDir)) return uids;
  for (const id of readdirSync(runDir)) {
    const rec = read(join(runDir, id, 'sandbox.json'));
    if (!(rec instanceof Error) && rec.jail) uids.add(rec.jail.uid);
  }
  return uids;
}
