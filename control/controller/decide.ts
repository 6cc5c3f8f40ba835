// The QoS controller: a pure function from policy, observations and its own previous
// state to a plan. No I/O, no clock: time comes in with the observations. Every action
// says why. The actuator applies plans; this file only decides.
import type { BatchPoolPolicy, Knob, OnlineServicePolicy } from '../policy/index.ts';

export interface ServiceObservation {
  name: string;
  /** Latency at the SLO percentile over the SLO window; null with no samples yet. */
  latencyMs: number | null;
  /** Why there is no usable latency (connection refused, malformed metrics...). */
  error: string | null;
}

export interface HostObservation {
  cpus: number;
  /** PSI "some" avg10 for CPU, percent. */
  cpuPressure: number;
  memAvailableBytes: number;
}

export interface SandboxObservation {
  id: string;
  vcpus: number;
  memoryMiB: number;
  paused: boolean;
  /** Saved to disk, no VMM running (the memory path's last step). */
  suspended?: boolean;
  /** Guest MemAvailable, when the guest reports it. */
  guestMemAvailableMiB: number | null;
}

export interface Observations {
  now: number;
  services: ServiceObservation[];
  host: HostObservation;
  sandboxes: SandboxObservation[];
}

/** cgroup knobs in the sandbox contract's vocabulary (v2 units). */
export interface KnobSettings {
  cpuIdle?: boolean;
  cpus?: string;
  cpuWeight?: number;
  cpuMax?: { quotaUs: number; periodUs: number } | null;
}

export type Action =
  | { kind: 'knobs'; sandbox: string; knobs: KnobSettings; reason: string }
  | { kind: 'pause' | 'resume'; sandbox: string; reason: string }
  /** Save to disk and end the VMM / bring back from disk: slow, structural. */
  | { kind: 'suspend' | 'restore'; sandbox: string; reason: string }
  | { kind: 'resize'; sandbox: string; vcpus?: number; memoryMiB?: number; reason: string };

export interface ControllerState {
  /** Fast-path level: the first `level` knobs of the pool's order are applied. */
  level: number;
  levelChangedAt: number;
  /** Since when slack has stayed below shrinkSlack / at or above minSlack (null: not now). */
  lowSince: number | null;
  highSince: number | null;
  lastResizeAt: number;
  lastDirection: 'grow' | 'shrink' | null;
  wasViolating: boolean;
}

export interface Plan {
  actions: Action[];
  state: ControllerState;
  /** Per service: (target - measured) / target, or null when unknown. */
  slack: Record<string, number | null>;
  /** One line on why the plan is what it is (also when it is empty). */
  reason: string;
}

export const INITIAL_STATE: ControllerState = {
  level: 0, levelChangedAt: -Infinity, lowSince: null, highSince: null, lastResizeAt: -Infinity, lastDirection: null, wasViolating: false,
};

export interface ControllerPolicy {
  services: OnlineServicePolicy[];
  pool: BatchPoolPolicy;
}

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

/** The cgroup settings (or pause) that knob `k` means, on and off. */
function knobSettings(k: Knob, on: boolean, split: { all: string; batch: string }, vcpus: number): KnobSettings | 'pause' | 'resume' {
  switch (k) {
    case 'cpu.idle': return { cpuIdle: on };
    case 'cpuset': return { cpus: on ? split.batch : split.all };
    case 'cpu.weight': return { cpuWeight: on ? 1 : 100 };
    // Half of the sandbox's vCPUs; measured to hurt the online tail on some hosts, so
    // it is not in the default order.
    case 'cpu.max': return { cpuMax: on ? { quotaUs: 50_000 * vcpus, periodUs: 100_000 } : null };
    case 'pause': return on ? 'pause' : 'resume';
  }
}

function knobActions(knob: Knob, on: boolean, obs: Observations, policy: ControllerPolicy, reason: string): Action[] {
  const split = cpuSplit(obs.host.cpus, policy.services, policy.pool.reserve.cpus);
  return obs.sandboxes.filter((sb) => !sb.suspended).map((sb): Action => {
    const s = knobSettings(knob, on, split, sb.vcpus);
    if (s === 'pause' || s === 'resume') return { kind: s, sandbox: sb.id, reason };
    return { kind: 'knobs', sandbox: sb.id, knobs: s, reason };
  });
}

const fmt = (x: number): string => x.toFixed(2);

