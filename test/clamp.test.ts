// The clamp's life through a real lodgerd, with real nginx, real sandboxes and the real
// cgroups of this kernel: a sandbox that starts during a breach has the clamp at once
// (its cgroup is born under the clamped pool parent, and its own knobs follow within a
// round); a policy reload and a kill -9 + restart of lodgerd during the breach keep it;
// it is released when the breach ends. Every process started here is stopped by pid.
import test from 'ava';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type ApiClient } from '../daemon/index.ts';
import { startNginx, TestDaemon, type Nginx } from '../bench/index.ts';

const dir = mkdtempSync(join(tmpdir(), 'lodger-clamp-'));
const socket = join(dir, 'lodgerd.sock');
const policyDir = join(dir, 'policies');
const parentName = `lodger-clamp-${process.pid}`;
// lodgerd lives in this process's cgroup; its sandboxes go below <that>/<parentName>.
const own = (h: string): string => readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.split(':')[1]!.split(',').includes(h))?.split(':')[2] ?? '/';
const parentDir = (h: 'cpuset' | 'cpu'): string => join('/sys/fs/cgroup', h, own(h), parentName);
let nginx: Nginx | null = null;
const lodgerd = new TestDaemon(socket, ['--config', join(dir, 'lodgerd.yaml'), '--state-dir', join(dir, 'state'), '--policy-dir', policyDir]);
let api: ApiClient | null = null;

const sandboxDirs = (): string[] => (existsSync(parentDir('cpuset')) ? readdirSync(parentDir('cpuset')).filter((d) => d.startsWith('sb-')) : []);
const knob = (h: 'cpuset' | 'cpu', sb: string | null, file: string): string => readFileSync(join(parentDir(h), sb ?? '', file), 'utf8').trim();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function policy(target: string): void {
  writeFileSync(join(policyDir, 'web.yaml'), `apiVersion: lodger.dev/v1
kind: OnlineService
metadata: { name: web }
spec:
  slo: { percentile: 99, target: ${target}, window: 500ms }
  probe: { http: { url: "${nginx!.url}" }, interval: 20ms, timeout: 200ms }
  cpus: "0"
  process: { pidFile: ${join(dir, 'nginx', 'nginx.pid')} }
---
apiVersion: lodger.dev/v1
kind: BatchPool
metadata: { name: pool }
spec:
  sandbox: { maxVcpus: 1, maxMemory: 256Mi }
  knobs: [cpuset, cpu.idle, cpu.weight]
  growth: { cooldown: 500ms, reverse: 1s, backoff: 1s, cpusetInterval: 1s }
`);
}

async function startDaemon(): Promise<void> {
  await lodgerd.start();
  api = connect(socket);
}

async function until<T>(f: () => T | undefined | false | Promise<T | undefined | false>, ms: number, step = 20): Promise<T | undefined> {
  const end = Date.now() + ms;
  for (;;) {
    let v: T | undefined | false;
    try { v = await f(); } catch { v = undefined; }
    if (v) return v;
    if (Date.now() > end) return undefined;
    await sleep(step);
  }
}

