import test from 'ava';
import { FakeRuntime } from './testing.ts';
import { VmmExitedError } from './errors.ts';

const spec = { id: 'f1', vcpus: 1, maxVcpus: 4, memoryMiB: 256, maxMemoryMiB: 1024 };

test('the fake follows the contract: lifecycle, resize bounds, output, crash', async (t) => {
  const rt = new FakeRuntime({ command: (req, io) => { io.stdout(`ran ${req.argv[0]}`); return 2; } });
  await t.throwsAsync(rt.create({ ...spec, id: 'bad id' }), { message: /id/ });
  const sb = await rt.create(spec);
  await t.throwsAsync(sb.exec({ argv: ['x'] }), { message: /created/ });
  await sb.start();
  const h = await sb.exec({ argv: ['job'] });
  let out = '';
  h.onStdout((b) => { out += b; });
  t.deepEqual(await h.wait(), { code: 2, signal: null });
  t.is(out, 'ran job');
  t.is((await sb.update({ vcpus: 3, memoryMiB: 512 })).vcpus, 3);
  await t.throwsAsync(sb.update({ vcpus: 5 }), { message: /vcpus/ });
  t.deepEqual(sb.status().vcpus, 3);
  const pending = new FakeRuntime({ command: () => new Promise(() => {}) });
  const hung = await pending.create({ ...spec, id: 'f3' });
  await hung.start();
  const job = await hung.exec({ argv: ['forever'] });
  hung.crash();
  await t.throwsAsync(job.wait(), { instanceOf: VmmExitedError });
  t.is((await hung.wait()).signal, 'SIGKILL');
  await t.throwsAsync(hung.update({ vcpus: 2 }), { instanceOf: VmmExitedError });
});

test('an injected resize failure reports the state left behind', async (t) => {
  const sb = await new FakeRuntime({ failUpdateAt: 2 }).create(spec);
  await sb.start();
  await sb.update({ vcpus: 2 });
  const e = await t.throwsAsync(sb.update({ vcpus: 4 }));
  t.deepEqual((e as unknown as { actual: unknown }).actual, { vcpus: 2, memoryMiB: 256 });
});

test('the fake enforces the shared update rules: caps from update({ limits }), the 2 MiB step, an /output disk for outputDir', async (t) => {
  const rt = new FakeRuntime();
  const sb = await rt.create({ ...spec, id: 'f4', outputDisk: true });
  await sb.start();
  await t.throwsAsync(sb.update({ memoryMiB: 257 }), { message: /2 MiB/ });
  await sb.update({ limits: { maxVcpus: 2, maxMemoryMiB: 512 }, outputDir: '/tmp/o' });
  t.is(sb.outputDir, '/tmp/o');
  t.is(sb.status().maxVcpus, 2);
  await t.throwsAsync(sb.update({ vcpus: 3 }), { message: /vcpus must be in \[1, 2\]/ });
  const plain = await rt.create({ ...spec, id: 'f5' });
  await plain.start();
  await t.throwsAsync(plain.update({ outputDir: '/tmp/o' }), { message: /without an \/output disk/ });
});

test('the fake lists what is left and shuts it down idempotently', async (t) => {
  const rt = new FakeRuntime();
  const a = await rt.create({ ...spec, id: 'a' });
  await a.start();
  const b = await rt.create({ ...spec, id: 'b' });
  await b.start();
  b.crash();
  t.deepEqual(await rt.list(), [{ id: 'a', pid: null, state: 'running', alive: true }, { id: 'b', pid: null, state: 'failed', alive: false }]);
  await rt.shutdown('a');
  await rt.shutdown('a');
  await rt.shutdown('nope');
  t.deepEqual((await rt.list()).map((x) => x.id), ['b']);
  await t.throwsAsync(rt.attach('a'), { message: /not running/ });
  t.is((await a.wait()).signal, 'SIGKILL');
});
