// The sweep on the real cgroup tree: a parent named after a dead process loses its
// processes and cgroups; one named after a live process is left alone.
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sweepLeftovers } from './sweep.mjs';

const v1 = existsSync('/sys/fs/cgroup/cpu/cgroup.procs');
const hier = v1 ? '/sys/fs/cgroup/cpu' : '/sys/fs/cgroup';
const asRoot = process.getuid?.() === 0 && existsSync(join(hier, 'cgroup.procs')) ? test.serial : test.skip;

asRoot('a dead run\'s cgroup parent: its processes killed by pid, its cgroups removed; a live run\'s kept', async (t) => {
  const dead = spawnSync('true').pid!; // a pid whose process is gone
  const mine = join(hier, `lodger-sweeptest-${dead}`);
  const live = join(hier, `lodger-sweeptest-${process.pid}`);
  mkdirSync(join(mine, 'lodger-sb'), { recursive: true });
  mkdirSync(live, { recursive: true });
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  const exited = new Promise<string | null>((r) => child.once('exit', (_c, s) => r(s)));
  t.teardown(() => {
    try { process.kill(child.pid!, 'SIGKILL'); } catch { /* gone */ }
    for (const d of [join(mine, 'lodger-sb'), mine, live]) { try { rmdirSync(d); } catch { /* gone */ } }
  });
  writeFileSync(join(mine, 'lodger-sb', 'cgroup.procs'), String(child.pid));
  const said = await sweepLeftovers();
  t.true(said.some((l) => l.startsWith(`${mine}: 1 process(es) killed`)), said.join('\n'));
  t.is(await exited, 'SIGKILL');
  t.false(existsSync(mine));
  t.true(existsSync(live), 'a live run is not touched');
});
