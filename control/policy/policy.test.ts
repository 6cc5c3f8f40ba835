import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadPolicyDir, parsePolicyText, PolicyError } from './index.ts';

const policiesDir = join(import.meta.dirname, '..', '..', 'policies');

test('the shipped example policies load into typed values', async (t) => {
  const set = await loadPolicyDir(policiesDir);
  const web = set.services.find((s) => s.name === 'web')!;
  t.deepEqual(web.slo, { percentile: 99, targetMs: 5, windowMs: 1000 });
  t.deepEqual(web.probe, { kind: 'http', url: 'http://127.0.0.1:8080/', method: 'GET', intervalMs: 100, timeoutMs: 500 });
  const cache = set.services.find((s) => s.name === 'cache')!;
  t.like(cache.probe, { kind: 'redis', host: '127.0.0.1', port: 6379 });
  const pool = set.pools[0]!;
  t.deepEqual(pool.sandbox, { minVcpus: 1, maxVcpus: 4, minMemoryMiB: 256, maxMemoryMiB: 4096 });
  t.is(pool.reserve.memoryBytes, 2 * 1024 ** 3);
  t.deepEqual(pool.knobs, ['cpu.idle', 'cpuset', 'cpu.weight', 'pause']);
});

function errorOf(text: string): PolicyError {
  try {
    parsePolicyText(text, 'p.yaml');
  } catch (e) {
    if (e instanceof PolicyError) return e;
    throw e;
  }
  throw new Error('no error');
}

const svc = (spec: string): string => `apiVersion: lodger.dev/v1\nkind: OnlineService\nmetadata: { name: web }\nspec:\n${spec}`;

test('an unknown key is named with its file, line and column', (t) => {
  const e = errorOf(svc('  slo: { target: 5ms }\n  probe: { tcp: { address: "a:1" } }\n  colour: blue\n'));
  t.is(e.message, 'p.yaml:7:3: unknown key "colour" at /spec');
  const deep = errorOf(svc('  slo: { target: 5ms, windw: 1s }\n  probe: { tcp: { address: "a:1" } }\n'));
  t.regex(deep.message, /^p\.yaml:5:23: unknown key "windw" at \/spec\/slo \(did you mean "window"\?\)$/);
});

test('bad values, missing keys and YAML syntax errors are located', (t) => {
  t.regex(errorOf(svc('  slo: { target: fast }\n  probe: { tcp: { address: "a:1" } }\n')).message, /^p\.yaml:5:18: \/spec\/slo\/target: "fast" is not in the expected form/);
  t.regex(errorOf(svc('  probe: { tcp: { address: "a:1" } }\n')).message, /^p\.yaml:\d+:\d+: missing key "slo" at \/spec$/);
  t.regex(errorOf(svc('  slo: { target: 5ms }\n')).message, /\/spec: needs exactly one of: probe, prometheus$/);
  t.regex(errorOf(svc('  slo: { target: 5ms }\n  probe: { interval: 1s }\n')).message, /\/spec\/probe: needs exactly one of: http, tcp, redis, memcached$/);
  t.regex(errorOf('apiVersion: lodger.dev/v1\nkind: [unclosed\n').message, /^p\.yaml:\d+:\d+: YAML: /);
  // An alias with no anchor: the yaml library throws a ReferenceError of its own from toJS.
  t.regex(errorOf('*!').message, /^p\.yaml:1:1: YAML: /);
  t.regex(errorOf('apiVersion: lodger.dev/v1\nkind:\n  - *nope\n').message, /^p\.yaml:3:5: YAML: .*nope/);
  t.regex(errorOf('apiVersion: lodger.dev/v2\nkind: BatchPool\nmetadata: { name: x }\nspec: { sandbox: { maxVcpus: 1, maxMemory: 1Gi } }\n').message, /^p\.yaml:1:13: \/apiVersion: must be "lodger.dev\/v1"/);
});

test('sizes may be plain byte counts', (t) => {
  const set = parsePolicyText('apiVersion: lodger.dev/v1\nkind: BatchPool\nmetadata: { name: b }\nspec:\n  reserve: { cpus: 0, memory: 0 }\n  sandbox: { maxVcpus: 2, maxMemory: 536870912 }\n', 'p.yaml');
  t.is(set.pools[0]!.reserve.memoryBytes, 0);
  t.is(set.pools[0]!.sandbox.maxMemoryMiB, 512);
});

