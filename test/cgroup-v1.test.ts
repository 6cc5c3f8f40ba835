// The cgroup module against this kernel's real hierarchies (v1 here; v2 hosts run it on v2).
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CgroupManager, detectCgroupVersion } from '../sandbox-runtime/index.ts';

const version = detectCgroupVersion('/sys/fs/cgroup');
const runIf = version && process.getuid?.() === 0 ? test.serial : test.serial.skip;

runIf('a real group: join, knobs, usage, destroy with a process still inside', async (t) => {
  const mgr = new CgroupManager({ host: { root: '/sys/fs/cgroup', proc: '/proc' }, parent: `lodger-test-${process.pid}` });
  const cg = await mgr.create('cg1');
  const child = spawn('/bin/sh', ['-c', 'for f in $PROCS; do echo $$ > "$f"; done; exec sleep 30'], { env: { ...process.env, PROCS: cg.procsFiles.join(' ') }, stdio: 'ignore' });
  try {
    for (let i = 0; i < 100 && !(await cg.pids()).includes(child.pid!); i++) await new Promise((r) => setTimeout(r, 10));
    t.deepEqual(await cg.pids(), [child.pid]);
    const writes = await cg.apply({ cpuWeight: 50, cpus: '0', pidsMax: 64, memoryMaxBytes: 512 * 1048576, cpuMax: { quotaUs: 20000, periodUs: 100000 } });
    t.true(writes.length >= 6);
    if (mgr.version === 1) {
      t.is(await cg.readKnob('cpu/cpu.shares'), '512');
      await cg.apply({ cpuIdle: true });
      t.is(await cg.readKnob('cpu/cpu.idle'), '1');
      t.is(await cg.readKnob('cpu/cpu.shares'), '3', 'the kernel gives an idle group the idle weight');
      t.is(await cg.readKnob('cpuset/cpuset.cpus'), '0');
      await cg.apply({ cpus: '' });
      t.is(await cg.readKnob('cpuset/cpuset.cpus'), readFileSync(join(cg.dirs.get('cpuset')!, '..', 'cpuset.cpus'), 'utf8').trim(), '"" gives back the parent\'s CPUs');
      await cg.apply({ cpus: '0' });
      t.is(await cg.readKnob('cpu/cpu.cfs_quota_us'), '20000');
      t.is(await cg.readKnob('memory/memory.limit_in_bytes'), String(512 * 1048576));
      t.is(await cg.readKnob('pids/pids.max'), '64');
      // The kernel sees the process in the group in every hierarchy.
      const lines = readFileSync(`/proc/${child.pid}/cgroup`, 'utf8');
      for (const h of ['cpu', 'cpuset', 'pids']) t.regex(lines, new RegExp(`:${h}:.*/lodger-test-${process.pid}/cg1`));
    } else {
      t.is(await cg.readKnob('cpu.weight'), '50');
      await cg.apply({ cpuIdle: true });
      t.is(await cg.readKnob('cpu.max'), '20000 100000');
    }
    t.deepEqual(await cg.apply({ cpuWeight: 50 }), [], 'unchanged knob not rewritten');
    const u = await cg.usage();
    t.true(u.memoryBytes > 0);
    await cg.destroy();
    t.false([...cg.dirs.values()].some((d) => existsSync(d)));
    t.not(child.exitCode ?? child.signalCode, undefined);
  } finally {
    child.kill('SIGKILL');
    await mgr.removeParents();
  }
});

(version ? test : test.skip)('the manager refuses names that could escape the parent', async (t) => {
  const mgr = new CgroupManager({ host: { root: '/sys/fs/cgroup', proc: '/proc' }, parent: `lodger-test-${process.pid}` });
  await t.throwsAsync(mgr.create('../evil'), { message: /bad cgroup name/ });
  await mgr.removeParents();
  t.false(existsSync(join('/sys/fs/cgroup/cpu', '..', 'evil')));
});

runIf('two groups created at once under a new parent both get CPUs (v1 cpuset) and take a process', async (t) => {
  const mgr = new CgroupManager({ host: { root: '/sys/fs/cgroup', proc: '/proc' }, parent: `lodger-race-${process.pid}` });
  const [a, b] = await Promise.all([mgr.create('a'), mgr.create('b')]);
  try {
    if (mgr.version === 1) {
      t.not(await a.readKnob('cpuset/cpuset.cpus'), '');
      t.not(await b.readKnob('cpuset/cpuset.cpus'), '');
    }
    for (const cg of [a, b]) {
      const child = spawn('/bin/sh', ['-c', 'for f in $PROCS; do echo $$ > "$f" || exit 125; done; exit 0'], { env: { ...process.env, PROCS: cg.procsFiles.join(' ') }, stdio: 'ignore' });
      t.is(await new Promise((r) => child.once('exit', r)), 0, 'the process joined every hierarchy');
    }
  } finally {
    await a.destroy();
    await b.destroy();
    await mgr.removeParents();
  }
});
