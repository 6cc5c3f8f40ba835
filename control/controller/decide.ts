// The QoS controller: a pure function from policy, observations and its own previous
// state to a plan. No I/O, no clock: time comes in with the observations. It is
// level-triggered: every round returns the complete desired setting of the pool and of
// every sandbox (knobs, pause), and the actuator converges reality to it, so a sandbox
// that joins, a restart or a drifted knob is corrected on the next round. Resizes and
// suspend/restore are structural and go one step at a time (structural.ts).
//
// The fast path (after Heracles' top-level controller, Katalyst's asymmetric ramps and
// PARTIES' revert-and-block):
// - danger (slack below 0, or the service's own CPU use stepping up: the leading
//   indicator, seen before the latency window fills) clamps every cgroup knob at once
//   but the escalated ones (`escalate`: the cpuset, which is not work-conserving);
//   danger soon after a release is that release's doing: it alone is reverted, the
//   applied knobs re-ranked, and the release blocked by breach memory;
// - a breach that outlasts two windows with those applied earns the escalated knobs
//   (and reverts a release of one); a window more with every knob applied, pause (if
//   the policy lists it);
// - knobs are given back one at a time, the least valuable first (ranking learned from
//   the slack each release cost), only above the growth band held for a cool-down, never
//   sooner than `reverse` after a clamp, the cpuset at most once per `cpusetInterval`;
// - breach memory: after a breach at some level and load, that level is not given back
//   until the load has fallen well below the breach's or a back-off (doubling on each
//   repeat) has passed; it holds under the same SLO only (another service's or a looser
//   target forgets it), and nothing is learnt across a gap in the rounds or an SLO change.
import type { BatchPoolPolicy, OnlineServicePolicy } from '../policy/index.ts';
import { cpuSplit, escalatedKnobs, isCgroupKnob, keptKnobs, learnEffect, rankKnobs, settingsFor, type CgroupKnob, type KnobEffects, type KnobSettings } from './knobs.ts';
import { serviceSlacks } from './slack.ts';
import { structuralActions } from './structural.ts';
import { memoryPlan, type MemoryObservation, type MemoryState } from './memory.ts';

export interface ServiceObservation {
  name: string;
  /** Latency at the SLO percentile over the SLO window; null with no samples yet. */
  latencyMs: number | null;
  /** Why there is no usable latency (connection refused, malformed metrics...). */
  error: string | null;
  /** The service's own CPU use over the last few hundred ms, in CPUs, when its processes are known. */
  cpuUse?: number | null;
  /** Time its threads waited for a CPU, percent of wall time (like PSI "some"), when known. */
  runDelayPct?: number | null;
  /** Resident memory of its processes, bytes, when they are known. */
  memoryBytes?: number | null;
}

export interface HostObservation {
  cpus: number;
  /** PSI "some" avg10 for CPU, percent (host-wide: counts batch's own waiting too). */
  cpuPressure: number;
  memAvailableBytes: number;
  /** The memory guarded (the host's or the budget cgroup's) with its pressure signals (memory.ts). */
  memory?: MemoryObservation;
}

export interface SandboxObservation {
  id: string;
  vcpus: number;
  memoryMiB: number;
  paused: boolean;
  /** Saved to disk, no VMM running (the memory path's last step). */
  suspended?: boolean;
  /** Being written to disk or read back from it. */
  suspending?: boolean;
  /** Guest MemAvailable, when the guest reports it. */
  guestMemAvailableMiB: number | null;
}

export interface Observations {
  now: number;
  services: ServiceObservation[];
  host: HostObservation;
  sandboxes: SandboxObservation[];
}

export type { KnobSettings } from './knobs.ts';

/** Structural steps (and, as the actuator reports them, the fast changes it made). */
export type Action =
  | { kind: 'knobs'; sandbox: string; knobs: KnobSettings; reason: string }
  | { kind: 'pause' | 'resume'; sandbox: string; reason: string }
  /** Save to disk and end the VMM / bring back from disk: slow, structural. */
  | { kind: 'suspend' | 'restore'; sandbox: string; reason: string }
  | { kind: 'resize'; sandbox: string; vcpus?: number; memoryMiB?: number; reason: string };

