// npm run bench:colocation -- [--seconds N] [--multiple X] [--out DIR] [--no-docs] [--services nginx,redis]
// The colocation benchmark: online services from Debian (nginx with a small static page,
// redis) under fixed-rate load, next to batch work in sandboxes, in four scenarios run
// back to back in one invocation so they share the host's conditions:
//   solo       the service alone;
//   unmanaged  plus the batch jobs, nothing done about them;
//   static     plus the batch jobs pinned away from the service's CPU;
//   lodger     plus the batch jobs under lodgerd, whose policy target is `multiple` x
//              the service's solo p99 as its probe sees it.
// The policy's knob order is what was measured on this host: moving batch off the
// service's CPU helped most, and pausing the sandboxes made the tail worse (docs/BENCHMARKS.md).
// Loads are 20, 40, 60 and 80% of each service's capacity, measured first (where p99
// bends). Writes colocation.json and two PNG charts to --out, and the table to
// docs/BENCHMARKS.md. Everything started here is stopped by its pid.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ServiceMonitor, type OnlineServicePolicy } from '../../control/index.ts';
import { decideAccel, defaultHostPaths, probeHost } from '../../sandbox-runtime/index.ts';
import { percentile, startNginx, startRedis, type Nginx, type Redis } from '../services.ts';
import { JOBS, startDaemon, startDirect, type Batch } from './batch.ts';
import { perLoad, timeline, type LoadPoint, type TimePoint } from './charts.ts';
import { load, measureCapacity, summarise, windowP99s, type Capacity, type Target } from './load.ts';

