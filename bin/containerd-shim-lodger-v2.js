#!/usr/bin/env node
// containerd's shim for runtime io.containerd.lodger.v2 (found on containerd's PATH).
// Node's warnings would land in the address containerd reads from `start`: silenced.
import { existsSync } from 'node:fs';

process.removeAllListeners('warning');
const src = new URL('../daemon/shim/main.ts', import.meta.url);
if (existsSync(src)) {
  const { register } = await import('tsx/esm/api');
  register();
  await import(src.href);
} else {
  await import(new URL('../dist/daemon/shim/main.js', import.meta.url).href);
}