export interface DesiredSandbox {
  id: string;
  knobs: KnobSettings;
  paused: boolean;
}

/** The complete fast-path setting for this round. */
export interface Desired {
  /** For the pool's parent cgroup: a sandbox inherits it the moment it starts. */
  pool: KnobSettings;
  sandboxes: DesiredSandbox[];
  /** The knobs applied now, most valuable first. */
  applied: CgroupKnob[];
  reason: string;
}

export interface Breach {
  at: number;
  /** The services' CPU use at the breach (null when not known). */
  load: number | null;
  /** Knobs that were applied when it happened: giving back down to here is blocked. */
  level: number;
  backoffMs: number;
  /** The SLO targets (ms per service) it happened under: under a looser or another SLO it is forgotten. */
  slo?: Record<string, number>;
}

/** Everything the controller remembers; plain JSON (the daemon stores it in its state directory). */
export interface ControllerState {
  /** The first `level` knobs of `order` are applied. */
  level: number;
  /** Cgroup knobs, most valuable first; re-ranked only when all are applied. */
  order: CgroupKnob[];
  paused: boolean;
  /** Wall-clock ms of the last tightening / loosening / cpuset change; null: never. */
  clampedAt: number | null;
  releasedAt: number | null;
  cpusetChangedAt: number | null;
  /** Since when slack has stayed in the growth band / below the shrink band / below 0. */
  highSince: number | null;
  lowSince: number | null;
  violatingSince: number | null;
  breach: Breach | null;
  /** Slow average of the services' CPU use: a step above it is a load step. */
  loadBaseline: number | null;
  loadAt: number | null;
  effects: KnobEffects;
  /** A release whose cost is being measured. */
  /** A release: its cost is learnt once the window has refreshed (`learnt`); a breach within two windows of it is its doing. */
  trial: { knob: CgroupKnob; at: number; slackBefore: number; learnt?: boolean; breachLearnt?: boolean; load?: number | null } | null;
  lastResizeAt: number | null;
  lastDirection: 'grow' | 'shrink' | null;
  /** When the last round ran, and under which SLO targets: a release measured across a gap or an SLO change is not learnt from. */
  roundAt?: number | null;
  slo?: Record<string, number>;
  /** A release undone because the breach followed it: no clamp-all for a window while the revert shows. */
  revertedAt?: number | null;
  /** The first round after a gap in the rounds (a stopped or restarted daemon). */
  resumedAt?: number | null;
  /** The memory path's own state (memory.ts). */
  memory?: MemoryState;
}

export interface Plan {
  desired: Desired;
  /** Structural steps (resize, suspend, restore), at most one per round. */
  actions: Action[];
  state: ControllerState;
  /** Per service slack, null when unknown. */
  slack: Record<string, number | null>;
  /** True when this round tightened the fast path (a reaction to danger). */
  tightened: boolean;
  /** One line on why the plan is what it is. */
  reason: string;
}

export const INITIAL_STATE: ControllerState = {
  level: 0, order: [], paused: false, clampedAt: null, releasedAt: null, cpusetChangedAt: null,
  highSince: null, lowSince: null, violatingSince: null, breach: null, loadBaseline: null, loadAt: null,
  effects: {}, trial: null, lastResizeAt: null, lastDirection: null, roundAt: null, slo: {}, revertedAt: null, resumedAt: null,
};

export interface ControllerPolicy {
  services: OnlineServicePolicy[];
  pool: BatchPoolPolicy;
}

/** The load baseline follows the services' CPU use with this time constant. */
const BASELINE_TAU_MS = 5000;
/** Older than this, the baseline is not compared with (the loop was not running). */
const STALE_BASELINE_MS = 2000;
/**
 * A rise counts as a load step only if it adds this many CPUs too. At low load the
 * service's use over a 200 ms span doubles in bursts (redis at 20%: 0.04 -> 0.08 and
 * 0.08 -> 0.15 CPUs, 2026-12-02), which re-clamped the cpuset for 30 s with the tail
 * well inside its SLO; a tenth of a core is still a fraction of what a real step adds.
 */