const root = join(import.meta.dirname, '..', '..');
const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '12' },
    warmup: { type: 'string', default: '3' },
    multiple: { type: 'string', default: '1.1' },
    out: { type: 'string', default: join(root, 'docs', 'colocation') },
    services: { type: 'string', default: 'nginx,redis' },
    // Solo always runs (the others are measured against it); a subset is for trying things.
    scenarios: { type: 'string', default: 'unmanaged,static,lodger' },
    'no-docs': { type: 'boolean', default: false },
  },
});
const SECONDS = Number(values.seconds);
const WARMUP = Number(values.warmup);
const MULTIPLE = Number(values.multiple);
const LOADS = [20, 40, 60, 80];
// Two CPUs here: the services run on CPU 0, the load generators on CPU 1 at a higher
// priority (standing in for clients elsewhere); static and Lodger move batch to CPU 1.
const SERVICE_CPU = 0;
const LOAD_CPU = cpus().length > 1 ? 1 : null;
const BATCH_CPUS = cpus().length > 1 ? `1-${cpus().length - 1}` : '0';
const t0 = Date.now();
const say = (m: string): void => console.error(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${m}`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

type Scenario = 'solo' | 'unmanaged' | 'static' | 'lodger';
interface Cell {
  service: string; scenario: Scenario; loadPct: number; rps: number; achievedRps: number;
  p50Ms: number; p99Ms: number; errors: number; windows: number; violatingWindows: number; violatingFraction: number;
  /** After the first clamp (lodger) or all windows (others). */
  violatingAfterReaction: number | null;
  targetMs: number; p99Ratio: number; batchRelative: number; batchRates: Record<string, number>; utilisation: number;
  reactionMs: number | null; probeP99Ms: number | null; policyTargetMs: number | null;
  /** lodgerd's own CPU use during the cell, in CPUs (lodger only). */
  daemonCpu: number | null;
}

interface Service { name: 'nginx' | 'redis'; target: Target; probe: OnlineServicePolicy['probe']; stop(): Promise<void> }

function redisService(r: Redis): Service {
  return {
    name: 'redis', target: { kind: 'redis', port: r.port },
    probe: { kind: 'redis', host: '127.0.0.1', port: r.port, intervalMs: 20, timeoutMs: 200 },
    stop: () => r.stop(),
  };
}

function nginxService(n: Nginx): Service {
  return {
    name: 'nginx', target: { kind: 'nginx', url: n.url },
    probe: { kind: 'http', url: n.url, method: 'GET', intervalMs: 20, timeoutMs: 200 },
    stop: () => n.stop(),
  };
}

function policyYaml(svc: Service, targetMs: number): string {
  const p = svc.probe!;
  const probe = p.kind === 'http' ? `{ http: { url: "${p.url}" }, interval: 20ms, timeout: 200ms }` : `{ redis: { address: "${p.host}:${p.port}" }, interval: 20ms, timeout: 200ms }`;
  return `apiVersion: lodger.dev/v1
kind: OnlineService
metadata: { name: ${svc.name} }
spec:
  slo: { percentile: 99, target: ${targetMs.toFixed(3)}ms, window: 1s }
  probe: ${probe}
  cpus: "${SERVICE_CPU}"
---
apiVersion: lodger.dev/v1
kind: BatchPool
metadata: { name: default }
spec:
  reserve: { cpus: 1, memory: 1Gi }
  sandbox: { minVcpus: 1, maxVcpus: 2, minMemory: 256Mi, maxMemory: 1Gi }
  knobs: [cpuset, cpu.idle, cpu.weight]
  growth: { cooldown: 3s, minSlack: 0.3, shrinkSlack: 0.1, memoryStep: 256Mi }
`;
}

/** The probe lodgerd would use, run here during the solo cells: its p99 sets the policy target. */
async function probeP99(svc: Service, during: Promise<unknown>): Promise<number> {
  const mon = new ServiceMonitor({ name: svc.name, source: 'bench', slo: { percentile: 99, targetMs: 1000, windowMs: 1000 }, probe: svc.probe, prometheus: null, cpus: null });
  const lat: number[] = [];
  mon.onSample = (r) => { if (r.ok) lat.push(r.latencyMs); };
  mon.start();
  await during;
  mon.stop();
  return lat.length ? percentile(lat, 99) : NaN;
}

const cells: Cell[] = [];
const timelinePts: TimePoint[] = [];
const capacities: Record<string, Capacity> = {};
const solo: Record<string, Record<number, { p99Ms: number; probeP99Ms: number }>> = {};
let alone: Record<string, number> = {};

/** CPU seconds a process has used (utime + stime), from /proc. */
function cpuSeconds(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

async function cell(svc: Service, scenario: Scenario, loadPct: number, batch: (Batch & { clamps?: number[]; pid?: number }) | null, tOffset: number): Promise<Cell> {
  const cpu0 = batch?.pid ? { at: Date.now(), s: cpuSeconds(batch.pid) } : null;
  const rps = Math.max(1, Math.round((capacities[svc.name]!.capacityRps * loadPct) / 100));
  const vcpuSamples: { at: number; n: number }[] = [];
  const sampler = batch ? setInterval(() => { void batch.vcpus().then((n) => vcpuSamples.push({ at: Date.now(), n }), () => {}); }, 500) : null;
  const running = load(svc.target, rps, WARMUP + SECONDS, LOAD_CPU);
  const probe = scenario === 'solo' ? probeP99(svc, running) : Promise.resolve(NaN);
  const r = await running;
  if (sampler) clearInterval(sampler);
  const daemonCpu = cpu0 && batch?.pid ? (cpuSeconds(batch.pid) - cpu0.s) / ((Date.now() - cpu0.at) / 1000) : null;
  const measuredFrom = r.startedAt + WARMUP * 1000;
  const samples = r.samples.filter((s) => s.t >= WARMUP * 1000).map((s) => ({ ...s, t: s.t - WARMUP * 1000 }));
  const sum = summarise(samples);
  const soloP99 = scenario === 'solo' ? sum.p99Ms : solo[svc.name]![loadPct]!.p99Ms;
  const targetMs = soloP99 * MULTIPLE;
  const wins = windowP99s(samples, SECONDS);
  const rates = batch ? batch.units.rates(measuredFrom, measuredFrom + SECONDS * 1000) : {};
  const batchRelative = batch ? JOBS.reduce((a, j) => a + (rates[j.name] ?? 0) / (alone[j.name] || 1), 0) / JOBS.length : 0;
  // Load step (the load starts from nothing) to the first clamp lodgerd applied.
  const firstClamp = batch?.clamps?.find((c) => c >= r.startedAt) ?? null;
  const reactionMs = scenario === 'lodger' ? (firstClamp === null ? null : firstClamp - r.startedAt) : null;
  const afterFrom = firstClamp === null ? 0 : Math.max(0, Math.ceil((firstClamp - measuredFrom) / 1000));
  const violating = wins.filter((w) => w > targetMs).length;
  for (let w = 0; w < wins.length; w++) {
    const at = measuredFrom + w * 1000;
    const v = [...vcpuSamples].reverse().find((x) => x.at <= at + 1000)?.n ?? (batch ? vcpuSamples[0]?.n ?? 0 : 0);
    timelinePts.push({ service: svc.name, scenario, t: tOffset + w, p99Ms: Number.isFinite(wins[w]!) ? wins[w]! : null, targetMs, vcpus: v });
  }
  const c: Cell = {
    service: svc.name, scenario, loadPct, rps, achievedRps: Math.round(r.achievedRps), p50Ms: sum.p50Ms, p99Ms: sum.p99Ms, errors: sum.errors,
    windows: wins.length, violatingWindows: violating, violatingFraction: wins.length ? violating / wins.length : 0,
    violatingAfterReaction: scenario === 'lodger' ? wins.slice(afterFrom).filter((w) => w > targetMs).length : null,
    targetMs, p99Ratio: sum.p99Ms / soloP99, batchRelative, batchRates: rates, utilisation: loadPct / 100 + batchRelative,
    reactionMs, probeP99Ms: scenario === 'solo' ? await probe : null, policyTargetMs: null, daemonCpu,
  };
  say(`${svc.name} ${scenario.padEnd(9)} ${String(loadPct).padStart(2)}%: ${rps} req/s, p50 ${c.p50Ms.toFixed(2)} ms, p99 ${c.p99Ms.toFixed(2)} ms (x${c.p99Ratio.toFixed(2)} solo), ` +
    `${violating}/${wins.length} windows over ${targetMs.toFixed(2)} ms, batch ${(batchRelative * 100).toFixed(0)}%, EMU ${(c.utilisation * 100).toFixed(0)}%${reactionMs !== null ? `, clamp ${reactionMs.toFixed(0)} ms after the step` : ''}${daemonCpu !== null ? `, lodgerd ${(daemonCpu * 100).toFixed(0)}% of a CPU` : ''}`);
  cells.push(c);
  return c;
}

const dir = mkdtempSync(join(tmpdir(), 'lodger-coloc-'));
const services: Service[] = [];
const toStop: Batch[] = [];
let failed = false;
try {
  const wanted = values.services.split(',');
  if (wanted.includes('nginx')) services.push(nginxService(await startNginx(join(dir, 'nginx'), 0, SERVICE_CPU)));
  if (wanted.includes('redis')) services.push(redisService(await startRedis(dir, SERVICE_CPU)));

  say('capacity: fixed rates up to the closed-loop ceiling, until p99 bends (3x the lowest p99 of the lighter rates)');
  for (const svc of services) {
    capacities[svc.name] = await measureCapacity(svc.target, LOAD_CPU, 4);
    const c = capacities[svc.name]!;
    say(`${svc.name}: ceiling ${c.ceilingRps.toFixed(0)} req/s, capacity ${c.capacityRps} req/s (${c.steps.map((s) => `${s.rps}: p99 ${s.p99Ms.toFixed(2)} ms`).join('; ')})`);
  }

  say('scenario 1: each service alone');
  for (const svc of services) {
    solo[svc.name] = {};
    let t = 0;
    for (const l of LOADS) {
      const c = await cell(svc, 'solo', l, null, t);
      solo[svc.name]![l] = { p99Ms: c.p99Ms, probeP99Ms: c.probeP99Ms ?? NaN };
      t += SECONDS + 2;
    }
  }

  const scenarios = values.scenarios.split(',');
  say('batch alone: the same jobs with nothing else running');
  const direct = await startDirect(dir, 'direct');
  toStop.push(direct);
  await sleep(8000); // the memory job fills its buffer first
  const a0 = Date.now();
  await sleep(15_000);
  alone = direct.units.rates(a0, Date.now());
  say(`batch alone: ${JOBS.map((j) => `${j.name} ${alone[j.name]!.toFixed(2)} units/s`).join(', ')}`);

  for (const scenario of (['unmanaged', 'static'] as const).filter((x) => scenarios.includes(x))) {
    say(`scenario ${scenario === 'unmanaged' ? 2 : 3}: ${scenario === 'unmanaged' ? 'batch unmanaged' : `batch pinned to CPUs ${BATCH_CPUS}`}`);
    await direct.pin(scenario === 'static' ? BATCH_CPUS : cpus().map((_, i) => i).join(','));
    for (const svc of services) {
      let t = 0;
      for (const l of LOADS) { await cell(svc, scenario, l, direct, t); t += SECONDS + 2; }
    }
  }
  await direct.stop();
  toStop.length = 0;

  say(`scenario 4: batch under lodgerd, policy target ${MULTIPLE} x the probe's solo p99 at each load`);
  for (const svc of scenarios.includes('lodger') ? services : []) {
    const target = (l: number): number => MULTIPLE * solo[svc.name]![l]!.probeP99Ms;
    // lodgerd is not pinned: on the load CPU it slowed the load generator (tried: p50 3-8 ms).
    const d = await startDaemon(dir, `lodger-${svc.name}`, policyYaml(svc, target(LOADS[0]!)), null);
    toStop.push(d);
    let t = 0;
    for (const l of LOADS) {
      d.setPolicy(policyYaml(svc, target(l)));
      await sleep(1500); // lodgerd reloads on change
      const c = await cell(svc, 'lodger', l, d, t);
      c.policyTargetMs = target(l);
      t += SECONDS + 2;
    }
    await d.stop();
    toStop.length = 0;
  }
} catch (e) {
  failed = true;
  console.error(`colocation benchmark failed: ${(e as Error).stack}`);
} finally {
  await Promise.all(toStop.map((b) => b.stop().catch(() => {})));
  await Promise.all(services.map((s) => s.stop().catch(() => {})));
  rmSync(dir, { recursive: true, force: true });
}
if (failed) process.exit(1);

