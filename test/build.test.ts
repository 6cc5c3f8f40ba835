// The build an installation runs (bin/*.js fall back to dist/ when there are no sources):
// tsc's output alone lacked the files the code reads beside itself (the policy schema,
// the protos, package.json), so the built CLI and daemon failed at their first import.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const repo = join(import.meta.dirname, '..');
const out = mkdtempSync(join(tmpdir(), 'lodger-build-'));
test.after.always(() => rmSync(out, { recursive: true, force: true }));

test.serial('the build (tsc, then its assets) runs on its own: the CLI validates the shipped policies, the gRPC and shim protos load', async (t) => {
  const tsc = spawnSync(process.execPath, [join(repo, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(repo, 'tsconfig.build.json'), '--outDir', out], { encoding: 'utf8' });
  t.is(tsc.status, 0, tsc.stdout + tsc.stderr);
  const assets = spawnSync(process.execPath, [join(repo, 'scripts', 'build-assets.mjs'), out], { encoding: 'utf8' });
  t.is(assets.status, 0, assets.stderr);
  // Installed, the build sits beside its node_modules as dist/ does in the checkout.
  symlinkSync(join(repo, 'node_modules'), join(out, 'node_modules'));
  const policies = ['batch', 'nginx', 'redis'].map((p) => join(repo, 'policies', `${p}.yaml`));
  const cli = spawnSync(process.execPath, [join(out, 'daemon', 'cli', 'main.js'), 'policy', 'validate', ...policies], { encoding: 'utf8', cwd: tmpdir() });
  t.is(cli.status, 0, cli.stderr);
  t.is(cli.stdout.split('\n').filter((l) => l.endsWith(')') && l.includes(': ok (')).length, 3, cli.stdout);
  const api = await import(pathToFileURL(join(out, 'daemon', 'api.js')).href) as { loadApi: () => Record<string, unknown> };
  t.deepEqual(Object.keys(api.loadApi()).sort(), ['health', 'lodger']);
  const shim = await import(pathToFileURL(join(out, 'daemon', 'shim', 'proto.js')).href) as { taskCodecs: () => Record<string, unknown> };
  t.true(Object.keys(shim.taskCodecs()).includes('Create'), 'the shim\'s task service codecs load');
});
