// The policy the benchmarks give lodgerd: one online service with its probe and SLO, and
// the batch pool the colocation benchmark measured its knob order for.
import type { OnlineServicePolicy } from '../../control/index.ts';

export interface PolicyService { name: string; probe: NonNullable<OnlineServicePolicy['probe']>; pidFile: string }

export function policyYaml(svc: PolicyService, targetMs: number, serviceCpus: string): string {
  const p = svc.probe;
  const probe = p.kind === 'http' ? `{ http: { url: "${p.url}" }, interval: 20ms, timeout: 200ms }` : `{ redis: { address: "${p.host}:${p.port}" }, interval: 20ms, timeout: 200ms }`;
  return `apiVersion: lodger.dev/v1
kind: OnlineService
metadata: { name: ${svc.name} }
spec:
  slo: { percentile: 99, target: ${targetMs.toFixed(3)}ms, window: 1s }
  probe: ${probe}
  cpus: "${serviceCpus}"
  process: { pidFile: ${svc.pidFile} }
---
apiVersion: lodger.dev/v1
kind: BatchPool
metadata: { name: default }
spec:
  reserve: { cpus: 1, memory: 1Gi }
  sandbox: { minVcpus: 1, maxVcpus: 2, minMemory: 256Mi, maxMemory: 1Gi }
  # The prior, as measured here once cpu.idle is on the batch parent (docs/BENCHMARKS.md,
  # 2026-12-01): cpu.idle holds the tail best, so the cpuset is given back before it.
  knobs: [cpu.idle, cpuset, cpu.weight]
  growth: { cooldown: 3s, minSlack: 0.05, shrinkSlack: 0, memoryStep: 256Mi }
`;
}
