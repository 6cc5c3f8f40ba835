// A sandbox's record (sandbox.json in its run directory): what a later process needs to
// take the sandbox up again or clean up after it. Every backend keeps these fields and
// adds its own; the file is replaced atomically, so a reader never sees half of one.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import type { SandboxLimits, SandboxSpec } from './contract.ts';

export interface RecordBase {
  spec: SandboxSpec;
  limits: SandboxLimits;
  pid: number | null;
  state: 'running' | 'paused' | 'suspended';
  vcpus: number;
  memoryMiB: number;
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