const MIN_STEP_CPUS = 0.1;
/** Load must fall this far below a breach's before its level may be given back early. */
const LOAD_FALL = 0.85;
/**
 * A breach earns the escalated knobs (the cpuset) once it has lasted this many SLO
 * windows. One slow probe keeps a 50-sample window's p99 over target for exactly one
 * window; under cpu.idle such seconds came and went on their own, while each cpuset
 * clamp they caused held half the host from batch for 30 s and more (2026-12-02 runs:
 * lodgerd held the cpuset at the end of 12 of 16 cells, idle-all beat it at 6 of 8).
 */
const ESCALATE_WINDOWS = 2;
/** A breach is remembered under SLO targets up to this much looser than its own. */
const SLO_SAME = 1.1;

const fmt = (x: number): string => (Number.isFinite(x) ? x.toFixed(2) : 'n/a');
const since = (now: number, t: number | null | undefined): number => (t === null || t === undefined ? Infinity : now - t);

/** Whether a breach seen under SLO `then` still speaks for SLO `now`: the same services, none looser by more than SLO_SAME. */
function sameSlo(then: Record<string, number> | undefined, now: Record<string, number>): boolean {
  if (!then) return true; // a state from before SLOs were recorded
  const names = Object.keys(now);
  return names.length === Object.keys(then).length && names.every((n) => then[n] !== undefined && now[n]! <= then[n]! * SLO_SAME);
}

/** A state from an older daemon or another policy, made consistent with this policy. */
export function reconcileState(prev: ControllerState, policy: ControllerPolicy): ControllerState {
  const ks = policy.pool.knobs.filter(isCgroupKnob);
  const keep = keptKnobs(policy.pool);
  const esc = escalatedKnobs(policy.pool);
  const known = [...prev.order.filter((k) => ks.includes(k)), ...rankKnobs(policy.pool.knobs, prev.effects, keep, esc).filter((k) => !prev.order.includes(k))];
  // Kept knobs first, escalated ones last; whatever was applied stays applied (a reorder may only tighten).
  const order = [...known.filter((k) => keep.includes(k)), ...known.filter((k) => !keep.includes(k) && !esc.includes(k)), ...known.filter((k) => esc.includes(k))];
  const wasOn = prev.order.slice(0, Math.max(0, prev.level)).filter((k) => ks.includes(k));
  const level = Math.min(Math.max(keep.length, ...wasOn.map((k) => order.indexOf(k) + 1)), ks.length);
  return { ...INITIAL_STATE, ...prev, order, level, paused: prev.paused && policy.pool.knobs.includes('pause') };
}