export function decide(policy: ControllerPolicy, obs: Observations, prev: ControllerState): Plan {
  const { pool } = policy;
  const g = pool.growth;
  const state: ControllerState = { ...prev };
  const actions: Action[] = [];
  const slack: Record<string, number | null> = {};

  // Slack per service = (target - measured) / target.
  let minSlack = Infinity;
  let worst = '';
  const unknown: string[] = [];
  for (const svc of policy.services) {
    const o = obs.services.find((x) => x.name === svc.name);
    if (!o || o.latencyMs === null || o.error) {
      slack[svc.name] = null;
      unknown.push(`${svc.name}${o?.error ? ` (${o.error})` : ''}`);
      continue;
    }
    const s = (svc.slo.targetMs - o.latencyMs) / svc.slo.targetMs;
    slack[svc.name] = s;
    if (s < minSlack) {
      minSlack = s;
      worst = `${svc.name} p${svc.slo.percentile} ${o.latencyMs.toFixed(2)} ms vs ${+svc.slo.targetMs.toFixed(3)} ms`;
    }
  }
  const violating = minSlack < 0;
  // Unknown latency never justifies growth; it does not clamp either (the service may be
  // down for reasons of its own), so it holds.
  const canGrow = unknown.length === 0 && minSlack >= g.minSlack;

  state.lowSince = minSlack < g.shrinkSlack ? (prev.lowSince ?? obs.now) : null;
  state.highSince = canGrow ? (prev.highSince ?? obs.now) : null;
  state.wasViolating = violating;
  const windowMs = Math.max(...policy.services.map((s) => s.slo.windowMs), 0);

  // ---- fast path: host-side knobs, in the policy's order ----
  if (violating && state.level < pool.knobs.length) {
    // First tick of a violation: act now. While it lasts, escalate again only once the
    // window has refreshed, so the previous step's effect can show in the percentile.
    const firstTick = !prev.wasViolating;
    if (firstTick || obs.now - prev.levelChangedAt >= windowMs) {
      const knob = pool.knobs[state.level]!;
      actions.push(...knobActions(knob, true, obs, policy, `breach: ${worst} (slack ${fmt(minSlack)}): apply ${knob}`));
      state.level += 1;
      state.levelChangedAt = obs.now;
    }
  } else if (state.level > 0 && state.highSince !== null && obs.now - state.highSince >= g.cooldownMs &&
             obs.now - prev.levelChangedAt >= g.cooldownMs) {
    // Comfortable for a whole cool-down: release the last knob applied.
    const knob = pool.knobs[state.level - 1]!;
    actions.push(...knobActions(knob, false, obs, policy, `slack ${fmt(minSlack)} >= ${g.minSlack} for ${g.cooldownMs} ms: release ${knob}`));
    state.level -= 1;
    state.levelChangedAt = obs.now;
    state.highSince = obs.now; // the next release waits for another cool-down
  }

  // ---- structural path: vCPUs and memory, one step at a time ----
  const sinceResize = obs.now - prev.lastResizeAt;
  // Changing direction waits twice as long as continuing: no oscillation around the target.
  const cooled = (dir: 'grow' | 'shrink'): boolean =>
    sinceResize >= (prev.lastDirection && prev.lastDirection !== dir ? 2 * g.cooldownMs : g.cooldownMs);
  const memPressure = obs.host.memAvailableBytes < pool.reserve.memoryBytes;
  const resizing = actions.length === 0;

  if (resizing && state.lowSince !== null && obs.now - state.lowSince >= g.cooldownMs && cooled('shrink')) {
    // A paused guest cannot take part in a resize (and costs no CPU while paused).
    const victim = [...obs.sandboxes].filter((s) => s.vcpus > pool.sandbox.minVcpus && !s.suspended && !s.paused).sort((a, b) => b.vcpus - a.vcpus)[0];
    if (victim) {
      actions.push({ kind: 'resize', sandbox: victim.id, vcpus: victim.vcpus - 1,
        reason: `slack ${fmt(minSlack)} < ${g.shrinkSlack} for ${Math.round(obs.now - state.lowSince)} ms: ${victim.vcpus} -> ${victim.vcpus - 1} vCPUs` });
    }
  } else if (resizing && state.level === 0 && state.highSince !== null && obs.now - state.highSince >= g.cooldownMs && cooled('grow') &&
             obs.host.cpuPressure < g.maxCpuPressure && !memPressure) {
    const used = obs.sandboxes.filter((s) => !s.suspended).reduce((n, s) => n + s.vcpus, 0);
    const spare = obs.host.cpus - pool.reserve.cpus - used;
    const smallest = [...obs.sandboxes].filter((s) => s.vcpus < pool.sandbox.maxVcpus && !s.paused && !s.suspended).sort((a, b) => a.vcpus - b.vcpus)[0];
    if (smallest && spare >= 1) {
      actions.push({ kind: 'resize', sandbox: smallest.id, vcpus: smallest.vcpus + 1,
        reason: `slack ${Number.isFinite(minSlack) ? fmt(minSlack) : 'n/a'} >= ${g.minSlack} for ${Math.round(obs.now - state.highSince)} ms, ${spare} host CPU spare: ${smallest.vcpus} -> ${smallest.vcpus + 1} vCPUs` });
    }
  }
  // Memory: give back under host memory pressure (virtio-mem steps, then, with every
  // sandbox at its minimum, suspend one to disk); take more when a guest runs short and
  // the host has room beyond its reserve; bring suspended sandboxes back when it has room
  // for the whole sandbox.
  const structural = (a: Action): boolean => a.kind === 'resize' || a.kind === 'suspend' || a.kind === 'restore';
  if (!actions.some(structural)) {
    const step = g.memoryStepMiB;
    const availMiB = obs.host.memAvailableBytes / 1048576;
    const reserveMiB = pool.reserve.memoryBytes / 1048576;
    const running = obs.sandboxes.filter((s) => !s.suspended);
    if (memPressure && cooled('shrink')) {
      const big = [...running].filter((s) => s.memoryMiB - step >= pool.sandbox.minMemoryMiB && !s.paused).sort((a, b) => b.memoryMiB - a.memoryMiB)[0];
      const why = `host MemAvailable ${availMiB.toFixed(0)} MiB below the ${reserveMiB.toFixed(0)} MiB reserve`;
      if (big) {
        actions.push({ kind: 'resize', sandbox: big.id, memoryMiB: big.memoryMiB - step, reason: `${why}: ${big.memoryMiB} -> ${big.memoryMiB - step} MiB` });
      } else {
        const victim = [...running].sort((a, b) => b.memoryMiB - a.memoryMiB)[0];
        if (victim) actions.push({ kind: 'suspend', sandbox: victim.id, reason: `${why} and every sandbox at its minimum: suspend ${victim.id} to disk` });
      }
    } else if (!memPressure && canGrow && cooled('grow')) {
      const back = obs.sandboxes.find((s) => s.suspended && availMiB - s.memoryMiB - step > reserveMiB);
      const short = running.find((s) => s.guestMemAvailableMiB !== null && s.guestMemAvailableMiB < s.memoryMiB / 4 && s.memoryMiB + step <= pool.sandbox.maxMemoryMiB);
      if (back) {
        actions.push({ kind: 'restore', sandbox: back.id, reason: `host MemAvailable ${availMiB.toFixed(0)} MiB has room for ${back.id} (${back.memoryMiB} MiB) beyond the reserve: restore it from disk` });
      } else if (short && availMiB - step > reserveMiB) {
        actions.push({ kind: 'resize', sandbox: short.id, memoryMiB: short.memoryMiB + step,
          reason: `guest MemAvailable ${short.guestMemAvailableMiB} MiB < 1/4 of ${short.memoryMiB} MiB: +${step} MiB` });
      }
    }
  }
  const change = actions.find(structural);
  if (change) {
    const before = obs.sandboxes.find((s) => s.id === change.sandbox);
    const grow = change.kind === 'restore' || (change.kind === 'resize' &&
      ((change.vcpus ?? 0) > (before?.vcpus ?? Infinity) || (change.memoryMiB ?? 0) > (before?.memoryMiB ?? Infinity)));
    state.lastResizeAt = obs.now;
    state.lastDirection = grow ? 'grow' : 'shrink';
  }

  const reason = actions.length
    ? actions.map((a) => a.reason).filter((r, i, all) => all.indexOf(r) === i).join('; ')
    : violating ? `breach: ${worst} (slack ${fmt(minSlack)}): all knobs applied, waiting`
      : unknown.length ? `holding: no latency for ${unknown.join(', ')}`
        : `steady: min slack ${Number.isFinite(minSlack) ? fmt(minSlack) : 'n/a'}, level ${state.level}`;
  return { actions, state, slack, reason };
}
