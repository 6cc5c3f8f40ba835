// v2 logic against a temp-dir tree shaped like /sys/fs/cgroup; v1 translation as pure data.
// The v1 backend runs against the real kernel in test/cgroup-v1.test.ts.
import test from 'ava';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Cgroup, CgroupManager, knobWritesV1, knobWritesV2 } from './index.ts';

function fakeV2(): { root: string; proc: string } {
  const base = mkdtempSync(join(tmpdir(), 'lodger-cg2-'));
  const root = join(base, 'cgroup');
  const proc = join(base, 'proc');
  mkdirSync(join(root, 'daemon.slice'), { recursive: true });
  mkdirSync(join(proc, 'self'), { recursive: true });
  writeFileSync(join(proc, 'self', 'cgroup'), '0::/daemon.slice\n');
  for (const d of [root, join(root, 'daemon.slice')]) {
    writeFileSync(join(d, 'cgroup.controllers'), 'cpuset cpu io memory hugetlb pids\n');
    writeFileSync(join(d, 'cgroup.subtree_control'), '');
  }
  return { root, proc };
}

test('v2: groups go below the own cgroup, controllers are enabled on the way down', async (t) => {
  const host = fakeV2();
  const m = new CgroupManager({ host, version: 2 });
  const cg = await m.create('sb-a');
  t.is(cg.dirs.get(''), join(host.root, 'daemon.slice', 'lodger', 'sb-a'));
  t.is(readFileSync(join(host.root, 'daemon.slice', 'cgroup.subtree_control'), 'utf8'), '+cpu +cpuset +memory +io +pids');
  t.deepEqual(cg.procsFiles, [join(host.root, 'daemon.slice', 'lodger', 'sb-a', 'cgroup.procs')]);
});

test('v2: knobs become files; unchanged values are not written again', async (t) => {
  const host = fakeV2();
  const cg = await new CgroupManager({ host, version: 2 }).create('sb-b');
  const dir = cg.dirs.get('')!;
  const first = await cg.apply({ cpuWeight: 1, cpus: '1', cpuMax: { quotaUs: 50000, periodUs: 100000 }, memoryMaxBytes: 1 << 30, pidsMax: null });
  t.deepEqual(first.map((w) => w.file), ['cpu.weight', 'cpuset.cpus', 'cpu.max', 'memory.max', 'pids.max']);
  t.is(readFileSync(join(dir, 'cpu.max'), 'utf8'), '50000 100000');
  t.is(readFileSync(join(dir, 'pids.max'), 'utf8'), 'max');
  t.deepEqual(await cg.apply({ cpuWeight: 1, cpus: '1' }), []);
  t.deepEqual(await cg.apply({ cpus: '0-1' }), [{ file: 'cpuset.cpus', value: '0-1' }]);
});

test('a cached value is checked against the file once it is old, and a drifted one rewritten', async (t) => {
  const made = await new CgroupManager({ host: fakeV2(), version: 2 }).create('sb-d');
  let now = 0;
  const cg = new Cgroup(2, made.dirs, () => now);
  const file = join(cg.dirs.get('')!, 'cpuset.cpus');
  t.deepEqual(await cg.apply({ cpus: '1', cpuIdle: true }), [{ file: 'cpu.idle', value: '1' }, { file: 'cpuset.cpus', value: '1' }]);
  writeFileSync(file, '0-1'); // someone else
  now = 5000;
  t.deepEqual(await cg.apply({ cpus: '1', cpuIdle: true }), [], 'fresh in the cache: not read');
  now = 11_000;
  t.deepEqual(await cg.apply({ cpus: '1', cpuIdle: true }), [{ file: 'cpuset.cpus', value: '1' }], 'old: read, found drifted, rewritten');
  t.is(readFileSync(file, 'utf8'), '1');
  writeFileSync(file, '1\n');
  now = 30_000;
  t.deepEqual(await cg.apply({ cpus: '1' }), [], 'read back the same (as the kernel prints it): nothing written');
});

test('cpu.idle: weights wait while idle and are rewritten when idle is cleared', async (t) => {
  const cg = await new CgroupManager({ host: fakeV2(), version: 2 }).create('sb-c');
  // Setting idle: the weight is not written (the kernel would refuse it).
  t.deepEqual(await cg.apply({ cpuWeight: 10, cpuIdle: true }), [{ file: 'cpu.idle', value: '1' }]);
  t.deepEqual(await cg.apply({ cpuWeight: 20 }), []);
  // Clearing idle: idle first, then the last weight asked for, since the kernel reset it.
  t.deepEqual(await cg.apply({ cpuIdle: false }), [{ file: 'cpu.idle', value: '0' }, { file: 'cpu.weight', value: '20' }]);
  t.deepEqual(await cg.apply({ cpuIdle: false, cpuWeight: 20 }), []);
  await cg.apply({ cpuIdle: true });
  t.deepEqual(await cg.apply({ cpuIdle: false }), [{ file: 'cpu.idle', value: '0' }, { file: 'cpu.weight', value: '20' }]);
});

test('v1 translation: weight to shares, quota, unlimited memory, io throttles', (t) => {
  const w = knobWritesV1({ cpuWeight: 100, cpuIdle: true, cpuMax: null, memoryMaxBytes: null, ioMax: [{ device: '8:0', rbps: 1000 }] });
  t.deepEqual(w.slice(0, 5), [
    { file: 'cpu/cpu.shares', value: '1024' },
    { file: 'cpu/cpu.idle', value: '1' },
    { file: 'cpu/cpu.cfs_period_us', value: '100000' },
    { file: 'cpu/cpu.cfs_quota_us', value: '-1' },
    { file: 'memory/memory.limit_in_bytes', value: '-1' },
  ]);
  t.deepEqual(w[5], { file: 'blkio/blkio.throttle.read_bps_device', value: '8:0 1000' });
  t.is(knobWritesV1({ cpuWeight: 1 })[0]!.value, '10');
  t.is(knobWritesV1({ cpuWeight: 0.01 })[0]!.value, '10', 'weights clamp to [1, 10000]');
  t.deepEqual(knobWritesV2({ ioMax: [{ device: '8:0', wiops: 50 }] }), [{ file: 'io.max', value: '8:0 rbps=max wbps=max riops=max wiops=50' }]);
});
