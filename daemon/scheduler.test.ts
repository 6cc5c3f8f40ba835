// The scheduler with the in-memory sandbox (same contract as QEMU's) and the real store.
import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeRuntime } from '../sandbox-runtime/testing.ts';
import { WarmPool } from './pool.ts';
import { Scheduler, type JobStartEvent } from './scheduler.ts';
import { JobStore, type JobSpec } from './store.ts';

const spec = (command: string[], extra: Partial<JobSpec> = {}): JobSpec => ({
  name: command[0]!, command, env: {}, rootfs: '', outputDir: '', vcpus: { min: 1, max: 2 }, memoryMiB: { min: 256, max: 512 },
  priority: 0, timeoutSeconds: 0, retries: 0, ...extra,
});

function setup(maxRunning = 1) {
  const store = new JobStore(join(mkdtempSync(join(tmpdir(), 'lodger-sched-')), 'jobs.db'));
  let attemptsOfFlaky = 0;
  const started: string[] = [];
  const runtime = new FakeRuntime({
    command: async (req, io) => {
      started.push(req.argv[0]!);
      if (req.argv[0] === 'flaky') return ++attemptsOfFlaky < 2 ? 1 : 0;
      if (req.argv[0] === 'sleep') { await new Promise((r) => setTimeout(r, Number(req.argv[1]))); return 0; }
      io.stdout(`out of ${req.argv.join(' ')}\n`);
      io.stderr('err\n');
      return Number(req.argv[1] ?? 0);
    },
  });
  const s = new Scheduler({ store, runtime, maxRunning: () => maxRunning });
  return { store, runtime, s, started };
}

test('priority order, exit codes, output stored, retries until success', async (t) => {
  const { store, s, started } = setup();
  store.submit('low', spec(['echo', '0']));
  store.submit('high', spec(['echo', '3'], { priority: 9 }));
  store.submit('flaky', spec(['flaky'], { retries: 2 }));
  s.start();
  const [low, high, flaky] = await Promise.all(['low', 'high', 'flaky'].map((id) => s.waitFinal(id)));
  await s.stop(false);
  t.is(started[0], 'echo');
  t.is(high!.state, 'failed');
  t.is(high!.exitCode, 3);
  t.is(low!.state, 'succeeded');
  t.deepEqual(store.logs('low').map((l) => [l.stream, l.data.toString()]), [['stdout', 'out of echo 0\n'], ['stderr', 'err\n']]);
  t.is(flaky!.state, 'succeeded');
  t.is(flaky!.attempts, 2);
  t.true(flaky!.transitions.some((x) => x.state === 'queued' && /attempt 1 failed \(exit 1\); retrying/.test(x.reason)));
});

test('a timeout fails the job; cancel stops a queued or running one', async (t) => {
  const { store, s } = setup(1);
  store.submit('slow', spec(['sleep', '60000'], { timeoutSeconds: 1 }));
  store.submit('waiting', spec(['echo']));
  s.start();
  const slow = await s.waitFinal('slow');
  t.is(slow.state, 'failed');
  t.regex(slow.transitions.at(-1)!.reason, /timed out after 1 s/);
  store.submit('queued-then-cancelled', spec(['sleep', '60000']));
  await s.cancel('queued-then-cancelled', 'no longer needed');
  t.is(store.get('queued-then-cancelled').state, 'cancelled');
  await s.stop(true);
});

