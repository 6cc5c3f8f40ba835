// The structural path for CPUs: vCPUs one step at a time (memory is memory.ts's).
// Slow (tens of ms to seconds), so it moves only while the fast path holds still, and
// changing direction waits twice as long as continuing: no oscillation around the target.
import type { Action, ControllerPolicy, ControllerState, Observations } from './decide.ts';
import { keptKnobs } from './knobs.ts';

const fmt = (x: number): string => (Number.isFinite(x) ? x.toFixed(2) : 'n/a');

export function structuralActions(
  policy: ControllerPolicy, obs: Observations, state: ControllerState,
  s: { minSlack: number; comfortable: boolean; runDelay: number | null },
): { actions: Action[]; state: ControllerState } {
  const { pool } = policy;
  const g = pool.growth;
  const now = obs.now;
  const actions: Action[] = [];
  const sinceResize = state.lastResizeAt === null ? Infinity : now - state.lastResizeAt;
  const cooled = (dir: 'grow' | 'shrink'): boolean =>
    sinceResize >= (state.lastDirection && state.lastDirection !== dir ? 2 * g.cooldownMs : g.cooldownMs);
  const memPressure = obs.host.memAvailableBytes < pool.reserve.memoryBytes;
  // The services' own run delay where known; host PSI counts batch's own waiting, so it
  // is only the fallback.
  const cpuBusy = s.runDelay ?? obs.host.cpuPressure;
  const running = obs.sandboxes.filter((x) => !x.suspended);

  // With the cpuset applied batch is off the services' CPUs: a vCPU taken away gives them
  // nothing and only slows batch, and with the host's CPUs all lent it was never given
  // back (redis 2026-12-02: 2 -> 1 vCPUs at every breach, batch 20% against static's 41%).
  const offServiceCpus = state.order.slice(0, state.level).includes('cpuset');
  if (state.lowSince !== null && now - state.lowSince >= g.cooldownMs && cooled('shrink') && !offServiceCpus) {
    // A paused guest cannot take part in a resize (and costs no CPU while paused).
    const victim = running.filter((x) => x.vcpus > pool.sandbox.minVcpus && !x.paused).sort((a, b) => b.vcpus - a.vcpus)[0];
    if (victim) {
      actions.push({ kind: 'resize', sandbox: victim.id, vcpus: victim.vcpus - 1,
        reason: `slack ${fmt(s.minSlack)} < ${g.shrinkSlack} for ${Math.round(now - state.lowSince)} ms: ${victim.vcpus} -> ${victim.vcpus - 1} vCPUs` });
    }
  } else if (state.level <= keptKnobs(policy.pool).length && !state.paused && state.highSince !== null && now - state.highSince >= g.cooldownMs && cooled('grow') &&
             cpuBusy < g.maxCpuPressure && !memPressure) {
    const used = running.reduce((n, x) => n + x.vcpus, 0);
    const spare = obs.host.cpus - pool.reserve.cpus - used;
    const smallest = running.filter((x) => x.vcpus < pool.sandbox.maxVcpus && !x.paused).sort((a, b) => a.vcpus - b.vcpus)[0];
    if (smallest && spare >= 1) {
      actions.push({ kind: 'resize', sandbox: smallest.id, vcpus: smallest.vcpus + 1,
        reason: `slack ${fmt(s.minSlack)} >= ${g.minSlack} for ${Math.round(now - state.highSince)} ms, ${spare} host CPU spare: ${smallest.vcpus} -> ${smallest.vcpus + 1} vCPUs` });
    }
  }
  // Memory steps are memory.ts's (pressure-driven, read back, suspend and restore).
  const change = actions[0];
  if (!change) return { actions, state };
  const before = obs.sandboxes.find((x) => x.id === change.sandbox);
  const grow = change.kind === 'restore' || (change.kind === 'resize' &&
    ((change.vcpus ?? 0) > (before?.vcpus ?? Infinity) || (change.memoryMiB ?? 0) > (before?.memoryMiB ?? Infinity)));
  return { actions, state: { ...state, lastResizeAt: now, lastDirection: grow ? 'grow' : 'shrink' } };
}
