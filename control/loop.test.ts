import test from 'ava';
import { spawnSync } from 'node:child_process';
import { cpus } from 'node:os';
import { ProcHostReader } from './loop.ts';

test('the host reader counts every host CPU, also from a process pinned to one of them', async (t) => {
  t.is((await new ProcHostReader().read()).cpus, cpus().length);
  if (cpus().length < 2 || spawnSync('taskset', ['-V']).error) {
    t.pass('needs two CPUs and taskset');
    return;
  }
  // A lodgerd pinned to a housekeeping CPU must still split all of them.
  const r = spawnSync('taskset', ['-c', '1', process.execPath, '--import', 'tsx', '-e',
    "import('./control/loop.ts').then(async (m) => console.log((await new m.ProcHostReader().read()).cpus))"], { encoding: 'utf8' });
  t.is(r.stdout.trim(), String(cpus().length), r.stderr);
});
