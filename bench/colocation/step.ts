// The load-step scenario: low -> high -> low % of a service's capacity in one go (40 -> 80
// -> 40 by default; from 20, where lodgerd has given the cpuset back, the step needs a
// clamp), and what the batch setting does with it: bad 1-s windows per phase, the time
// from the step up to lodgerd's first clamp, and to the tail back under the target.
import { percentile } from '../services.ts';
import type { DaemonBatch } from './batch.ts';
import type { Service } from './cell.ts';
import { load, windowP99s, type Sample } from './load.ts';

const phasesOf = (low: number, high: number): { loadPct: number; seconds: number }[] => [{ loadPct: low, seconds: 12 }, { loadPct: high, seconds: 10 }, { loadPct: low, seconds: 10 }];

export interface StepResult {
  service: string; scenario: 'lodger' | 'static'; targetMs: number; lowPct: number; highPct: number;
  phases: { loadPct: number; seconds: number; windows: number; badWindows: number; p99Ms: number }[];
  /** lodger: every knob was applied already when the load stepped up. */
  clampedAtStep: boolean | null;
  firstClampMs: number | null;
  /** From the step up until the p99 of the last second (since the step) is under the target and stays so for a second. */
  backUnderMs: number | null;
}

/** First time after `from` that the trailing 1-s p99 (of samples since `from`) is under `target` and stays under for 1 s. */
export function backUnder(samples: { at: number; ms: number }[], from: number, until: number, targetMs: number): number | null {
  const after = samples.filter((s) => s.at >= from && s.at < until);
  const p99At = (t: number): number => {
    const w = after.filter((s) => s.at > t - 1000 && s.at <= t).map((s) => s.ms);
    return w.length ? percentile(w, 99) : NaN;
  };
  for (let t = from + 100; t + 1000 <= until; t += 100) {
    let ok = true;
    for (let u = t; u <= t + 1000 && ok; u += 100) ok = !(p99At(u) > targetMs);
    if (ok) return t - from;
  }
  return null;
}

export async function loadStep(o: {
  svc: Service; scenario: 'lodger' | 'static'; rps: (loadPct: number) => number; loadCpu: number | null; targetMs: number; daemon: DaemonBatch | null;
  lowPct: number; highPct: number;
  /** lodger: seconds of the first phase's load before it counts, to settle; `started` runs once it has begun. */
  settle?: number; started?: () => Promise<void>;
}): Promise<StepResult> {
  const PHASES = phasesOf(o.lowPct, o.highPct);
  const all: { at: number; ms: number }[] = [];
  const phases: StepResult['phases'] = [];
  let stepAt = 0;
  let clampedAtStep: boolean | null = null;
  for (const [i, p] of PHASES.entries()) {
    if (i === 1 && o.daemon) {
      const st = o.daemon.controllerState();
      clampedAtStep = st ? st.level >= st.order.length && st.order.length > 0 : null;
    }
    const lead = i === 0 ? (o.settle ?? 0) : 0;
    const running = load(o.svc.target, o.rps(p.loadPct), lead + p.seconds, o.loadCpu);
    if (i === 0) await o.started?.();
    const r = await running;
    if (i === 1) stepAt = r.startedAt;
    const samples: Sample[] = r.samples.filter((s) => s.t >= lead * 1000).map((s) => ({ ...s, t: s.t - lead * 1000 }));
    for (const s of samples) all.push({ at: r.startedAt + lead * 1000 + s.t, ms: s.ok ? s.ms : Infinity });
    const wins = windowP99s(samples, p.seconds);
    const ok = samples.filter((s) => s.ok).map((s) => s.ms);
    phases.push({ loadPct: p.loadPct, seconds: p.seconds, windows: wins.length, badWindows: wins.filter((w) => w > o.targetMs).length, p99Ms: ok.length ? percentile(ok, 99) : NaN });
  }
  const clamp = o.daemon?.clamps.find((t) => t >= stepAt) ?? null;
  return {
    service: o.svc.name, scenario: o.scenario, targetMs: o.targetMs, lowPct: o.lowPct, highPct: o.highPct, phases, clampedAtStep,
    firstClampMs: o.daemon ? (clamp === null ? null : clamp - stepAt) : null,
    backUnderMs: backUnder(all, stepAt, stepAt + PHASES[1]!.seconds * 1000, o.targetMs),
  };
}
