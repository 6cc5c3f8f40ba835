// Where the controller's state survives a daemon restart: one JSON file in the state
// directory, replaced atomically. A file that does not parse as a controller state is
// ignored (the controller starts afresh and clamps again on the next breach) and said so.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import type { ControllerState } from './controller/index.ts';

export interface StateStore {
  load(): ControllerState | null;
  save(state: ControllerState): void;
}

const MAX_BYTES = 64 * 1024;

export class FileStateStore implements StateStore {
  constructor(private readonly file: string, private readonly log: (m: string) => void = () => {}) {}

  load(): ControllerState | null {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch {
      return null;
    }
    try {
      if (text.length > MAX_BYTES) throw new Error(`${text.length} bytes`);
      const v = JSON.parse(text) as Partial<ControllerState>;
      if (typeof v !== 'object' || v === null || !Number.isInteger(v.level) || !Array.isArray(v.order) || typeof v.paused !== 'boolean') throw new Error('not a controller state');
      return v as ControllerState;
    } catch (e) {
      this.log(`controller state ${this.file} ignored: ${(e as Error).message}`);
      return null;
    }
  }

  save(state: ControllerState): void {
    const tmp = `${this.file}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(state)}\n`, { mode: 0o600 });
    renameSync(tmp, this.file);
  }
}