// ---- report ----
const host = defaultHostPaths();
const accel = decideAccel('auto', probeHost(host), false).accel;
const result = {
  date: new Date().toISOString(), host: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? '', memGiB: Math.round(Number(/MemTotal:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0) / 1048576) },
  accel, secondsPerCell: SECONDS, warmupSeconds: WARMUP, multiple: MULTIPLE, loads: LOADS, capacities, batchAlone: alone, cells,
  durationSeconds: Math.round((Date.now() - t0) / 1000), timeline: timelinePts,
};
mkdirSync(values.out, { recursive: true });
writeFileSync(join(values.out, 'colocation.json'), `${JSON.stringify(result, null, 2)}\n`);
await timeline(timelinePts.filter((p) => p.scenario !== 'solo'), join(values.out, 'p99-timeline.png'));
await perLoad(cells.filter((c) => c.scenario !== 'solo').map((c): LoadPoint => ({ service: c.service, scenario: c.scenario, loadPct: c.loadPct, utilisation: Math.round(c.utilisation * 100), p99Ratio: c.p99Ratio }))
  .concat(cells.filter((c) => c.scenario === 'solo').map((c) => ({ service: c.service, scenario: c.scenario, loadPct: c.loadPct, utilisation: c.loadPct, p99Ratio: 1 }))), join(values.out, 'utilisation-p99.png'));