test('a job that fits takes a warm sandbox from the pool, claimed with its limits; one with a rootfs boots its own', async (t) => {
  const store = new JobStore(join(mkdtempSync(join(tmpdir(), 'lodger-sched-')), 'jobs.db'));
  const runtime = new FakeRuntime();
  const pool = new WarmPool({ runtime, size: 1, shape: () => ({ maxVcpus: 4, maxMemoryMiB: 1024 }) });
  const s = new Scheduler({ store, runtime, maxRunning: () => 1, pool });
  const starts: JobStartEvent[] = [];
  s.on('jobStart', (e: JobStartEvent) => starts.push(e));
  pool.fill();
  while (pool.readyCount < 1) await new Promise((r) => setTimeout(r, 5));
  store.submit('warm', spec(['echo'], { outputDir: '/tmp/x', vcpus: { min: 2, max: 3 } }));
  s.start();
  t.is((await s.waitFinal('warm')).state, 'succeeded');
  const warm = runtime.sandboxes.find((x) => x.id === store.get('warm').sandboxId)!;
  t.regex(warm.id, /^pool-/);
  t.deepEqual({ outputDir: warm.outputDir, ...warm.limits }, { outputDir: '/tmp/x', maxVcpus: 3, maxMemoryMiB: 512 });
  t.is(warm.updates.at(-1)?.vcpus, 2, 'resized to the job\'s minimum');
  store.submit('own-root', spec(['echo'], { rootfs: '/tmp/root' }));
  t.is((await s.waitFinal('own-root')).state, 'succeeded');
  t.regex(store.get('own-root').sandboxId, /^job-own-root-1$/);
  t.deepEqual(starts.map((e) => e.source), ['pool', 'cold']);
  await s.stop(true);
  await pool.stop();
  t.true(runtime.sandboxes.every((x) => x.state === 'stopped'), 'pool sandboxes stopped with the pool');
});

test('a job\'s state follows the controller pausing, suspending and restoring its sandbox, each with the reason', async (t) => {
  const { store, s } = setup();
  store.submit('p', spec(['sleep', '600']));
  s.start();
  while (store.get('p').state !== 'running' || s.sandboxes().length === 0) await new Promise((r) => setTimeout(r, 5));
  const sb = s.sandboxes()[0]!.sandbox.id;
  s.sandboxState(sb, 'paused', 'breach: pause');
  s.sandboxState(sb, 'suspended', 'memory pressure: suspend');
  s.sandboxState(sb, 'running', 'room again: restore');
  s.sandboxState('no-such-sandbox', 'paused', 'ignored');
  t.is((await s.waitFinal('p')).state, 'succeeded');
  const states = store.get('p').transitions.map((x) => `${x.state}: ${x.reason}`);
  t.deepEqual(states.slice(3, 6), ['paused: breach: pause', 'suspended: memory pressure: suspend', 'running: room again: restore']);
  t.is(states.at(-1), 'succeeded: exit 0');
  await s.stop(true);
});

test('output past the per-job log limit is dropped with a marker in the log and a reason on the job; the job runs to its exit', async (t) => {
  const store = new JobStore(join(mkdtempSync(join(tmpdir(), 'lodger-sched-')), 'jobs.db'));
  const runtime = new FakeRuntime({
    command: async (_req, io) => {
      for (let i = 0; i < 100; i++) io.stdout('x'.repeat(999) + '\n'); // 100 kB
      io.stderr('done\n');
      return 0;
    },
  });
  const s = new Scheduler({ store, runtime, maxRunning: () => 1, logLimitBytes: 10_000 });
  store.submit('flood', spec(['flood']));
  s.start();
  const job = await s.waitFinal('flood');
  await s.stop(false);
  const logs = store.logs('flood');
  const stored = logs.filter((l) => l.stream === 'stdout').reduce((n, l) => n + l.data.length, 0);
  t.is(stored, 10_000, 'stdout stored up to the limit, not a byte more');
  t.regex(logs.filter((l) => l.stream === 'stderr').map((l) => l.data.toString()).join(''), /\[lodger: output limit of 10000 bytes reached \(jobLogMaxBytes\); further output of this job is dropped\]/);
  t.false(logs.some((l) => l.data.toString() === 'done\n'), 'what came after the limit is not stored');
  t.is(job.state, 'succeeded');
  t.regex(job.transitions.at(-1)!.reason, /^exit 0; SANDBOX_OUTPUT_LIMIT: output past 10000 bytes dropped \(90005 bytes\)$/);
  t.regex(job.error, /SANDBOX_OUTPUT_LIMIT/);
});