test.after.always(async () => {
  api?.close();
  if (lodgerd.running) lodgerd.proc!.kill('SIGKILL');
  // The VMMs lodgerd started, found by their cgroups (a stopped lodgerd keeps them on
  // purpose); one that was still being spawned joins its cgroup a moment later, so look
  // until the groups have stayed empty for a while, then remove them.
  let quietSince = Date.now();
  while (Date.now() - quietSince < 1500) {
    for (const sb of sandboxDirs()) {
      for (const pid of readFileSync(join(parentDir('cpuset'), sb, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) {
        quietSince = Date.now();
        try { process.kill(Number(pid), 'SIGKILL'); } catch { /* gone */ }
      }
    }
    await sleep(100);
  }
  for (const h of ['cpuset', 'cpu', 'cpuacct', 'memory', 'pids', 'blkio']) {
    const p = join('/sys/fs/cgroup', h, own(h), parentName);
    for (const sb of existsSync(p) ? readdirSync(p).filter((d) => d.startsWith('sb-')) : []) try { rmdirSync(join(p, sb)); } catch { /* busy or gone */ }
    try { rmdirSync(p); } catch { /* busy or gone */ }
  }
  await nginx?.stop();
});

test.serial('a sandbox started during a breach has the clamp at once; a policy reload and a lodgerd restart keep it; it is released when the breach ends', async (t) => {
  if (cpus().length < 2 || process.getuid?.() !== 0 || !existsSync('/sys/fs/cgroup/cpuset/tasks')) {
    t.pass('needs two CPUs, root and cgroup v1 cpuset (the CI hosts have them)');
    return;
  }
  mkdirSync(policyDir, { recursive: true });
  nginx = await startNginx(join(dir, 'nginx'), 0, 0);
  writeFileSync(join(dir, 'lodgerd.yaml'), `warmPoolSize: 0\nmaxRunningJobs: 4\nonSigterm: stop-sandboxes\nmetricsAddress: ""\ncgroupParent: ${parentName}\n`);
  policy('1us'); // no probe is that fast: a breach from the first sample
  await startDaemon();
  const job = { command: ['sh', '-c', 'while :; do sleep 1; done'], vcpus: { min: 1, max: 1 }, memoryMib: { min: 256, max: 256 } };
  await api!.call('SubmitJob', { id: 'a', spec: { name: 'a', ...job } });
  t.truthy(await until(async () => (await api!.call<{ state: string }>('GetJob', { id: 'a' })).state === 'running', 60_000, 200), 'job a runs');
  // The cpuset is escalated (a breach outlasting two windows): job a may run before it is.
  t.truthy(await until(() => knob('cpuset', null, 'cpuset.cpus') === '1', 5000), 'the pool parent is clamped');
  t.is(knob('cpu', null, 'cpu.idle'), '1');
  const [sbA] = sandboxDirs();
  t.truthy(await until(() => knob('cpuset', sbA!, 'cpuset.cpus') === '1' && knob('cpu', sbA!, 'cpu.idle') === '1', 2000), 'sandbox a clamped');

  // A second sandbox during the breach: born under the clamped parent.
  await api!.call('SubmitJob', { id: 'b', spec: { name: 'b', ...job } });
  const sbB = await until(() => sandboxDirs().find((d) => d !== sbA), 30_000, 5);
  t.truthy(sbB, 'sandbox b created');
  // A new v1 cpuset is empty (it takes no task) until it is given its parent's CPUs.
  t.is(await until(() => knob('cpuset', sbB!, 'cpuset.cpus') || false, 2000, 1), '1', 'its first cpuset is the clamp');
  await until(async () => (await api!.call<{ state: string }>('GetJob', { id: 'b' })).state === 'running', 60_000, 10);
  const runningAt = Date.now();
  t.truthy(await until(() => knob('cpu', sbB!, 'cpu.idle') === '1' && knob('cpu', sbB!, 'cpu.shares') !== '1024', 1000, 5), 'its own knobs too');
  t.log(`sandbox b had its own cpu.idle ${Date.now() - runningAt} ms after it ran`);
  t.true(Date.now() - runningAt < 400, 'within about one round of running');

  // Watch both sandboxes' cpusets through a reload and a restart: never released.
  const seen = new Set<string>();
  let watching = true;
  const watcher = (async () => { while (watching) { try { seen.add(`${knob('cpuset', sbA!, 'cpuset.cpus')}/${knob('cpuset', sbB!, 'cpuset.cpus')}/${knob('cpuset', null, 'cpuset.cpus')}`); } catch { /* mid-write */ } await sleep(10); } })();
  policy('2us');
  t.truthy(await until(() => lodgerd.log.includes('policies loaded (changed on disk)'), 5000), 'reloaded');
  await sleep(1500);
  await lodgerd.stop('SIGKILL');
  const stored = JSON.parse(readFileSync(join(dir, 'state', 'controller.json'), 'utf8')) as { level: number };
  t.is(stored.level, 3, 'the stored controller state says clamped');
  await startDaemon();
  t.truthy(await until(async () => (await api!.call<{ state: string }>('GetJob', { id: 'a' })).state === 'running', 10_000, 100), 'jobs taken up again');
  await sleep(1500);
  watching = false;
  await watcher;
  t.deepEqual([...seen], ['1/1/1'], 'the clamp held through the reload and the restart');

  // The breach ends: everything given back (after the short back-off this policy sets).
  policy('10s');
  // Released: the cpuset goes back to every CPU; cpu.idle is work-conserving and stays
  // (the pool's keepApplied default), on the sandboxes and on the parent.
  t.truthy(await until(() => knob('cpuset', sbA!, 'cpuset.cpus') === '0-1' && knob('cpuset', sbB!, 'cpuset.cpus') === '0-1' && knob('cpuset', null, 'cpuset.cpus') === '0-1', 30_000, 50),
    `released: a ${knob('cpuset', sbA!, 'cpuset.cpus')} idle ${knob('cpu', sbA!, 'cpu.idle')}, parent ${knob('cpuset', null, 'cpuset.cpus')}`);
  t.is(knob('cpu', sbA!, 'cpu.idle'), '1');
  t.is(knob('cpu', null, 'cpu.idle'), '1');

  for (const id of ['a', 'b']) await api!.call('CancelJob', { id }).catch(() => {});
  api!.close();
  api = null;
  await Promise.race([lodgerd.stop('SIGTERM'), sleep(15_000)]);
});