const f2 = (x: number | null): string => (x === null || !Number.isFinite(x) ? '–' : x.toFixed(2));
const lines = [
  `### ${result.date.slice(0, 10)} · ${result.host.cpuModel}, ${result.host.cpus} cores, ${result.host.memGiB} GiB · ${accel.toUpperCase()} · ${SECONDS} s per cell after ${WARMUP} s warm-up · run took ${Math.round(result.durationSeconds / 60)} min`,
  '',
  `Capacity (where p99 bends): ${services.map((s) => `${s.name} ${capacities[s.name]!.capacityRps} req/s (closed-loop ceiling ${capacities[s.name]!.ceilingRps.toFixed(0)})`).join('; ')}.`,
  `Batch alone: ${JOBS.map((j) => `${j.name} ${alone[j.name]!.toFixed(2)} units/s`).join(', ')}. Target per load: ${MULTIPLE} × solo p99 (the load generator's) for the`,
  `report; lodgerd's policy target: ${MULTIPLE} × the solo p99 its probe measured.`,
  '',
  '| service | load | scenario | p50 ms | p99 ms | p99 / solo | windows over target | batch vs alone | EMU | load step → clamp |',
  '|---|---|---|---|---|---|---|---|---|---|',
  ...cells.map((c) => `| ${c.service} | ${c.loadPct}% | ${c.scenario} | ${f2(c.p50Ms)} | ${f2(c.p99Ms)} | ${f2(c.p99Ratio)} | ${c.violatingWindows}/${c.windows}${c.reactionMs !== null ? ` (${c.violatingAfterReaction} after the clamp)` : ''} | ${(c.batchRelative * 100).toFixed(0)}% | ${(c.utilisation * 100).toFixed(0)}% | ${c.reactionMs === null ? (c.scenario === 'lodger' ? 'no clamp' : '') : `${c.reactionMs.toFixed(0)} ms`} |`),
  '',
  ...services.map((s) => {
    const l = cells.filter((c) => c.service === s.name && c.scenario === 'lodger');
    const worst = Math.max(...l.map((c) => c.p99Ratio));
    const emu = l.reduce((a, c) => a + c.utilisation, 0) / (l.length || 1);
    const after = l.reduce((a, c) => a + (c.violatingAfterReaction ?? 0), 0);
    const reactions = l.map((c) => c.reactionMs).filter((x): x is number => x !== null);
    return `- ${s.name} under Lodger: worst p99 ${worst.toFixed(2)} × solo (target ≤ 1.10: ${worst <= 1.1 ? 'met' : `missed by ${((worst - 1.1) * 100).toFixed(0)} points`}); ` +
      `${after} violating windows after the first clamp (target 0); mean EMU ${(emu * 100).toFixed(0)}% (target ≥ 90%: ${emu >= 0.9 ? 'met' : `missed by ${((0.9 - emu) * 100).toFixed(0)} points`}); ` +
      `load step → clamp ${reactions.length ? reactions.map((x) => `${x.toFixed(0)} ms`).join(', ') : 'none (no breach)'}; ` +
      `lodgerd itself used ${l.map((c) => `${((c.daemonCpu ?? NaN) * 100).toFixed(0)}%`).join(', ')} of a CPU.`;
  }),
  '',
  `Charts: \`docs/colocation/p99-timeline.png\` (p99 per window, target, batch vCPUs), \`docs/colocation/utilisation-p99.png\`. Raw figures: \`docs/colocation/colocation.json\`.`,
];
const table = lines.join('\n');
console.log(table);
if (!values['no-docs']) {
  const file = join(root, 'docs', 'BENCHMARKS.md');
  const text = readFileSync(file, 'utf8');
  const begin = '<!-- colocation:begin -->';
  const end = '<!-- colocation:end -->';
  const block = `${begin}\n${table}\n${end}`;
  writeFileSync(file, text.includes(begin) ? text.replace(new RegExp(`${begin}[\\s\\S]*?${end}`), block) : `${text.trimEnd()}\n\n## Colocation — \`npm run bench:colocation\`\n\n${block}\n`);
  say(`table written to ${file}`);
}
say(`done: ${join(values.out, 'colocation.json')}`);