test('semantic checks: min above max, and a name defined twice across files', async (t) => {
  const pool = 'apiVersion: lodger.dev/v1\nkind: BatchPool\nmetadata: { name: b }\nspec:\n  sandbox: { minVcpus: 8, maxVcpus: 2, maxMemory: 1Gi }\n';
  t.regex(errorOf(pool).message, /^p\.yaml:5:\d+: minVcpus 8 is above maxVcpus 2/);
  const dir = mkdtempSync(join(tmpdir(), 'lodger-pol-'));
  const web = svc('  slo: { target: 5ms }\n  probe: { tcp: { address: "a:1" } }\n');
  writeFileSync(join(dir, 'a.yaml'), web);
  writeFileSync(join(dir, 'b.yaml'), web);
  await t.throwsAsync(loadPolicyDir(dir), { message: /b\.yaml.*also defined in .*a\.yaml/ });
});

test('a misspelt key is reported at its own line, with the key it was probably meant to be', (t) => {
  const e = errorOf(svc('  slo: { target: 5ms }\n  probee: { tcp: { address: "a:1" } }\n'));
  t.is(e.message, 'p.yaml:6:3: unknown key "probee" at /spec (did you mean "probe"?)');
  t.regex(errorOf(svc('  slo: { target: 5ms }\n  probe: { tcp: { address: "a:1" } }\n  process: { exe: nginx, pidfile: /run/x }\n')).message,
    /^p\.yaml:7:26: unknown key "pidfile" at \/spec\/process \(did you mean "pidFile"\?\)$/);
  t.regex(errorOf(svc('  slo: { target: 5ms }\n  probe: { tcp: { address: "a:1" } }\n  zzz: 1\n')).message, /unknown key "zzz" at \/spec$/, 'no guess when nothing is near');
});

test('defaults come from the schema alone', (t) => {
  const set = parsePolicyText(`${svc('  slo: { target: 5ms }\n  probe: { tcp: { address: "a:1" } }\n  process: { systemdUnit: nginx.service }\n')}---
apiVersion: lodger.dev/v1\nkind: BatchPool\nmetadata: { name: b }\nspec:\n  sandbox: { maxVcpus: 2, maxMemory: 1Gi }\n`, 'p.yaml');
  const schema = JSON.parse(readFileSync(join(policiesDir, 'schema.json'), 'utf8'));
  const bp = schema.definitions.batchPool.properties;
  const pool = set.pools[0]!;
  t.deepEqual(pool.knobs, bp.knobs.default);
  t.deepEqual(pool.knobs, ['cpu.idle', 'cpuset', 'cpu.weight', 'pause']);
  t.is(pool.growth.minSlack, bp.growth.properties.minSlack.default);
  t.is(pool.growth.backoffMs, 30_000);
  t.is(pool.growth.cpusetIntervalMs, 30_000);
  t.deepEqual(pool.reserve, { cpus: 0, memoryBytes: 0 });
  t.deepEqual(set.services[0]!.slo, { percentile: 99, targetMs: 5, windowMs: 1000 });
  t.deepEqual(set.services[0]!.process, { systemdUnit: 'nginx.service' });
  t.like(set.services[0]!.probe, { intervalMs: 100, timeoutMs: 1000 });
});

test('a second BatchPool is refused at its line, in one file or across files', async (t) => {
  const pool = (name: string): string => `apiVersion: lodger.dev/v1\nkind: BatchPool\nmetadata: { name: ${name} }\nspec:\n  sandbox: { maxVcpus: 2, maxMemory: 1Gi }\n`;
  t.is(errorOf(`${pool('a')}---\n${pool('b')}`).message,
    'p.yaml:8:7: a second BatchPool "b": only one BatchPool is supported (the first is "a" in p.yaml)');
  const dir = mkdtempSync(join(tmpdir(), 'lodger-pol-'));
  writeFileSync(join(dir, 'a.yaml'), pool('a'));
  writeFileSync(join(dir, 'b.yaml'), `# another pool\n${pool('b')}`);
  const e = await t.throwsAsync(loadPolicyDir(dir), { instanceOf: PolicyError });
  t.is(e?.message, `${join(dir, 'b.yaml')}:3:7: a second BatchPool "b": only one BatchPool is supported (the first is "a" in ${join(dir, 'a.yaml')})`);
  t.is(e?.code, 'POLICY_INVALID');
});
