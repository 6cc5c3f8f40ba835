// The memory path of the controller, pure like decide(): give memory back fast under
// pressure, take it back slowly once pressure has been gone a while.
//
// Pressure is the budget's available memory (inactive file cache counts as available:
// reclaiming cold cache is not danger) below the pool's reserve, or, with the budget
// nearly full, memory stalls (PSI "some"/"full" over the last second) or refaults
// (cache evicted and read straight back): thrashing that a free-memory figure misses.
// Where the online services' processes are known, their own memory's growth over the
// last second is projected two seconds ahead: a service that grows is given room before
// its memory runs out, and no memory is taken back while it grows.
// On pressure, one step at a time, each read back from the size the sandbox reports:
// - shrink the largest running guest by virtio-mem, by what is missing (at least a
//   memory step) to stand a step above the reserve, never more than the guest says it can spare (its MemAvailable above a
//   floor) nor below the pool's minimum;
// - a guest that gave back less than asked (or nothing in time) is not asked again: it
//   is suspended to disk, as is the largest guest when no guest can shrink, when the
//   budget is critical (under half the reserve, or "full" stalls) and shrinking cannot
//   cover what is missing, or when pressure has outlasted SUSPEND_AFTER_MS of steps;
// - while a suspend writes and pressure lasts, the other guests are paused (a paused
//   guest touches no new memory), and resumed when it has finished.
// Taking back (Senpai's asymmetry: loosen at once, tighten slowly): only after CALM_COOLDOWNS
// cool-downs without pressure and with the services comfortable, one step per
// TAKE_COOLDOWNS cool-downs: restore one suspended sandbox when the whole of it fits
// beyond the reserve, else grow a guest short of memory by at most half the room left.
import type { ControllerPolicy, Observations, SandboxObservation } from './decide.ts';

/** The memory lodgerd guards: the host's, or the budget cgroup standing in for it. */
export interface MemoryObservation {
  /** 'host', or the budget cgroup's directory. */
  source: string;
  totalBytes: number;
  usedBytes: number;
  /** Total minus usage plus inactive file cache. */
  availableBytes: number;
  /** Share of the last second some / all non-idle tasks stalled on memory, percent; null without PSI. */
  someStallPct: number | null;
  fullStallPct: number | null;
  /** Whose PSI: the budget cgroup's (v2) or the host's (v1, or no budget). */
  psiSource: 'cgroup' | 'host' | null;
  /** File pages refaulted per second (evicted, then read straight back). */
  refaultsPerSec: number | null;
  /** OOM kills counted so far (budget: memory.events / memory.oom_control; host: vmstat). */
  oomKills: number | null;
}

export interface MemoryStep {
  sandbox: string;
  kind: 'shrink' | 'grow' | 'suspend' | 'restore';
  fromMiB: number;
  toMiB: number;
  at: number;
}

export interface MemoryState {
  /** Since when pressure has lasted without relief; since when there has been none. */
  pressureSince: number | null;
  calmSince: number | null;
  /** Steps under way, at most one per sandbox; judged by what the sandboxes report. */
  pending: MemoryStep[];
  /** Guests that did not give back what they were asked: suspended next, not asked again. */
  refused: string[];
  /** When memory was last taken back (grow or restore). */
  tookAt: number | null;
  /** The last finished give-back: how much, how fast (for status and benchmarks). */
  last: { sandbox: string; kind: MemoryStep['kind']; gaveMiB: number; ms: number } | null;
  /** The online services' own memory (where their processes are known) over the last GROWTH_SPAN_MS. */
  services?: { t: number; mib: number }[];
}

export const INITIAL_MEMORY_STATE: MemoryState = { pressureSince: null, calmSince: null, pending: [], refused: [], tookAt: null, last: null };

const MiB = 1048576;
/** Memory stalls over this share of the last second count as thrashing (with the budget nearly full). */
export const SOME_STALL_PCT = 10;
export const FULL_STALL_PCT = 5;
/** File refaults per second (4 KiB pages) that count as thrashing: 16 MiB/s read back. */
const REFAULTS_PER_SEC = 4096;
/** A guest keeps this much of its MemAvailable when it gives memory back. */
const GUEST_FLOOR_MIB = 48;
/** A give-back smaller than this is not worth a virtio-mem step: suspend instead. */
const MIN_USEFUL_MIB = 16;
/** A shrink not reported done within this long is a refusal (the runtime gives up on a stalled guest within 10 s under TCG). */
export const SHRINK_WAIT_MS = 15_000;
const SUSPEND_WAIT_MS = 180_000;
const GROW_WAIT_MS = 60_000;
/** Pressure that outlasts steps this long: suspend. */
export const SUSPEND_AFTER_MS = 20_000;
const CALM_COOLDOWNS = 3;
/** The services' growth is measured over this span and projected this far ahead: a suspend
 *  (the slowest give-back, 0.3-0.9 s in bench:memory) must be done before the memory is gone. */