export function decide(policy: ControllerPolicy, obs: Observations, prevIn: ControllerState): Plan {
  const { pool } = policy;
  const g = pool.growth;
  const now = obs.now;
  const prev = reconcileState(prevIn, policy);
  const state: ControllerState = { ...prev };
  const K = prev.order.length;
  // The fast clamp applies the first F knobs of the order; the escalated ones follow it.
  const esc = escalatedKnobs(pool);
  const F = K - esc.length;
  const s = serviceSlacks(policy.services, obs.services);
  const windowMs = Math.max(...policy.services.map((x) => x.slo.windowMs), 0);
  const slo = Object.fromEntries(policy.services.map((x) => [x.name, x.slo.targetMs]));
  // Across a gap (a stopped loop) or an SLO change, the slack before and after a release
  // are not comparable (they were confounded so across the benchmark's cells), and a
  // breach under another SLO says nothing about this one.
  const gap = prev.roundAt !== null && prev.roundAt !== undefined && now - prev.roundAt > STALE_BASELINE_MS;
  // For a window after a gap, latency is not acted on either way: probes in flight across
  // it timed the gap (and lodgerd's own catching up), not the service.
  state.resumedAt = gap ? now : (prev.resumedAt ?? null);
  const settling = since(now, state.resumedAt) < Math.max(windowMs, 1000);
  const violating = s.min < 0 && !settling;
  const sloChanged = prev.slo !== undefined && JSON.stringify(prev.slo) !== JSON.stringify(slo) && Object.keys(prev.slo).length > 0;
  state.roundAt = now;
  state.slo = slo;
  if ((gap || sloChanged) && prev.trial) state.trial = null;
  if (prev.breach && !sameSlo(prev.breach.slo, slo)) state.breach = null;

  // Leading indicators: the services' own CPU use and run delay, when their processes are known.
  const uses = obs.services.map((o) => o.cpuUse).filter((x): x is number => typeof x === 'number');
  const load = uses.length ? uses.reduce((a, b) => a + b, 0) : null;
  const delays = obs.services.map((o) => o.runDelayPct).filter((x): x is number => typeof x === 'number');
  const runDelay = delays.length ? Math.max(...delays) : null;
  // A baseline from before a gap (a restart, a stopped daemon) says nothing about a step now.
  const baseline = prev.loadAt !== null && now - prev.loadAt <= STALE_BASELINE_MS ? prev.loadBaseline : null;
  const rising = load !== null && baseline !== null && load > baseline * (1 + g.loadRise) + MIN_STEP_CPUS;
  if (load !== null) {
    const a = baseline === null ? 1 : Math.min(1, (now - prev.loadAt!) / BASELINE_TAU_MS);
    state.loadBaseline = baseline === null ? load : baseline + a * (load - baseline);
    state.loadAt = now;
  }

  // Bands: growth only above minSlack held for a cool-down; below shrinkSlack, shrink.
  // Unknown latency never justifies growth; it does not clamp either (the service may be
  // down for reasons of its own), so it holds.
  // "Since when" needs an unbroken run of rounds: a gap starts them again.
  const comfortable = s.unknown.length === 0 && s.min >= g.minSlack && !settling;
  const held = (t: number | null): number => (gap || t === null ? now : t);
  state.highSince = comfortable ? held(prev.highSince) : null;
  state.lowSince = s.min < g.shrinkSlack ? held(prev.lowSince) : null;
  state.violatingSince = violating ? held(prev.violatingSince) : null;

  // A release under evaluation: its cost is the slack it lost, measured once the window
  // has refreshed (or at once, if it led to danger).
  const trial = state.trial;
  const win = Math.max(windowMs, 1000);
  // A breach after the cost was learnt is learnt too: it is the cost that counts.
  if (trial && Number.isFinite(s.min) && (!trial.learnt || (violating && !trial.breachLearnt)) && (violating || rising || now - trial.at >= win)) {
    state.effects = learnEffect(prev.effects, trial.knob, trial.slackBefore - s.min);
    state.trial = { ...trial, learnt: true, ...(violating ? { breachLearnt: true } : {}) };
  }
  // The latest release is the suspect for danger that follows, until the next change
  // replaces it (a release, a clamp) or two cool-downs have passed.
  // An escalated knob's release stays the suspect until a breach has had time to earn it back.
  const blameFor = (k: CgroupKnob): number => Math.max(2 * win, 2 * g.cooldownMs) + (esc.includes(k) ? ESCALATE_WINDOWS * windowMs : 0);
  if (state.trial && (now - state.trial.at > blameFor(state.trial.knob) || (state.trial.learnt && violating && !esc.includes(state.trial.knob)))) state.trial = null;
  // A breach that follows a release (`reverted`) counts as a repeat: that release is
  // direct evidence this load needs the knob, and each new try costs a bad window (redis
  // at 60-80%, 2026-12-02: a try every 30 s, each a 18-60 ms second).
  // Its load is the load the release was made at: the service's CPU use rises under the
  // interference the release let in, and falls back once it is reverted, which read as
  // "load has fallen" and let the same release be tried again within seconds (redis 60%).
  const breachAt = (level: number, backoffFrom: Breach | null, reverted: { load?: number | null } | null = null): Breach => {
    const repeat = backoffFrom !== null && now - backoffFrom.at < 4 * backoffFrom.backoffMs;
    const backoffMs = repeat ? Math.min(2 * backoffFrom.backoffMs, g.maxBackoffMs) : reverted ? Math.min(2 * g.backoffMs, g.maxBackoffMs) : g.backoffMs;
    // Otherwise the baseline (the load it happened at), not a reading that jumped.
    return { at: now, load: reverted?.load ?? baseline ?? load, level, backoffMs, slo };
  };

  let why = '';
  let tightened = false;
  const danger = violating || (rising && K > 0);
  const persistent = violating && since(now, state.violatingSince) >= ESCALATE_WINDOWS * windowMs;
  // PARTIES' revert: danger soon after a release was that release's doing (a breach, or
  // the service's CPU use jumping: under interference it works harder per request); undo
  // it alone (a setting known to hold) and block it.
  // An escalated knob given back is reverted only by a breach that earns it again.
  const revertible = trial !== null && (esc.includes(trial.knob) ? persistent : danger) && prev.level < K && prev.order[prev.level] === trial.knob && now - trial.at <= blameFor(trial.knob);
  const showingRevert = danger && since(now, prev.revertedAt) < win;
  if (revertible) {
    state.level = prev.level + 1;
    // Re-rank among the applied knobs only (the set applied does not change), so the
    // knob just measured to matter is not the next one given back.
    const ranked = rankKnobs(pool.knobs, state.effects, keptKnobs(policy.pool), esc);
    const on = prev.order.slice(0, state.level);
    state.order = [...ranked.filter((k) => on.includes(k)), ...prev.order.slice(state.level)];
    state.clampedAt = now;
    state.revertedAt = now;
    state.trial = null;
    tightened = true;
    state.breach = breachAt(prev.level, state.breach, trial);
    why = `${violating ? `breach: ${s.worst} (slack ${fmt(s.min)})` : `load step: services' CPU ${fmt(load!)} vs ${fmt(baseline!)} before`} ${Math.round(now - trial.at)} ms after releasing ${trial.knob}: revert it`;
  } else if (danger && prev.level < F && !showingRevert) {
    // Clamp at once and fully: one knob per window left the tail several times worse.
    state.order = rankKnobs(pool.knobs, state.effects, keptKnobs(policy.pool), esc);
    state.level = F;
    state.clampedAt = now;
    state.trial = null;
    tightened = true;
    why = violating ? `breach: ${s.worst} (slack ${fmt(s.min)})` : `load step: services' CPU ${fmt(load!)} vs ${fmt(baseline!)} before`;
    why += `: clamp ${state.order.slice(0, F).join(', ')}`;
    state.breach = breachAt(prev.level, state.breach);
  } else if (persistent && prev.level < K && !showingRevert) {
    // The breach outlasted the fast knobs: escalate (the cpuset).
    const on = prev.order.slice(0, prev.level);
    state.order = [...on, ...rankKnobs(pool.knobs, state.effects, keptKnobs(policy.pool), esc).filter((k) => !on.includes(k))];
    state.level = K;
    state.clampedAt = now;
    state.trial = null;
    tightened = true;
    why = `breach: ${s.worst} (slack ${fmt(s.min)}) for ${Math.round(since(now, state.violatingSince))} ms with ${on.join(', ') || 'no knob'} applied: escalate to ${state.order.slice(prev.level).join(', ')}`;
    state.breach = breachAt(prev.level, state.breach);
  } else if (violating && prev.level >= K && pool.knobs.includes('pause') && !prev.paused && since(now, state.violatingSince) >= windowMs && since(now, prev.clampedAt) >= windowMs) {
    state.paused = true;
    state.clampedAt = now;
    tightened = true;
    why = `breach: ${s.worst} (slack ${fmt(s.min)}) for ${Math.round(since(now, state.violatingSince))} ms with ${state.order.join(', ') || 'no knob'} applied: pause`;
  } else if (violating) {
    why = `breach: ${s.worst} (slack ${fmt(s.min)})${showingRevert ? ' after a revert' : ''} with ${state.order.slice(0, state.level).join(', ') || 'no knob'} applied${prev.paused ? ' and paused' : ''}: waiting for the window to show it`;
  } else if (prev.paused || prev.level > keptKnobs(policy.pool).length) {
    const release = releaseGate(policy, prev, state, now, load === null ? null : state.loadBaseline, runDelay);
    if (release.ok && prev.paused) {
      state.paused = false;
      state.releasedAt = now;
      why = `slack ${fmt(s.min)} >= ${g.minSlack}: resume`;
    } else if (release.ok) {
      const knob = prev.order[prev.level - 1]!;
      state.level = prev.level - 1;
      state.releasedAt = now;
      state.highSince = now; // the next release waits for another cool-down
      state.trial = { knob, at: now, slackBefore: s.min, load: baseline ?? load };
      why = `slack ${fmt(s.min)} >= ${g.minSlack} for ${Math.round(g.cooldownMs)} ms: release ${knob}`;
    } else {
      why = `steady: slack ${fmt(s.min)}, ${state.order.slice(0, state.level).join(', ')}${prev.paused ? ', paused' : ''} applied${release.why ? ` (${release.why})` : ''}`;
    }
  } else {
    const kept = state.order.slice(0, state.level);
    why = s.unknown.length ? `holding: no latency for ${s.unknown.join(', ')}` : `steady: slack ${fmt(s.min)}, ${kept.length ? `only ${kept.join(', ')} (kept applied)` : 'nothing clamped'}`;
  }
  if (settling && !tightened) why += ' (rounds resumed after a gap: latency not acted on for a window)';
  const applied = state.order.slice(0, state.level);
  if (applied.includes('cpuset') !== prev.order.slice(0, prev.level).includes('cpuset')) state.cpusetChangedAt = now;

  const split = cpuSplit(obs.host.cpus, policy.services, pool.reserve.cpus);
  const on = new Set(applied);
  const desired: Desired = {
    pool: settingsFor(pool.knobs.filter((k) => k === 'cpuset' || k === 'cpu.idle'), on, split, 1),
    sandboxes: obs.sandboxes.filter((sb) => !sb.suspended).map((sb) => ({ id: sb.id, knobs: settingsFor(pool.knobs, on, split, sb.vcpus), paused: state.paused })),
    applied, reason: why,
  };

  // Memory first (memory.ts), whatever the fast path does: it may pause a guest as a stop-gap.
  const mem = memoryPlan(policy, obs, prev.memory, { comfortable, cooldownMs: g.cooldownMs });
  for (const d of desired.sandboxes) if (mem.pause.includes(d.id)) d.paused = true;
  // Structural steps only when the fast path is not moving this round.
  const fastMoved = state.level !== prev.level || state.paused !== prev.paused;
  const structural = fastMoved || mem.step ? { actions: [], state } : structuralActions(policy, obs, state, { minSlack: s.min, comfortable, runDelay });
  const actions: Action[] = mem.step ? [mem.step] : structural.actions;
  const reason = [why, mem.why, ...actions.map((a) => a.reason)].filter(Boolean).join('; ');
  return { desired, actions, state: { ...structural.state, memory: mem.state }, slack: s.perService, tightened, reason };
}

