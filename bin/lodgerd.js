#!/usr/bin/env node
// From a checkout, run the TypeScript sources through tsx; when installed, the build in dist/.
import { existsSync } from 'node:fs';

const src = new URL('../daemon/main.ts', import.meta.url);
if (existsSync(src)) {
  const { register } = await import('tsx/esm/api');
  register();
  await import(src.href);
} else {
  await import(new URL('../dist/daemon/main.js', import.meta.url).href);
}
