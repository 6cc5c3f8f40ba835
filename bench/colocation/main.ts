// npm run bench:colocation -- [--rounds N] [--seconds N] [--loads 20,40,60,80] [--services nginx,redis] [--out DIR] [--no-docs] [--runtime auto|qemu|gvisor]
// The colocation benchmark: online services from Debian (nginx with a small static page,
// redis) under fixed-rate load, next to the same batch jobs in sandboxes, under each
// setting an operator could choose, interleaved in repeated rounds so that they share the
// host's conditions (these machines are noisy; the report takes the median per cell):
//   solo         the service alone;
//   static       batch pinned off the service's CPUs (the plain alternative);
//   static-idle  the same plus cpu.idle (the best fixed pair measured here);
//   idle-all     cpu.idle, batch on every CPU;
//   unmanaged    batch on every CPU, nothing done;
//   lodger       the batch jobs under a real lodgerd whose SLO is what the static split
//                gives: `slo-multiple` x the p99 its probe saw over the latest static
//                cell at that load (the tail an operator choosing the static split
//                accepts), held over every 1-s window.
//                lodgerd gets `settle` seconds at a new load before the cell is measured,
//                as a controller at steady load would have had; load steps are measured
//                by the step scenario. lodgerd runs on the batch CPUs (housekeeping), as
//                it would in production; the direct scenarios have no daemon at all.
// Batch not in the current scenario takes no CPU: the direct sandboxes are paused (QMP
// stop), lodgerd and its VMMs are stopped by their pids (SIGSTOP) and continued after.
// Then load steps (40% -> 80% -> 40% of capacity, and 20-80-20) under lodgerd and under the static
// split: time from the step to the first clamp, to the tail back under target, bad windows.
// The load generator runs with the service, on its CPU: it stands in for the online tier's
// clients, and on the other CPU it would take from exactly the batch CPU the static split
// gives batch (skewing the comparison against it). Writes colocation.json and two PNG
// charts to --out, and the report to docs/BENCHMARKS.md. Everything is stopped by pid.
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { chooseBackend, type RuntimeRequest } from '../../sandbox-runtime/index.ts';
import { startNginx, startRedis } from '../services.ts';
import { JOBS, startDaemon, startDirect, type DaemonBatch, type DirectBatch } from './batch.ts';
import { measureCell, type Cell, type Scenario, type Service } from './cell.ts';
import { measureCapacity, type Capacity } from './load.ts';
import { report, type StepResult } from './report.ts';
import { policyYaml as policy } from './policy.ts';
import { loadStep } from './step.ts';
import { passableTmpDir } from '../tmp.ts';

