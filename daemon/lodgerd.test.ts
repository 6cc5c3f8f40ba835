// The whole daemon on the in-memory runtime: start, a job to its exit, the API answering,
// taking up what a crashed lodgerd left, policy reloads, stop.
import test from 'ava';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeRuntime } from '../sandbox-runtime/testing.ts';
import { connect } from './cli/index.ts';
import { loadConfig } from './config.ts';
import { DEFAULT_POOL } from './default-pool.ts';
import { jobStateChanges } from './job-states.ts';
import { Lodgerd } from './lodgerd.ts';
import { JobStore, type JobSpec } from './store.ts';

const spec = (command: string[]): JobSpec => ({
  name: command[0]!, command, env: {}, rootfs: '', outputDir: '', vcpus: { min: 1, max: 2 }, memoryMiB: { min: 256, max: 512 },
  priority: 0, timeoutSeconds: 0, retries: 0,
});

type FakeCommand = NonNullable<NonNullable<ConstructorParameters<typeof FakeRuntime>[0]>['command']>;

const POOL = (name: string): string => `apiVersion: lodger.dev/v1
kind: BatchPool
metadata: { name: ${name} }
spec:
  sandbox: { maxVcpus: 2, maxMemory: 1Gi }
`;

function setup(command?: FakeCommand) {
  const dir = mkdtempSync(join(tmpdir(), 'lodgerd-unit-'));
  const policyDir = join(dir, 'policies');
  mkdirSync(policyDir);
  writeFileSync(join(dir, 'lodgerd.yaml'), 'warmPoolSize: 0\nmetricsAddress: ""\n');
  const config = loadConfig(join(dir, 'lodgerd.yaml'), { stateDir: join(dir, 'state'), socket: join(dir, 'lodgerd.sock'), policyDir });
  const runtime = new FakeRuntime(command ? { command } : {});
  const logs: string[] = [];
  const make = (): Lodgerd => new Lodgerd({
    config, version: '9.9.9-test', log: (m) => logs.push(m),
    openRuntime: async () => ({ runtime, accel: { accel: 'tcg', reason: 'fake' }, cgroups: null }),
    // 8 GiB (not 8 << 30, which is 0 in 32-bit JS shifts and read as a host out of memory:
    // the memory path suspended the job's sandbox, and SignalJob's test hung 1 run in 2).
    hostReader: { read: async () => ({ cpus: 2, cpuPressure: 0, memAvailableBytes: 8 * 2 ** 30 }) },
  });
  return { dir, config, runtime, logs, make };
}

test('a job runs to its exit on the fake runtime, the API answers, stop() ends it all', async (t) => {
  const { config, make } = setup();
  const d = make();
  await d.start();
  d.store.submit('a', spec(['echo', 'hi']));
  const job = await d.scheduler.waitFinal('a');
  t.is(job.state, 'succeeded');
  const client = connect(config.socket);
  const status = await client.call<{ version: string; accelerator: string }>('GetStatus', {});
  client.close();
  t.like(status, { version: '9.9.9-test', accelerator: 'tcg' });
  t.is(d.batchPool(), DEFAULT_POOL);
  await d.stop();
  await d.stop(); // idempotent
  t.throws(() => d.store.get('a'));
});

