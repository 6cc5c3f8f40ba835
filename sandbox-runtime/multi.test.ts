import test from 'ava';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MultiRuntime } from './multi.ts';
import { FakeRuntime } from './testing.ts';

const spec = (id: string, backend?: 'qemu' | 'gvisor') => ({ id, vcpus: 1, maxVcpus: 1, memoryMiB: 256, maxMemoryMiB: 256, ...(backend ? { backend } : {}) });

function setup(gvisorOpen: () => Promise<FakeRuntime> = async () => new FakeRuntime({ backend: 'gvisor' })) {
  const dir = mkdtempSync(join(tmpdir(), 'lodger-multi-'));
  const qemu = new FakeRuntime();
  let opens = 0;
  const runDir = join(dir, 'run-gvisor');
  const multi = new MultiRuntime(qemu, { qemu: { runDir: join(dir, 'run'), open: async () => qemu }, gvisor: { runDir, open: () => { opens++; return gvisorOpen(); } } });
  return { dir, qemu, multi, runDir, opens: () => opens, done: () => rmSync(dir, { recursive: true, force: true }) };
}

test('a spec without a backend goes to the default; one naming gVisor opens gVisor once, on first use', async (t) => {
  const h = setup();
  t.is(h.multi.backend, 'qemu');
  t.is((await h.multi.create(spec('a'))).status().backend, 'qemu');
  t.is(h.opens(), 0, 'not opened for a default job');
  t.is((await h.multi.create(spec('b', 'gvisor'))).status().backend, 'gvisor');
  await h.multi.create(spec('c', 'gvisor'));
  t.is(h.opens(), 1);
  t.deepEqual((await h.multi.list()).map((s) => s.id).sort(), ['a', 'b', 'c']);
  h.done();
});

test('a backend that cannot be opened fails the create with the reason, and is tried again next time', async (t) => {
  let fail = true;
  const h = setup(async () => {
    if (fail) throw new Error('runsc not found');
    return new FakeRuntime({ backend: 'gvisor' });
  });
  const e = await t.throwsAsync(h.multi.create(spec('a', 'gvisor')));
  t.like(e, { code: 'SANDBOX_BAD_SPEC' });
  t.regex(e!.message, /gvisor backend cannot be opened: runsc not found/);
  fail = false;
  t.is((await h.multi.create(spec('a', 'gvisor'))).status().backend, 'gvisor');
  h.done();
});

test('attach and shutdown find a sandbox in whichever backend holds it; an unopened backend is opened only when its run directory holds something', async (t) => {
  const gv = new FakeRuntime({ backend: 'gvisor' });
  const h = setup(async () => gv);
  await (await h.multi.create(spec('q'))).start();
  t.deepEqual((await h.multi.list()).map((s) => s.id), ['q']);
  t.is(h.opens(), 0, 'empty run directory: gVisor not opened for list()');
  // An earlier lodgerd's gVisor sandbox: its run directory holds it.
  await (await gv.create(spec('g', 'gvisor'))).start();
  mkdirSync(join(h.runDir, 'g'), { recursive: true });
  t.deepEqual((await h.multi.list()).map((s) => s.id).sort(), ['g', 'q']);
  t.is(h.opens(), 1);
  t.is((await h.multi.attach('g')).status().backend, 'gvisor');
  t.is((await h.multi.attach('q')).status().backend, 'qemu');
  await h.multi.shutdown('g');
  t.is(gv.sandboxes[0]!.state, 'stopped');
  t.is(h.qemu.sandboxes[0]!.state, 'running', 'the other backend\'s sandbox untouched');
  await t.throwsAsync(h.multi.attach('nothing'), { message: /not running any more/ });
  h.done();
});

test('a backend refuses a spec meant for another', async (t) => {
  const e = await t.throwsAsync(new FakeRuntime().create(spec('x', 'gvisor')));
  t.regex(e!.message, /meant for the gvisor backend, not qemu/);
});