const GROWTH_SPAN_MS = 1000;
const LOOKAHEAD_S = 2;
/** Services growing faster than this are not calm: nothing is taken back meanwhile. */
const CALM_GROWTH_MIB_S = 4;
const TAKE_COOLDOWNS = 2;

/** Steps are whole multiples of what a guest can unplug at once: Linux's virtio-mem
 *  subblock is max(the device block, 2 MiB, a pageblock), 4 MiB on our guest kernel
 *  (no hugetlbfs); a 2 MiB remainder is never given back and read as a refusal. */
const GRAIN_MIB = 4;
const grain = (x: number): number => GRAIN_MIB * Math.floor(x / GRAIN_MIB);
const live = (x: SandboxObservation): boolean => !x.suspended && !x.suspending;

export interface MemoryPlan {
  state: MemoryState;
  /** At most one new step per round. */
  step: { kind: 'resize'; sandbox: string; memoryMiB: number; reason: string } | { kind: 'suspend' | 'restore'; sandbox: string; reason: string } | null;
  /** Sandboxes to hold paused as a stop-gap while a suspend writes. */
  pause: string[];
  /** One line on the memory situation (and what finished this round). */
  why: string;
  /** Whether the memory guarded is under pressure now (holds back CPU growth too). */
  pressure: boolean;
}

/**
 * The memory signals as one verdict, with the numbers behind it. `growthMiBPerS`: how
 * fast the online services' own memory grows (serviceGrowth); where it does, what is
 * available is judged LOOKAHEAD_S ahead, so the give-back starts while the service grows,
 * not once its memory is gone.
 */
export function memoryPressure(policy: ControllerPolicy, obs: Observations, growthMiBPerS = 0): { pressure: boolean; critical: boolean; calm: boolean; availMiB: number; aheadMiB: number; reserveMiB: number; why: string } {
  const m = obs.host.memory;
  const availMiB = (m?.availableBytes ?? obs.host.memAvailableBytes) / MiB;
  const aheadMiB = availMiB - Math.max(0, growthMiBPerS) * LOOKAHEAD_S;
  const reserveMiB = policy.pool.reserve.memoryBytes / MiB;
  const step = policy.pool.growth.memoryStepMiB;
  const some = m?.someStallPct ?? null;
  const full = m?.fullStallPct ?? null;
  const refaults = m?.refaultsPerSec ?? null;
  const short = aheadMiB < reserveMiB;
  // Stalls and refaults speak for the budget only when it is nearly full: on v1 the PSI
  // is the host's, and other work on the host stalls there too.
  const nearlyFull = availMiB < 2 * reserveMiB + step;
  const stalls = (some ?? 0) >= SOME_STALL_PCT || (full ?? 0) >= FULL_STALL_PCT;
  const thrash = nearlyFull && (stalls || (refaults ?? 0) >= REFAULTS_PER_SEC);
  const pressure = short || thrash;
  const critical = availMiB < reserveMiB / 2 || (nearlyFull && (full ?? 0) >= FULL_STALL_PCT);
  const calm = !pressure && availMiB >= reserveMiB + step && (some ?? 0) < 1 && (full ?? 0) < 0.5 && growthMiBPerS < CALM_GROWTH_MIB_S;
  const sig = [`available ${availMiB.toFixed(0)} MiB (reserve ${reserveMiB.toFixed(0)})`];
  if (growthMiBPerS >= 1) sig.push(`services growing ${growthMiBPerS.toFixed(0)} MiB/s (${aheadMiB.toFixed(0)} MiB in ${LOOKAHEAD_S} s)`);
  if (some !== null) sig.push(`stalls some ${some.toFixed(1)}% full ${(full ?? 0).toFixed(1)}%`);
  if (refaults !== null && refaults > 0) sig.push(`refaults ${refaults.toFixed(0)}/s`);
  return { pressure, critical, calm, availMiB, aheadMiB, reserveMiB, why: `memory ${sig.join(', ')}` };
}

/**
 * The online services' memory, summed where their processes are known, kept for
 * GROWTH_SPAN_MS, and its growth over that span in MiB/s (0 with no two samples 200 ms
 * apart). Resident memory only: what the kernel would have to find room for.
 */
export function serviceGrowth(obs: Observations, prev: { t: number; mib: number }[] = []): { samples: { t: number; mib: number }[]; mibPerS: number } {
  const known = obs.services.map((s) => s.memoryBytes).filter((b): b is number => typeof b === 'number' && Number.isFinite(b));
  if (!known.length) return { samples: [], mibPerS: 0 };
  const samples = [...prev.filter((x) => obs.now - x.t <= GROWTH_SPAN_MS && x.t < obs.now), { t: obs.now, mib: known.reduce((a, b) => a + b, 0) / MiB }].slice(-64);
  const first = samples[0]!;
  const dt = (obs.now - first.t) / 1000;
  return { samples, mibPerS: dt >= 0.2 ? (samples.at(-1)!.mib - first.mib) / dt : 0 };
}