test('recoverOrphans: a sent command is taken up, a starting job is queued again, one without an exec id fails, a dead warm sandbox is removed', async (t) => {
  let finish!: () => void;
  const gate = new Promise<void>((r) => { finish = r; });
  const { config, runtime, logs, make } = setup(async (req, io) => {
    if (req.argv[0] === 'long') await gate;
    io.stdout(`${req.argv.join(' ')}\n`);
    return 0;
  });
  // What a crashed lodgerd leaves: a sandbox still running its command, and the store.
  const sb = await runtime.create({ id: 'job-long-1', vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 512 });
  await sb.start();
  const exec = await sb.exec({ argv: ['long'] });
  mkdirSync(config.stateDir, { recursive: true });
  const store = new JobStore(join(config.stateDir, 'jobs.db'));
  for (const id of ['long', 'early', 'lost']) store.submit(id, spec([id]));
  store.transition('long', 'starting', 'test', { attempts: 1, sandboxId: sb.id });
  store.transition('long', 'running', 'test', { attach: { sandboxId: sb.id, pid: null, execId: exec.id, logSeq: 0 } });
  store.transition('early', 'starting', 'test', { attempts: 1, sandboxId: 'job-early-1' });
  store.transition('lost', 'starting', 'test', { attempts: 1, sandboxId: 'job-lost-1' });
  store.transition('lost', 'running', 'test', { attach: { sandboxId: 'job-lost-1', pid: null, logSeq: 0 } });
  store.close();
  // A warm sandbox it left, holding no job.
  await (await runtime.create({ id: 'pool-dead', vcpus: 1, maxVcpus: 1, memoryMiB: 256, maxMemoryMiB: 256 })).start();

  const d = make();
  await d.start();
  t.false((await runtime.list()).some((x) => x.id === 'pool-dead'), 'the warm sandbox is shut down');
  t.true(logs.some((m) => m.includes(`job long: taking up sandbox ${sb.id}`)));
  t.is(d.store.get('lost').state, 'failed');
  t.regex(d.store.get('lost').transitions.at(-1)!.reason, /could not take the job up again: the command's id was not stored/);
  t.is(d.store.get('early').state, 'queued');
  finish();
  t.is((await d.scheduler.waitFinal('early')).state, 'succeeded'); // run once the slot is free
  const long = await d.scheduler.waitFinal('long');
  t.is(long.state, 'succeeded');
  t.is(Buffer.concat(d.store.logs('long').map((c) => c.data)).toString(), 'long\n');
  await d.stop();
});

test('reload(): a valid folder replaces the policy in the same loop (its state kept), an invalid one keeps it, two BatchPools are refused', async (t) => {
  const { config, logs, make } = setup();
  writeFileSync(join(config.policyDir, 'a.yaml'), POOL('small'));
  const d = make();
  t.teardown(() => d.stop());
  await d.start();
  t.is(d.batchPool().name, 'small');
  const first = d.controlLoop;
  writeFileSync(join(config.policyDir, 'a.yaml'), POOL('smaller'));
  await d.reload('test');
  t.is(d.batchPool().name, 'smaller');
  t.is(d.controlLoop, first, 'one loop: clamps and breach memory stay across a reload');
  t.is(d.controlLoop!.currentPolicy.pool.name, 'smaller');
  writeFileSync(join(config.policyDir, 'b.yaml'), POOL('second'));
  await d.reload('test');
  t.is(d.batchPool().name, 'smaller');
  t.regex(logs.at(-1)!, /policy not reloaded \(test\): .*b\.yaml:2:7: a second BatchPool "second": only one BatchPool is supported/);
});

test('the controller\'s pause, resume, suspend and restore move jobs; failed and other actions do not', (t) => {
  const r = (kind: 'pause' | 'resume' | 'suspend' | 'restore', ok = true) => ({ action: { kind, sandbox: `sb-${kind}`, reason: `why ${kind}` }, ok, ms: 0, detail: '' });
  const changes = jobStateChanges({
    results: [r('pause'), r('resume'), r('suspend'), r('restore'), r('pause', false),
      { action: { kind: 'knobs', sandbox: 'x', knobs: {}, reason: '' }, ok: true, ms: 0, detail: '' }],
  });
  t.deepEqual(changes.map((c) => `${c.sandbox} ${c.state} ${c.reason}`), [
    'sb-pause paused why pause', 'sb-resume running why resume', 'sb-suspend suspended why suspend', 'sb-restore running why restore',
  ]);
});

test('the built-in BatchPool takes its defaults from the policy parser', (t) => {
  t.like(DEFAULT_POOL, {
    name: 'default', source: '(built in)', reserve: { cpus: 1, memoryBytes: 1 << 30 },
    sandbox: { minVcpus: 1, maxVcpus: 4, minMemoryMiB: 256, maxMemoryMiB: 4096 },
    knobs: ['cpu.idle', 'cpuset', 'cpu.weight', 'pause'],
    growth: { cooldownMs: 5000, minSlack: 0.3, shrinkSlack: 0.1, memoryStepMiB: 256, maxCpuPressure: 50 },
  });
});

test('the API flooded: 1,000 concurrent submits and 100 watchers all answered, every job stored once and run, the daemon serves on, no listener left', async (t) => {
  const { config, make } = setup();
  const d = make();
  await d.start();
  const client = connect(config.socket);
  const base = d.scheduler.listenerCount('job');
  const watchers = Array.from({ length: 100 }, () => {
    const s = client.stream('WatchEvents', {});
    let n = 0;
    s.on('data', () => { n++; });
    s.on('error', () => {});
    return { s, seen: () => n };
  });
  try {
    const ids = await Promise.all(Array.from({ length: 1000 }, (_, i) =>
      client.call<{ id: string }>('SubmitJob', { id: `flood-${i}`, spec: { command: ['echo', String(i)] } }, 60_000).then((j) => j.id)));
    t.is(new Set(ids).size, 1000);
    await Promise.all(ids.map((id) => d.scheduler.waitFinal(id)));
    t.is(d.store.list(['succeeded'], 5000).length, 1000, 'each ran once, to its exit');
    const st = await client.call<{ jobsByState: Record<string, number> }>('GetStatus', {});
    t.is(st.jobsByState.succeeded, 1000);
    t.true(watchers.every((w) => w.seen() > 0), 'every watcher heard events');
  } finally {
    for (const w of watchers) w.s.cancel();
    await new Promise((r) => setTimeout(r, 200));
    t.is(d.scheduler.listenerCount('job'), base, 'no watcher listener left');
    client.close();
    await d.stop();
  }
});

test('runtime per job and per pool: stored resolved, shown by the API; a backend the runtime lacks fails the job with the reason; a bad name is INVALID_ARGUMENT', async (t) => {
  const { config, make, dir } = setup();
  const d = make();
  await d.start();
  const client = connect(config.socket);
  try {
    const base = { command: ['echo', 'hi'] };
    const plain = await client.call<{ id: string; backend: string; spec: { runtime: string } }>('SubmitJob', { id: 'plain', spec: base });
    t.like(plain, { backend: 'qemu', spec: { runtime: 'qemu' } }, 'the default, stored resolved');
    t.is((await d.scheduler.waitFinal('plain')).state, 'succeeded');
    // The fake runtime holds no gVisor backend: the job fails, saying why.
    await client.call('SubmitJob', { id: 'gv', spec: { ...base, runtime: 'gvisor' } });
    const gv = await d.scheduler.waitFinal('gv');
    t.is(gv.state, 'failed');
    t.regex(gv.error ?? '', /meant for the gvisor backend, not qemu/);
    const bad = await client.call('SubmitJob', { spec: { ...base, runtime: 'kata' } }).catch((e: Error & { grpcCode: number }) => e);
    t.like(bad, { grpcCode: 3 }, 'INVALID_ARGUMENT');
    t.regex((bad as Error).message, /spec\.runtime "kata": one of auto, qemu, gvisor/);
    // A pool policy naming gVisor is the default for jobs that name none.
    writeFileSync(join(dir, 'policies', 'pool.yaml'), `${POOL('gv')}  runtime: gvisor\n`);
    await d.reload('test');
    t.like(await client.call('SubmitJob', { id: 'pooled', spec: base }), { backend: 'gvisor' });
    t.like(await client.call('SubmitJob', { id: 'named', spec: { ...base, runtime: 'qemu' } }), { backend: 'qemu' });
  } finally {
    client.close();
    await d.stop();
  }
});

test('SignalJob: a bad signal is INVALID_ARGUMENT, an unknown job NOT_FOUND, one with no command running FAILED_PRECONDITION', async (t) => {
  let finish!: () => void;
  const gate = new Promise<void>((r) => { finish = r; });
  const { config, make } = setup(async (req) => {
    if (req.argv[0] === 'long') await gate;
    return 0;
  });
  const d = make();
  await d.start();
  const client = connect(config.socket);
  const code = (p: Promise<unknown>): Promise<number | undefined> => p.then(() => 0, (e: { grpcCode?: number }) => e.grpcCode);
  d.store.submit('long', spec(['long']));
  while (d.store.get('long').state !== 'running' || !d.scheduler.sandboxes().length) await new Promise((r) => setTimeout(r, 10));
  // Until the exec id is stored the command may not be running yet: wait for it.
  while (typeof d.store.get('long').attach?.execId !== 'number') await new Promise((r) => setTimeout(r, 10));
  t.is(await code(client.call('SignalJob', { id: 'long', signal: 0 })), 3);
  t.is(await code(client.call('SignalJob', { id: 'long', signal: 65 })), 3);
  t.is(await code(client.call('SignalJob', { id: 'nope', signal: 15 })), 5);
  t.is((await client.call<{ id: string }>('SignalJob', { id: 'long', signal: 15 })).id, 'long');
  finish();
  await d.scheduler.waitFinal('long');
  t.is(await code(client.call('SignalJob', { id: 'long', signal: 15 })), 9);
  client.close();
  await d.stop();
});
