import test from 'ava';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryBudget } from './memory.ts';

const MiB = 1048576;

function host(): { proc: string; cgroupRoot: string } {
  const d = mkdtempSync(join(tmpdir(), 'lodger-mem-'));
  const proc = join(d, 'proc');
  mkdirSync(join(proc, 'pressure'), { recursive: true });
  writeFileSync(join(proc, 'meminfo'), 'MemTotal:       16384000 kB\nMemFree:         8192000 kB\nMemAvailable:   10240000 kB\n');
  writeFileSync(join(proc, 'vmstat'), 'workingset_refault_file 100\noom_kill 2\n');
  writeFileSync(join(proc, 'pressure', 'memory'), 'some avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n');
  return { proc, cgroupRoot: join(d, 'cgroup') };
}

test('v1 budget: limit minus usage plus inactive file cache; refaults, OOM kills and stalls over the last second (host PSI)', async (t) => {
  const h = host();
  const dir = join(h.cgroupRoot, 'memory', 'budget');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'memory.limit_in_bytes'), `${2048 * MiB}\n`);
  writeFileSync(join(dir, 'memory.usage_in_bytes'), `${1900 * MiB}\n`);
  writeFileSync(join(dir, 'memory.stat'), `cache 1\ntotal_inactive_file ${100 * MiB}\ntotal_workingset_refault_file 5000\n`);
  writeFileSync(join(dir, 'memory.oom_control'), 'oom_kill_disable 0\nunder_oom 0\noom_kill 3\n');
  let now = 0;
  const b = new MemoryBudget('/budget', h, () => now);
  const first = await b.read();
  t.is(first.availableBytes, 248 * MiB);
  t.is(first.totalBytes, 2048 * MiB);
  t.is(first.oomKills, 3);
  t.is(first.psiSource, 'host');
  t.is(first.someStallPct, null, 'no rate before a second has passed');
  now = 1000;
  writeFileSync(join(h.proc, 'pressure', 'memory'), 'some avg10=0.00 avg60=0.00 avg300=0.00 total=1250000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=100000\n');
  writeFileSync(join(dir, 'memory.stat'), `total_inactive_file ${100 * MiB}\ntotal_workingset_refault_file 7000\n`);
  const second = await b.read();
  t.is(second.someStallPct, 25);
  t.is(second.fullStallPct, 10);
  t.is(second.refaultsPerSec, 2000);
});

test('v2 budget: memory.max and memory.current, its own memory.pressure and memory.events; no budget: /proc/meminfo', async (t) => {
  const h = host();
  mkdirSync(join(h.cgroupRoot, 'budget'), { recursive: true });
  writeFileSync(join(h.cgroupRoot, 'cgroup.controllers'), 'cpu memory io\n');
  const dir = join(h.cgroupRoot, 'budget');
  writeFileSync(join(dir, 'memory.max'), 'max\n');
  writeFileSync(join(dir, 'memory.current'), `${1000 * MiB}\n`);
  writeFileSync(join(dir, 'memory.stat'), `inactive_file ${10 * MiB}\n`);
  writeFileSync(join(dir, 'memory.events'), 'low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n');
  writeFileSync(join(dir, 'memory.pressure'), 'some avg10=1.00 avg60=0.00 avg300=0.00 total=5\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n');
  const v2 = await new MemoryBudget('/budget', h).read();
  t.is(v2.totalBytes, 16384000 * 1024, 'an unlimited budget is the host\'s RAM');
  t.is(v2.availableBytes, 16384000 * 1024 - 990 * MiB);
  t.is(v2.oomKills, 1);
  t.is(v2.psiSource, 'cgroup');
  const own = await new MemoryBudget('', h).read();
  t.is(own.availableBytes, 10240000 * 1024);
  t.is(own.oomKills, 2);
  t.is(own.source, 'host');
});

test('a budget cgroup that is not there is an error, not a full budget', async (t) => {
  await t.throwsAsync(() => new MemoryBudget('/missing', host()).read(), { message: /not readable/ });
});