/** Whether the fast path may give one step back now, and if not, what holds it. */
function releaseGate(policy: ControllerPolicy, prev: ControllerState, next: ControllerState, now: number, avgLoad: number | null, runDelay: number | null): { ok: boolean; why: string } {
  const g = policy.pool.growth;
  if (next.highSince === null || now - next.highSince < g.cooldownMs) return { ok: false, why: '' };
  if (since(now, prev.clampedAt) < g.reverseMs) return { ok: false, why: `no release within ${g.reverseMs / 1000} s of a clamp` };
  if (since(now, prev.releasedAt) < g.cooldownMs) return { ok: false, why: '' };
  if (runDelay !== null && runDelay >= g.maxCpuPressure) return { ok: false, why: `services waited ${runDelay.toFixed(0)}% of the time for a CPU` };
  const releasing = prev.paused ? null : prev.order[prev.level - 1];
  if (releasing === 'cpuset' && since(now, prev.cpusetChangedAt) < g.cpusetIntervalMs) return { ok: false, why: `cpuset changed less than ${g.cpusetIntervalMs / 1000} s ago` };
  const b = next.breach;
  if (b && !prev.paused && prev.level - 1 <= b.level) {
    // The slow average, and by a real step: one 200 ms reading at low load swings by a
    // third (redis at 60%: 0.07 against 0.09 at the breach let a release through early).
    const fell = avgLoad !== null && b.load !== null && avgLoad < b.load * LOAD_FALL && b.load - avgLoad >= MIN_STEP_CPUS;
    const waited = now - b.at >= b.backoffMs;
    if (!fell && !waited) return { ok: false, why: `breach memory: ${Math.round((b.backoffMs - (now - b.at)) / 1000)} s of back-off left, load ${avgLoad === null ? 'unknown' : avgLoad.toFixed(2)} vs ${b.load === null ? '?' : b.load.toFixed(2)} CPUs at the breach` };
  }
  return { ok: true, why: '' };
}
