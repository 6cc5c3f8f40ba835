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
  /** lodger only: its controller's reason each second, numbers and all (why it held what it held). */
  reasons?: { s: number; reason: string }[];
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
export async function probeP99(svc: Service, during: Promise<unknown>): Promise<{ cell: number; window: number; failures: number }> {
  const mon = new ServiceMonitor({ name: svc.name, source: 'bench', slo: { percentile: 99, targetMs: 1000, windowMs: 1000 }, probe: svc.probe, prometheus: null, cpus: null });
  const lat: { at: number; ms: number }[] = [];
  let failures = 0;
  mon.onSample = (r, at) => { if (r.ok) lat.push({ at, ms: r.latencyMs }); else failures++; };
  mon.start();
  await during;
  mon.stop();
  if (!lat.length) return { cell: NaN, window: NaN, failures };
  const t0 = lat[0]!.at;
  const cell = percentile(lat.map((x) => x.ms), 99);
  const wins = windowP99s(lat.map((x) => ({ t: x.at - t0, ms: x.ms, ok: true })), Math.floor((lat.at(-1)!.at - t0) / 1000));
  return { cell, window: wins.length ? percentile(wins, 50) : cell, failures };
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
  /** Seconds of load before the warm-up, for lodgerd to settle; `started` runs once the load has begun. */
  settle?: number;
  started?: () => Promise<void>;
}

function daemonCpu(d: DaemonBatch | null, from: { at: number; s: number } | null): number | null {
  return d && from ? (cpuSeconds(d.pid) - from.s) / ((Date.now() - from.at) / 1000) : null;
}

export async function measureCell(o: CellOptions): Promise<Cell> {
  const d = o.daemon;
  // lodger: one unbroken load from before lodgerd is continued through its settle time to
  // the cell's end. A gap in the load (between two generator runs) is a load step to a
  // controller that watches the service's CPU use, and the 2026-12-02 trial runs spent
  // their settle times on clamps for exactly that.
  const lead = (o.settle ?? 0) + o.warmup;
  const decisionsBefore = d?.decisions.length ?? 0;
  const cpusetSeen: { t: number; c: string }[] = [];
  const sampler = d ? setInterval(() => { const c = d.cpusets().join(' '); if (cpusetSeen.at(-1)?.c !== c) cpusetSeen.push({ t: Date.now(), c }); }, 200) : null;
  const running = load(o.svc.target, o.rps, lead + o.seconds, o.loadCpu);
  const t0 = Date.now();
  const reasons: { s: number; reason: string }[] = [];
  const asker = d ? setInterval(() => { void d.reason().then((reason) => reasons.push({ s: Date.now() - t0, reason })); }, 1000) : null;
  await o.started?.();
  let cpu0: { at: number; s: number } | null = null;
  const cpuMark = d ? setTimeout(() => { cpu0 = { at: Date.now(), s: cpuSeconds(d.pid) }; }, lead * 1000) : null;
  const probe = o.scenario === 'solo' || o.scenario === 'static' ? probeP99(o.svc, running) : Promise.resolve(null);
  const r = await running;
  if (sampler) clearInterval(sampler);
  if (asker) clearInterval(asker);
  if (cpuMark) clearTimeout(cpuMark);
  const measuredFrom = r.startedAt + lead * 1000;
  const samples = r.samples.filter((s) => s.t >= lead * 1000).map((s) => ({ ...s, t: s.t - lead * 1000 }));
  const sum = summarise(samples);
  const wins = windowP99s(samples, o.seconds);
  const rates = o.batch ? o.batch.units.rates(measuredFrom, measuredFrom + o.seconds * 1000) : {};
  const batchRelative = o.batch ? JOBS.reduce((a, j) => a + (rates[j.name] ?? 0) / (o.alone[j.name] || 1), 0) / JOBS.length : 0;
  // cpuset changes while measured: the setting at the start, then each one seen after it.
  const cpusetsMeasured = cpusetSeen.filter((x, i) => x.t >= measuredFrom || cpusetSeen[i + 1] === undefined || cpusetSeen[i + 1]!.t > measuredFrom);
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
      reasons: reasons.map((x) => ({ s: Math.round(t0 + x.s - measuredFrom) / 1000, reason: x.reason })),
      appliedAtEnd: st ? st.order.slice(0, st.level).concat(st.paused ? ['pause'] : []) : null,
    } : {}),
    service: o.svc.name, scenario: o.scenario, loadPct: o.loadPct, round: o.round, rps: o.rps, achievedRps: Math.round(r.achievedRps),
    p50Ms: sum.p50Ms, p99Ms: sum.p99Ms, errors: sum.errors, windowP99Ms: wins, windowMedianMs: wins.length ? percentile(wins, 50) : NaN,
    batchRelative, batchRates: rates, clamps, directionChanges: dirs, cpusetChanges: d ? Math.max(0, cpusetsMeasured.length - 1) : null,
    daemonCpu: daemonCpu(d, cpu0),
    probeCellP99Ms: (await probe)?.cell ?? null, probeP99Ms: (await probe)?.window ?? null, policyTargetMs: o.policyTargetMs ?? null,
  };
}
