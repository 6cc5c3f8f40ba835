// npm run bench:jobstart -- [--json] [--jobs N]
// Job start: from the scheduler admitting a job to its command handed to the guest,
// with a warm pool (a pre-booted sandbox is claimed) and without (the job boots its
// own), side by side in one run on real QEMU, the real job store and the real scheduler.
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { JobStore, Scheduler, WarmPool, type JobSpec, type JobStartEvent } from '../daemon/index.ts';
import { openRuntime } from '../sandbox-runtime/index.ts';
import { percentile as pct } from './services.ts';

const { values } = parseArgs({ options: { json: { type: 'boolean', default: false }, jobs: { type: 'string', default: '10' } } });
const jobs = Number(values.jobs);
const say = (m: string): void => { if (!values.json) console.error(m); };

const dir = mkdtempSync(join(tmpdir(), 'lodger-jobstart-'));
const { runtime, accel, cgroups } = await openRuntime({ host: { runDir: join(dir, 'run') }, cgroupParent: `lodger-bench-${process.pid}` });
const spec: JobSpec = {
  name: 'bench', command: ['true'], env: {}, rootfs: '', outputDir: '', vcpus: { min: 1, max: 2 }, memoryMiB: { min: 256, max: 512 },
  priority: 0, timeoutSeconds: 0, retries: 0,
};

let runs = 0;
async function measure(withPool: boolean, n: number): Promise<number[]> {
  const store = new JobStore(join(dir, `jobs-${runs++}.db`));
  const pool = withPool ? new WarmPool({ runtime, size: 1, shape: () => ({ maxVcpus: 2, maxMemoryMiB: 512 }) }) : null;
  const scheduler = new Scheduler({ store, runtime, maxRunning: () => 1, pool });
  const starts: number[] = [];
  scheduler.on('jobStart', (e: JobStartEvent) => { if (e.source === (withPool ? 'pool' : 'cold')) starts.push(e.ms); });
  scheduler.start();
  pool?.fill();
  try {
    for (let i = 0; i < n; i++) {
      // The pool refills in the background; a job is admitted once a sandbox waits in it.
      while (pool && pool.readyCount < 1) await new Promise((r) => setTimeout(r, 20));
      store.submit(`j${i}`, spec);
      void scheduler.pump();
      const job = await scheduler.waitFinal(`j${i}`);
      if (job.state !== 'succeeded') throw new Error(`job j${i} ${job.state}: ${job.error}`);
    }
  } finally {
    await scheduler.stop(true);
    await pool?.stop();
    store.close();
  }
  return starts;
}

try {
  const pool: number[] = [];
  const cold: number[] = [];
  // Interleaved rounds, so both see the same host conditions.
  for (let round = 0; round < 2; round++) {
    cold.push(...(await measure(false, Math.ceil(jobs / 4))));
    pool.push(...(await measure(true, Math.ceil(jobs / 2))));
    say(`round ${round + 1}: ${cold.length} cold, ${pool.length} warm starts so far`);
  }
  const row = (xs: number[]): { n: number; p50Ms: number; p90Ms: number; maxMs: number } => ({ n: xs.length, p50Ms: pct(xs, 50), p90Ms: pct(xs, 90), maxMs: Math.max(...xs) });
  const result = { date: new Date().toISOString(), accel: accel.accel, cpus: cpus().length, cpuModel: cpus()[0]?.model ?? '', pool: row(pool), cold: row(cold) };
  say(`job start (admitted -> command in the guest), ${accel.accel}:`);
  say(`  warm pool: p50 ${result.pool.p50Ms.toFixed(1)} ms, p90 ${result.pool.p90Ms.toFixed(1)} ms, max ${result.pool.maxMs.toFixed(1)} ms over ${pool.length} jobs`);
  say(`  cold boot: p50 ${result.cold.p50Ms.toFixed(1)} ms, p90 ${result.cold.p90Ms.toFixed(1)} ms over ${cold.length} jobs`);
  if (values.json) console.log(JSON.stringify(result, null, 2));
} finally {
  await cgroups?.removeParents();
  rmSync(dir, { recursive: true, force: true });
}
