// The files the built daemon reads beside its code (protos, the policy schema, the default
// config, the guest agent's and kernel's sources, package.json for the version), copied
// into the build at the same relative places, so `node dist/...` finds them as the
// sources do. Run by `npm run build` after tsc: node scripts/build-assets.mjs <outDir>.
import { cpSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = process.argv[2] ?? join(repo, 'dist');
const ASSETS = [
  'package.json', 'policies/schema.json', 'config/lodgerd.yaml',
  'daemon/lodger.proto', 'daemon/health.proto', 'daemon/shim/proto',
  'sandbox-runtime/guest/agent.c', 'sandbox-runtime/image/guest-kernel.config',
];
for (const a of ASSETS) {
  const from = join(repo, a);
  if (!existsSync(from)) throw new Error(`build asset ${a} is missing`);
  cpSync(from, join(out, a), { recursive: true });
}
console.error(`[build] ${ASSETS.length} assets copied into ${out}`);
