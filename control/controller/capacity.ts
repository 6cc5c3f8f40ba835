// The node's batch capacity as the controller sees it this round: the CPUs and memory
// batch work may use now, in total (what running sandboxes hold counts in). It is the
// figure a cluster scheduler or an extended-resource updater reads (lodger_batch_capacity_*);
// nothing here schedules.
import type { ControllerPolicy, Observations, Plan } from './decide.ts';
import { expandCpus } from './knobs.ts';
import { memoryPressure, serviceGrowth } from './memory.ts';

const MiB = 1048576;

export interface BatchCapacity {
  /** CPUs batch may use now (a tenth of a CPU at most off). */
  cpus: number;
  memoryBytes: number;
  /** One line on what limits each. */
  reason: string;
}

/**
 * CPUs: the host's, less the pool's reserve and what the online services use now (where
 * their processes are known), within the batch cpuset where the controller has moved
 * batch off the services' CPUs; none while it holds batch paused. Memory: what the
 * sandboxes hold plus what is available beyond the reserve (the services' growth
 * projected as the memory path does), none of it while memory is under pressure beyond
 * what the sandboxes already hold.
 */
export function batchCapacity(policy: ControllerPolicy, obs: Observations, plan: Pick<Plan, 'state' | 'desired'>): BatchCapacity {
  const { pool } = policy;
  const why: string[] = [];
  let cpus = Math.max(0, obs.host.cpus - pool.reserve.cpus);
  const serviceUse = obs.services.reduce((a, s) => a + (typeof s.cpuUse === 'number' && Number.isFinite(s.cpuUse) ? Math.max(0, s.cpuUse) : 0), 0);
  if (serviceUse > 0) {
    cpus = Math.max(0, cpus - serviceUse);
    why.push(`the services use ${serviceUse.toFixed(2)} CPUs`);
  }
  const cpuset = plan.desired.pool.cpus;
  if (cpuset !== undefined && cpuset !== `0-${obs.host.cpus - 1}`) {
    const width = expandCpus(cpuset).length;
    if (width < cpus) why.push(`batch held to CPUs ${cpuset}`);
    cpus = Math.min(cpus, width);
  }
  if (plan.state.paused) {
    cpus = 0;
    why.push('batch paused for the services');
  }
  const held = obs.sandboxes.filter((s) => !s.suspended).reduce((a, s) => a + s.memoryMiB, 0);
  const m = memoryPressure(policy, obs, serviceGrowth(obs, plan.state.memory?.services).mibPerS);
  const spare = m.pressure ? 0 : Math.max(0, m.aheadMiB - m.reserveMiB);
  if (m.pressure) why.push(`memory under pressure (${m.why})`);
  return {
    cpus: Math.round(cpus * 10) / 10,
    memoryBytes: Math.round((held + spare) * MiB),
    reason: why.length ? why.join('; ') : 'nothing held back beyond the reserve',
  };
}
