// One measured cell of the colocation benchmark: a service at a fixed rate for a few
// seconds next to whatever batch setting the scenario put in place, with the service's
// p99 (whole cell and per 1-s window), batch throughput, and, under lodgerd, its clamps,
// direction and cpuset changes, and its own CPU use.
import { readFileSync } from 'node:fs';
import { ServiceMonitor, type OnlineServicePolicy } from '../../control/index.ts';
import { percentile } from '../services.ts';
import { JOBS, type Batch, type DaemonBatch } from './batch.ts';
import { load, summarise, windowP99s, type Target } from './load.ts';

export type Scenario = 'solo' | 'static' | 'static-idle' | 'idle-all' | 'unmanaged' | 'lodger';

export interface Cell {
  service: string; scenario: Scenario; loadPct: number; round: number; rps: number; achievedRps: number;
  p50Ms: number; p99Ms: number; errors: number;
  /** p99 of each 1-s window, and their median. */
  windowP99Ms: number[]; windowMedianMs: number;
  batchRelative: number; batchRates: Record<string, number>;
  /** lodger only: clamps in the cell, direction changes and cpuset changes seen, its own CPU use. */
  clamps: number | null; directionChanges: number | null; cpusetChanges: number | null; daemonCpu: number | null;
  /** solo and static: lodgerd's probe's p99 over the cell (static's sets lodgerd's target) and its median 1-s-window p99. */
  probeCellP99Ms: number | null;
  probeP99Ms: number | null;
  policyTargetMs: number | null;
  /** lodger only: what lodgerd did from its settle time to the cell's end (s from the measured start), and the knobs it held at the end. */
  timeline?: { s: number; reason: string }[];
  appliedAtEnd?: string[] | null;
}

export interface Service { name: 'nginx' | 'redis'; target: Target; probe: NonNullable<OnlineServicePolicy['probe']>; pidFile: string; stop(): Promise<void> }

/** CPU seconds a process has used (utime + stime), from /proc. */
export function cpuSeconds(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

/**
 * The probe lodgerd would use, run during solo and static cells: the p99 of every sample
 * in the cell (the static split's sets lodgerd's target: the tail an operator choosing it
 * accepts), and the median over the 1-s windows of their p99 (a typical second).
 */
async function probeP99(svc: Service, during: Promise<unknown>): Promise<{ cell: number; window: number }> {
  const mon = new ServiceMonitor({ name: svc.name, source: 'bench', slo: { percentile: 99, targetMs: 1000, windowMs: 1000 }, probe: svc.probe, prometheus: null, cpus: null });
  const lat: { at: number; ms: number }[] = [];
  mon.onSample = (r, at) => { if (r.ok) lat.push({ at, ms: r.latencyMs }); };
  mon.start();
  await during;
  mon.stop();
  if (!lat.length) return { cell: NaN, window: NaN };
  const t0 = lat[0]!.at;
  const cell = percentile(lat.map((x) => x.ms), 99);
  const wins = windowP99s(lat.map((x) => ({ t: x.at - t0, ms: x.ms, ok: true })), Math.floor((lat.at(-1)!.at - t0) / 1000));
  return { cell, window: wins.length ? percentile(wins, 50) : cell };
}

/** Tightening and loosening in lodgerd's decision reasons (decide.ts words them). */
export function direction(reason: string): 1 | -1 | 0 {
  if (/: clamp |: pause$|: revert it$/.test(reason)) return -1;
  if (/: release \S+$|: resume$/.test(reason)) return 1;
  return 0;
}

export interface CellOptions {
  svc: Service; scenario: Scenario; loadPct: number; round: number; rps: number;
  seconds: number; warmup: number; loadCpu: number | null;
  batch: Batch | null; daemon: DaemonBatch | null; alone: Record<string, number>;
  policyTargetMs?: number;
  /** Index into the daemon's decisions where its settle time began. */
  decisionsFrom?: number;
}

export async function measureCell(o: CellOptions): Promise<Cell> {
  const d = o.daemon;
  const cpu0 = d ? { at: Date.now(), s: cpuSeconds(d.pid) } : null;
  const decisionsBefore = d?.decisions.length ?? 0;
  const cpusetSeen: string[] = [];
  const sampler = d ? setInterval(() => { const c = d.cpusets().join(' '); if (cpusetSeen.at(-1) !== c) cpusetSeen.push(c); }, 200) : null;
  const running = load(o.svc.target, o.rps, o.warmup + o.seconds, o.loadCpu);
  const probe = o.scenario === 'solo' || o.scenario === 'static' ? probeP99(o.svc, running) : Promise.resolve(null);
  const r = await running;
  if (sampler) clearInterval(sampler);
  const measuredFrom = r.startedAt + o.warmup * 1000;
  const samples = r.samples.filter((s) => s.t >= o.warmup * 1000).map((s) => ({ ...s, t: s.t - o.warmup * 1000 }));
  const sum = summarise(samples);
  const wins = windowP99s(samples, o.seconds);
  const rates = o.batch ? o.batch.units.rates(measuredFrom, measuredFrom + o.seconds * 1000) : {};
  const batchRelative = o.batch ? JOBS.reduce((a, j) => a + (rates[j.name] ?? 0) / (o.alone[j.name] || 1), 0) / JOBS.length : 0;
  let dirs: number | null = null;
  let clamps: number | null = null;
  if (d) {
    const mine = d.decisions.slice(decisionsBefore).filter((x) => x.at >= measuredFrom).map((x) => direction(x.reason)).filter((x) => x !== 0);
    dirs = mine.filter((x, i) => i > 0 && x !== mine[i - 1]).length;
    clamps = d.clamps.filter((t) => t >= measuredFrom).length;
  }
  const st = d?.controllerState() ?? null;
  return {
    ...(d ? {
      timeline: d.decisions.slice(o.decisionsFrom ?? decisionsBefore).slice(-40).map((x) => ({ s: Math.round(x.at - measuredFrom) / 1000, reason: x.reason })),
      appliedAtEnd: st ? st.order.slice(0, st.level).concat(st.paused ? ['pause'] : []) : null,
    } : {}),
    service: o.svc.name, scenario: o.scenario, loadPct: o.loadPct, round: o.round, rps: o.rps, achievedRps: Math.round(r.achievedRps),
    p50Ms: sum.p50Ms, p99Ms: sum.p99Ms, errors: sum.errors, windowP99Ms: wins, windowMedianMs: wins.length ? percentile(wins, 50) : NaN,
    batchRelative, batchRates: rates, clamps, directionChanges: dirs, cpusetChanges: d ? Math.max(0, cpusetSeen.length - 1) : null,
    daemonCpu: cpu0 && d ? (cpuSeconds(d.pid) - cpu0.s) / ((Date.now() - cpu0.at) / 1000) : null,
    probeCellP99Ms: (await probe)?.cell ?? null, probeP99Ms: (await probe)?.window ?? null, policyTargetMs: o.policyTargetMs ?? null,
  };
}
