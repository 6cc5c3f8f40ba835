// What each fast-path knob means as cgroup settings, which CPUs batch keeps when moved
// off the services' CPUs, and the knob ranking learned from measured slack changes.
import type { Knob, OnlineServicePolicy } from '../policy/index.ts';

/** cgroup knobs in the sandbox contract's vocabulary (v2 units); the daemon checks it against the runtime's with `satisfies`. */
export interface KnobSettings {
  cpuIdle?: boolean;
  cpus?: string;
  cpuWeight?: number;
  cpuMax?: { quotaUs: number; periodUs: number } | null;
}

/** The knobs that are cgroup settings (pause is an escalation, handled on its own). */
export type CgroupKnob = Exclude<Knob, 'pause'>;
export const isCgroupKnob = (k: Knob): k is CgroupKnob => k !== 'pause';

/** CPU list of every host CPU, and of those batch work may keep when moved away. */
export function cpuSplit(hostCpus: number, services: OnlineServicePolicy[], reserveCpus: number): { all: string; batch: string } {
  const all = `0-${hostCpus - 1}`;
  const online = new Set<number>();
  for (const s of services) for (const c of expandCpus(s.cpus ?? '')) online.add(c);
  // Without service CPUs in the policy, keep the reserve's count of low CPUs for them.
  if (online.size === 0) for (let c = 0; c < Math.min(Math.ceil(reserveCpus), hostCpus - 1); c++) online.add(c);
  const rest = [...Array(hostCpus).keys()].filter((c) => !online.has(c));
  return { all, batch: rest.length ? rest.join(',') : String(hostCpus - 1) };
}

export function expandCpus(list: string): number[] {
  const out: number[] = [];
  for (const part of list.split(',').filter(Boolean)) {
    const [a, b] = part.split('-').map(Number) as [number, number | undefined];
    for (let c = a; c <= (b ?? a); c++) out.push(c);
  }
  return out;
}

/**
 * The complete cgroup setting for a sandbox of `vcpus` when the knobs in `on` are applied
 * and the policy's other cgroup knobs are released. Knobs the policy does not list are
 * left out: Lodger does not touch them.
 */
export function settingsFor(policyKnobs: Knob[], on: ReadonlySet<Knob>, split: { all: string; batch: string }, vcpus: number): KnobSettings {
  const s: KnobSettings = {};
  for (const k of policyKnobs) {
    const applied = on.has(k);
    switch (k) {
      case 'cpu.idle': s.cpuIdle = applied; break;
      case 'cpuset': s.cpus = applied ? split.batch : split.all; break;
      case 'cpu.weight': s.cpuWeight = applied ? 1 : 100; break;
      // Half of the sandbox's vCPUs; a quota hurt the online tail on these hosts
      // (docs/BENCHMARKS.md), so it is in no default order.
      case 'cpu.max': s.cpuMax = applied ? { quotaUs: 50_000 * Math.max(1, vcpus), periodUs: 100_000 } : null; break;
      case 'pause': break;
    }
  }
  return s;
}

/** The pool's knobs that are never given back (its `keepApplied`, those its `knobs` list). */
export function keptKnobs(pool: { knobs: Knob[]; keepApplied?: CgroupKnob[] }): CgroupKnob[] {
  return (pool.keepApplied ?? []).filter((k) => pool.knobs.includes(k));
}

/** The pool's knobs a breach must earn (its `escalate`, those it lists and does not keep applied). */
export function escalatedKnobs(pool: { knobs: Knob[]; keepApplied?: CgroupKnob[]; escalate?: CgroupKnob[] }): CgroupKnob[] {
  const keep = keptKnobs(pool);
  return (pool.escalate ?? []).filter((k) => pool.knobs.includes(k) && !keep.includes(k));
}

/** Per knob: the slack it was measured to hold (slack lost when it was released), averaged. */
export type KnobEffects = Partial<Record<CgroupKnob, { value: number; n: number }>>;

/** A running mean over the last this many measurements: hosts and loads change. */
const EFFECT_MEMORY = 5;
/** The prior's weight, in measurements, and the slack it says the first knob holds. */
const PRIOR_WEIGHT = 2;
const PRIOR_TOP = 0.5;
/**
 * One measurement counts for at most this much slack either way: a breach that happened
 * to follow a release (slack -15 on a probe timeout) would otherwise outweigh everything
 * (the 2026-12-02 run: one such release put the cpuset first for good).
 */
const SAMPLE_CLIP = 1;

/** Adds one measurement of a knob's effect. */
export function learnEffect(effects: KnobEffects, knob: CgroupKnob, sample: number): KnobEffects {
  const prev = effects[knob] ?? { value: 0, n: 0 };
  const n = Math.min(prev.n + 1, EFFECT_MEMORY);
  const x = Math.max(-SAMPLE_CLIP, Math.min(SAMPLE_CLIP, sample));
  return { ...effects, [knob]: { value: prev.value + (x - prev.value) / n, n: prev.n + 1 } };
}

/**
 * The cgroup knobs from most to least valuable: the learned effects blended with the
 * policy's order as a prior worth two measurements (the first knob "holds" 0.5 slack,
 * falling linearly), so one lucky measurement does not overturn it; the knobs in `keep`
 * first whatever their worth, those in `last` last. Released from the end.
 */
export function rankKnobs(policyKnobs: Knob[], effects: KnobEffects, keep: readonly CgroupKnob[] = [], last: readonly CgroupKnob[] = []): CgroupKnob[] {
  const ks = policyKnobs.filter(isCgroupKnob);
  const score = (k: CgroupKnob, i: number): number => {
    const prior = (PRIOR_TOP * (ks.length - i)) / ks.length;
    const e = effects[k];
    const n = Math.min(e?.n ?? 0, EFFECT_MEMORY);
    return (prior * PRIOR_WEIGHT + (e?.value ?? 0) * n) / (PRIOR_WEIGHT + n) + (ks.length - i) * 1e-6; // position breaks ties
  };
  // Knobs kept applied come first, so that they are never the next one given back; the
  // escalated ones last: applied last, given back first.
  const kept = (k: CgroupKnob): number => (keep.includes(k) ? 1 : last.includes(k) ? -1 : 0);
  return ks.map((k, i) => ({ k, s: score(k, i) })).sort((a, b) => kept(b.k) - kept(a.k) || b.s - a.s).map((x) => x.k);
}