const root = join(import.meta.dirname, '..', '..');
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '2' },
    seconds: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '2' },
    // A cpuset may change once per 30 s (cpusetInterval): after a clamp, giving it back takes that long.
    settle: { type: 'string', default: '35' },
    multiple: { type: 'string', default: '1.1' },
    // lodgerd's SLO: this x the static split's p99 as its probe saw it over the cell. On
    // 2026-12-01 it was 1.1 x the static split's median 1-s window, a target the static
    // split itself missed in a third of its windows, so lodgerd spent cells clamped.
    'slo-multiple': { type: 'string', default: '1.0' },
    loads: { type: 'string', default: '20,40,60,80' },
    out: { type: 'string', default: join(root, 'docs', 'colocation') },
    services: { type: 'string', default: 'nginx,redis' },
    // Solo always runs (the others are measured against it); a subset is for trying things.
    scenarios: { type: 'string', default: 'static,lodger,unmanaged,static-idle,idle-all' },
    step: { type: 'boolean', default: true },
    // low-high pairs: 40-80 as the issue asks; 20-80 starts where lodgerd gives the cpuset back.
    steps: { type: 'string', default: '40-80,20-80' },
    'no-docs': { type: 'boolean', default: false },
    // The batch sandboxes' backend in every scenario: auto is this host's choice (lodger doctor says why).
    runtime: { type: 'string', default: 'auto' },
  },
});
const ROUNDS = Number(values.rounds);
const SECONDS = Number(values.seconds);
const WARMUP = Number(values.warmup);
const SETTLE = Number(values.settle);
const MULTIPLE = Number(values.multiple);
const SLO_MULTIPLE = Number(values['slo-multiple']);
const LOADS = values.loads.split(',').map(Number);
if (!['auto', 'qemu', 'gvisor'].includes(values.runtime)) throw new Error(`--runtime ${values.runtime}: auto, qemu or gvisor`);
const backend = await chooseBackend(values.runtime as RuntimeRequest);
const SERVICE_CPU = 0;
const LOAD_CPU = SERVICE_CPU;
const ALL_CPUS = `0-${cpus().length - 1}`;
const BATCH_CPUS = cpus().length > 1 ? `1-${cpus().length - 1}` : '0';
const FIXED: Record<Exclude<Scenario, 'solo' | 'lodger'>, { cpus: string; cpuIdle: boolean }> = {
  static: { cpus: BATCH_CPUS, cpuIdle: false }, 'static-idle': { cpus: BATCH_CPUS, cpuIdle: true },
  'idle-all': { cpus: ALL_CPUS, cpuIdle: true }, unmanaged: { cpus: ALL_CPUS, cpuIdle: false },
};
const t0 = Date.now();
const say = (m: string): void => console.error(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${m}`);
say(`batch sandboxes: ${backend.backend} (${backend.reason})`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const policyYaml = (svc: Service, targetMs: number): string => policy(svc, targetMs, String(SERVICE_CPU));

const cells: Cell[] = [];
const steps: StepResult[] = [];
const capacities: Record<string, Capacity> = {};
let alone: Record<string, number> = {};
const dir = passableTmpDir('lodger-coloc-');
const services: Service[] = [];
let direct: DirectBatch | null = null;
let daemon: DaemonBatch | null = null;
let failed = false;
const cleanup = async (): Promise<void> => {
  await daemon?.stop().catch(() => {});
  await direct?.stop().catch(() => {});
  await Promise.all(services.map((s) => s.stop().catch(() => {})));
  rmSync(dir, { recursive: true, force: true });
};
// Stopped early (Ctrl-C, a timeout), everything it started is still stopped by pid.
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => { console.error(`${sig}: stopping`); void cleanup().finally(() => process.exit(130)); });
try {
  const wanted = values.services.split(',');
  if (wanted.includes('nginx')) {
    const n = await startNginx(join(dir, 'nginx'), 0, SERVICE_CPU);
    services.push({ name: 'nginx', target: { kind: 'nginx', url: n.url }, probe: { kind: 'http', url: n.url, method: 'GET', intervalMs: 20, timeoutMs: 200 }, pidFile: join(dir, 'nginx', 'nginx.pid'), stop: () => n.stop() });
  }
  if (wanted.includes('redis')) {
    const r = await startRedis(dir, SERVICE_CPU);
    const pidFile = join(dir, 'redis.pid');
    writeFileSync(pidFile, `${r.pid}\n`);
    services.push({ name: 'redis', target: { kind: 'redis', port: r.port }, probe: { kind: 'redis', host: '127.0.0.1', port: r.port, intervalMs: 20, timeoutMs: 200 }, pidFile, stop: () => r.stop() });
  }
  say('capacity: fixed rates up to the closed-loop ceiling, until p99 bends (3x the lowest p99 of the lighter rates); the generator on the service\'s CPU');
  for (const svc of services) {
    capacities[svc.name] = await measureCapacity(svc.target, LOAD_CPU, 4);
    const c = capacities[svc.name]!;
    say(`${svc.name}: ceiling ${c.ceilingRps.toFixed(0)} req/s, capacity ${c.capacityRps} req/s (${c.steps.map((s) => `${s.rps}: p99 ${s.p99Ms.toFixed(2)} ms`).join('; ')})`);
  }

  const scenarios = values.scenarios.split(',') as Scenario[];
  direct = await startDirect(dir, 'direct', backend.backend);
  say('batch alone: the jobs with nothing else running');
  await sleep(8000); // the memory job fills its buffer first
  const a0 = Date.now();
  await sleep(15_000);
  alone = direct.units.rates(a0, Date.now());
  say(`batch alone: ${JOBS.map((j) => `${j.name} ${alone[j.name]!.toFixed(2)} units/s`).join(', ')}`);
  await direct.pause();
  if (scenarios.includes('lodger')) {
    daemon = await startDaemon(dir, 'lodger', policyYaml(services[0]!, 1000), BATCH_CPUS, backend.backend);
    daemon.freeze();
  }

  const rps = (svc: Service, l: number): number => Math.max(1, Math.round((capacities[svc.name]!.capacityRps * l) / 100));
  const staticProbe: Record<string, number> = {};
  // Before the first static cell at a load, the solo probe stands in (a tighter SLO).
  const soloProbe: Record<string, number> = {};
  const policyTarget = (key: string): number => SLO_MULTIPLE * (staticProbe[key] ?? soloProbe[key]!);
  for (let round = 1; round <= ROUNDS; round++) {
    // Each round starts the order one scenario later, so no scenario always follows the same one.
    const order = scenarios.map((_, i) => scenarios[(i + round - 1) % scenarios.length]!);
    for (const svc of services) {
      for (const l of LOADS) {
        for (const scenario of ['solo' as const, ...order]) {
          const key = `${svc.name}/${l}`;
          const decisionsFrom = daemon?.decisions.length ?? 0;
          // lodgerd is continued once the cell's load runs, and reloads the new policy then.
          if (scenario === 'lodger') daemon!.setPolicy(policyYaml(svc, policyTarget(key)));
          else if (scenario !== 'solo') {
            await direct.set(FIXED[scenario]);
            await direct.resume();
          }
          const c = await measureCell({
            svc, scenario, loadPct: l, round, rps: rps(svc, l), seconds: SECONDS, warmup: WARMUP, loadCpu: LOAD_CPU,
            batch: scenario === 'solo' ? null : scenario === 'lodger' ? daemon : direct, daemon: scenario === 'lodger' ? daemon : null, alone,
            ...(scenario === 'lodger' ? { policyTargetMs: policyTarget(key), decisionsFrom, settle: SETTLE, started: () => daemon!.thaw() } : {}),
          });
          if (scenario === 'solo') soloProbe[key] = c.probeCellP99Ms!;
          if (scenario === 'static') staticProbe[key] = c.probeCellP99Ms!;
          if (scenario === 'lodger') daemon!.freeze();
          else if (scenario !== 'solo') await direct.pause();
          cells.push(c);
          say(`round ${round} ${svc.name} ${String(l).padStart(2)}% ${scenario.padEnd(11)}: ${c.rps} req/s, p99 ${c.p99Ms.toFixed(2)} ms (windows: median ${c.windowMedianMs.toFixed(2)}), batch ${(c.batchRelative * 100).toFixed(0)}%` +
            (c.daemonCpu !== null ? `, lodgerd ${(c.daemonCpu * 100).toFixed(1)}% of a CPU, ${c.clamps} clamps, ${c.directionChanges} direction / ${c.cpusetChanges} cpuset changes, holding [${c.appliedAtEnd?.join(', ') ?? '?'}]` : ''));
          if (c.timeline?.length) say(`  lodgerd: ${c.timeline.map((x) => `${x.s.toFixed(1)} s ${x.reason}`).join(' | ')}`);
          // Why it held: each kind of reason once (numbers aside), where it was first given.
          const kinds = new Map<string, string>();
          for (const x of c.reasons ?? []) { const k = x.reason.replace(/[\d.]+/g, '#'); if (!kinds.has(k)) kinds.set(k, `${x.s.toFixed(0)} s ${x.reason}`); }
          if (kinds.size) say(`  lodgerd said: ${[...kinds.values()].join(' | ')}`);
        }
      }
    }
  }

  const stepShapes = values.steps.split(',').map((x) => x.split('-').map(Number) as [number, number]);
  if (values.step && daemon) {
    for (const [low, high] of stepShapes) {
      if (!LOADS.includes(low) || !LOADS.includes(high)) {
        say(`load step ${low}->${high}: skipped, both loads must be among --loads (their static cells set the step's SLO)`);
        continue;
      }
      for (const svc of services) {
        // One SLO for the whole step, one the static split meets at both loads (its higher p99).
        const target = Math.max(policyTarget(`${svc.name}/${low}`), policyTarget(`${svc.name}/${high}`));
        const reportTarget = MULTIPLE * Math.max(...cells.filter((c) => c.service === svc.name && c.scenario === 'static' && (c.loadPct === low || c.loadPct === high)).map((c) => c.p99Ms));
        for (const scenario of ['lodger', 'static'] as const) {
          if (scenario === 'lodger') {
            daemon.setPolicy(policyYaml(svc, target));
          } else {
            await direct.set(FIXED.static);
            await direct.resume();
          }
          const s = await loadStep({
            svc, scenario, rps: (l) => rps(svc, l), loadCpu: LOAD_CPU, targetMs: reportTarget, daemon: scenario === 'lodger' ? daemon : null, lowPct: low, highPct: high,
            ...(scenario === 'lodger' ? { settle: SETTLE, started: () => daemon!.thaw() } : {}),
          });
          if (scenario === 'lodger') daemon.freeze();
          else await direct.pause();
          steps.push(s);
          say(`load step ${low}->${high}->${low}% ${svc.name} ${scenario}: ${s.phases.map((p) => `${p.loadPct}%: ${p.badWindows}/${p.windows} windows over ${reportTarget.toFixed(2)} ms`).join(', ')}` +
            (scenario === 'lodger' ? `; clamped already at the step: ${s.clampedAtStep}; step -> first clamp ${s.firstClampMs === null ? 'none' : `${s.firstClampMs.toFixed(0)} ms`}` : '') +
            `; back under target ${s.backUnderMs === null ? 'never' : `${s.backUnderMs.toFixed(0)} ms`} after the step`);
        }
      }
    }
  }
} catch (e) {
  failed = true;
  console.error(`colocation benchmark failed: ${(e as Error).stack}`);
} finally {
  await cleanup();
}
if (failed) process.exit(1);
mkdirSync(values.out, { recursive: true });
await report({
  cells, steps, capacities, alone, loads: LOADS, rounds: ROUNDS, seconds: SECONDS, warmup: WARMUP, settle: SETTLE, multiple: MULTIPLE, sloMultiple: SLO_MULTIPLE,
  services: services.map((s) => s.name), backend, durationSeconds: Math.round((Date.now() - t0) / 1000), out: values.out,
  docs: values['no-docs'] ? null : join(root, 'docs', 'BENCHMARKS.md'), say,
});