export function memoryPlan(policy: ControllerPolicy, obs: Observations, prevIn: MemoryState | undefined, o: { comfortable: boolean; cooldownMs: number }): MemoryPlan {
  const prev = prevIn ?? INITIAL_MEMORY_STATE;
  const now = obs.now;
  const { pool } = policy;
  const step = pool.growth.memoryStepMiB;
  const minMiB = pool.sandbox.minMemoryMiB;
  const maxMiB = pool.sandbox.maxMemoryMiB;
  const growth = serviceGrowth(obs, prev.services);
  const p = memoryPressure(policy, obs, growth.mibPerS);
  const byId = new Map(obs.sandboxes.map((x) => [x.id, x]));
  const state: MemoryState = { ...prev, pending: [], refused: prev.refused.filter((id) => byId.has(id)), services: growth.samples };
  const notes: string[] = [];

  // Read back every step under way from what its sandbox reports now.
  let relieved = false;
  for (const s of prev.pending) {
    const sb = byId.get(s.sandbox);
    const age = now - s.at;
    if (!sb) continue;
    if (s.kind === 'shrink') {
      if (sb.memoryMiB <= s.toMiB) {
        state.last = { sandbox: s.sandbox, kind: 'shrink', gaveMiB: s.fromMiB - sb.memoryMiB, ms: age };
        notes.push(`${s.sandbox} gave back ${s.fromMiB - sb.memoryMiB} MiB in ${age} ms`);
        relieved = true;
      } else if (sb.memoryMiB < s.fromMiB || age > SHRINK_WAIT_MS || sb.suspended) {
        // Part of it, or nothing in time: this guest cannot release more now.
        state.last = { sandbox: s.sandbox, kind: 'shrink', gaveMiB: s.fromMiB - sb.memoryMiB, ms: age };
        if (!state.refused.includes(s.sandbox)) state.refused.push(s.sandbox);
        notes.push(`${s.sandbox} gave back ${s.fromMiB - sb.memoryMiB} of ${s.fromMiB - s.toMiB} MiB asked`);
        relieved = sb.memoryMiB < s.fromMiB;
      } else state.pending.push(s);
    } else if (s.kind === 'suspend') {
      if (sb.suspended) {
        state.last = { sandbox: s.sandbox, kind: 'suspend', gaveMiB: s.fromMiB, ms: age };
        notes.push(`${s.sandbox} suspended in ${age} ms`);
        relieved = true;
      } else if (age <= SUSPEND_WAIT_MS) state.pending.push(s);
    } else if (s.kind === 'restore') {
      if (!sb.suspended && !sb.suspending) {
        notes.push(`${s.sandbox} restored in ${age} ms`);
        state.refused = state.refused.filter((id) => id !== s.sandbox);
      } else if (age <= SUSPEND_WAIT_MS) state.pending.push(s);
    } else if (sb.memoryMiB < s.toMiB && age <= GROW_WAIT_MS) state.pending.push(s);
  }
  const busy = new Set(state.pending.map((s) => s.sandbox));
  state.pressureSince = p.pressure ? (relieved || prev.pressureSince === null ? now : prev.pressureSince) : null;
  state.calmSince = p.calm ? (prev.calmSince ?? now) : null;

  let next: MemoryPlan['step'] = null;
  const begin = (sb: SandboxObservation, kind: MemoryStep['kind'], toMiB: number): void => {
    state.pending.push({ sandbox: sb.id, kind, fromMiB: sb.memoryMiB, toMiB, at: now });
  };
  const running = obs.sandboxes.filter((x) => live(x) && !busy.has(x.id));
  const suspending = state.pending.some((s) => s.kind === 'suspend');

  if (p.pressure) {
    // Give back enough to stand a step above the reserve (where calm begins), not just at it.
    const needMiB = Math.max(0, p.reserveMiB + step - p.aheadMiB);
    const spare = (x: SandboxObservation): number => {
      const guest = x.guestMemAvailableMiB === null ? step : x.guestMemAvailableMiB - GUEST_FLOOR_MIB;
      return grain(Math.min(x.memoryMiB - minMiB, guest));
    };
    const shrinkable = running.filter((x) => !x.paused && !state.refused.includes(x.id) && spare(x) >= MIN_USEFUL_MIB).sort((a, b) => b.memoryMiB - a.memoryMiB);
    // A guest shrinking now can give more once its step is done: what it spares beyond that step.
    const after = state.pending.filter((x) => x.kind === 'shrink').reduce((n, x) => {
      const sb = byId.get(x.sandbox);
      return n + (sb ? Math.max(0, spare(sb) - (sb.memoryMiB - x.toMiB)) : 0);
    }, 0);
    const releasable = shrinkable.reduce((n, x) => n + spare(x), 0) + after;
    const late = state.pressureSince !== null && now - state.pressureSince >= SUSPEND_AFTER_MS;
    // Who goes to disk: a guest that refused first, then the largest.
    const victims = running.filter((x) => x.memoryMiB > 0).sort((a, b) => Number(state.refused.includes(b.id)) - Number(state.refused.includes(a.id)) || b.memoryMiB - a.memoryMiB);
    // A shrink under way is waited for (its guest is not "unable to shrink", only busy),
    // unless the budget is critical and it cannot cover what is missing, or pressure is late.
    const shrinking = state.pending.filter((x) => x.kind === 'shrink').reduce((n, x) => n + x.fromMiB - x.toMiB, 0);
    const mustSuspend = (shrinkable.length === 0 && shrinking === 0) || (p.critical && releasable + shrinking < needMiB) || late;
    if (!mustSuspend && state.pending.length === 0) {
      const big = shrinkable[0]!;
      const to = big.memoryMiB - Math.min(spare(big), Math.max(step, grain(needMiB + GRAIN_MIB)));
      begin(big, 'shrink', to);
      next = { kind: 'resize', sandbox: big.id, memoryMiB: to, reason: `${p.why}: give back ${big.memoryMiB - to} MiB of ${big.id} (${big.memoryMiB} -> ${to} MiB, its guest has ${big.guestMemAvailableMiB ?? '?'} MiB available)` };
    } else if (mustSuspend && !suspending && victims[0]) {
      const v = victims[0];
      begin(v, 'suspend', 0);
      const because = late ? `pressure for ${Math.round((now - state.pressureSince!) / 1000)} s despite give-back`
        : shrinkable.length === 0 && shrinking === 0 ? (state.refused.includes(v.id) ? `${v.id} did not give back what it was asked` : 'no guest can give back more')
          : `critical and shrinking frees at most ${releasable + shrinking} of ${needMiB.toFixed(0)} MiB missing`;
      next = { kind: 'suspend', sandbox: v.id, reason: `${p.why}: ${because}: suspend ${v.id} (${v.memoryMiB} MiB) to disk` };
    }
  } else if (state.pending.length === 0 && o.comfortable && state.calmSince !== null && now - state.calmSince >= CALM_COOLDOWNS * o.cooldownMs &&
             (state.tookAt === null || now - state.tookAt >= TAKE_COOLDOWNS * o.cooldownMs)) {
    const roomMiB = p.availMiB - p.reserveMiB;
    // The whole sandbox plus a step for its VMM's own memory must fit beyond the reserve.
    const back = obs.sandboxes.filter((x) => x.suspended).sort((a, b) => a.memoryMiB - b.memoryMiB).find((x) => roomMiB - x.memoryMiB - step > 0);
    const short = running.filter((x) => !x.paused && x.guestMemAvailableMiB !== null && x.guestMemAvailableMiB < x.memoryMiB / 4 && x.memoryMiB < maxMiB)
      .sort((a, b) => a.guestMemAvailableMiB! - b.guestMemAvailableMiB!)[0];
    if (back) {
      begin(back, 'restore', back.memoryMiB);
      state.tookAt = now;
      next = { kind: 'restore', sandbox: back.id, reason: `${p.why}, calm for ${Math.round((now - state.calmSince) / 1000)} s: room for ${back.id} (${back.memoryMiB} MiB) beyond the reserve: restore it from disk` };
    } else if (short) {
      const by = grain(Math.min(step, maxMiB - short.memoryMiB, roomMiB / 2));
      if (by >= GRAIN_MIB) {
        begin(short, 'grow', short.memoryMiB + by);
        state.tookAt = now;
        next = { kind: 'resize', sandbox: short.id, memoryMiB: short.memoryMiB + by, reason: `${p.why}, calm: guest MemAvailable ${short.guestMemAvailableMiB} MiB < 1/4 of ${short.memoryMiB} MiB: +${by} MiB` };
      }
    }
  }
  // The stop-gap: while a suspend writes and pressure lasts, the other guests hold still.
  const writing = state.pending.find((s) => s.kind === 'suspend');
  const pause = writing && p.pressure ? obs.sandboxes.filter((x) => live(x) && x.id !== writing.sandbox && !state.pending.some((s) => s.sandbox === x.id)).map((x) => x.id) : [];
  const why = [p.pressure && !next ? `${p.why}${p.critical ? ' (critical)' : ''}` : '', ...notes, pause.length ? `paused ${pause.join(', ')} while ${writing!.sandbox} is written to disk` : ''].filter(Boolean).join('; ');
  return { state, step: next, pause, why, pressure: p.pressure };
}
