#!/usr/bin/env node
// `npm test`: type check, lint, then every ava suite (unit tests next to the code, real
// QEMU/cgroup/service suites under test/). Ends with one line `N passed, N failed`,
// counting the type check and lint as one check each.
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sweepLeftovers } from './sweep.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const bin = (name) => join(root, 'node_modules', '.bin', name);
const extra = process.argv.slice(2);

function step(cmd, args, capture) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: root, stdio: ['ignore', capture ? 'pipe' : 'inherit', capture ? 'pipe' : 'inherit'] });
    let out = '';
    const tee = (dst) => (chunk) => { out += chunk; dst.write(chunk); };
    child.stdout?.on('data', tee(process.stdout));
    child.stderr?.on('data', tee(process.stderr));
    child.on('close', (code) => resolve({ code: code ?? 1, out }));
  });
}

for (const line of await sweepLeftovers()) console.error(`[test] left by a run that died: ${line}`);

let passed = 0;
let failed = 0;
for (const [name, cmd, args] of [['typecheck', bin('tsc'), ['-p', 'tsconfig.json', '--noEmit']], ['lint', bin('eslint'), ['.']]]) {
  if (extra.length) break; // a filtered run (npm test -- FILE) skips the global checks
  console.error(`[test] ${name}`);
  const r = await step(cmd, args, false);
  if (r.code === 0) passed++; else { failed++; console.error(`[test] ${name} failed`); }
}
console.error('[test] ava');
const ava = await step(bin('ava'), extra, true);
const count = (re) => { const m = ava.out.match(re); return m ? Number(m[1]) : 0; };
// ava lists every test as it ends (✔ passed, ✘ failed); its summary omits the passed
// count when something failed, so count the lines, and add what only the summary says.
const lines = ava.out.split('\n');
const avaPassed = lines.filter((l) => /^\s*✔ /.test(l)).length;
const avaFailed = lines.filter((l) => /^\s*✘ \[fail\]/.test(l)).length + count(/(\d+) uncaught exceptions?/) +
  count(/(\d+) unhandled rejections?/) + count(/(\d+) tests? remained uncompleted/) + (/✘ Timed out/.test(ava.out) ? 1 : 0);
if (ava.code !== 0 && avaFailed === 0) failed++; // ava failed before running tests
passed += avaPassed;
failed += avaFailed;
const skipped = count(/(\d+) tests? skipped/) + count(/(\d+) tests? todo/);
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(failed === 0 ? 0 : 1);
