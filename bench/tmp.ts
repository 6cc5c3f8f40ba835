// A fresh temporary directory that a jailed gVisor sandbox's uid can pass through (0711,
// not mkdtemp's 0700): runsc's gofer reaches its files by path (sandbox-runtime/gvisor/jail.ts).
import { chmodSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';

export function passableTmpDir(prefix: string): string {
  const dir = mkdtempSync(isAbsolute(prefix) ? prefix : join(tmpdir(), prefix));
  chmodSync(dir, 0o711);
  return dir;
}
