// The BatchPool used when no policy file defines one: batch work may use all but one CPU.
// Written as a policy document so that every default (growth, sizes) comes from the one
// parser and schema that policy files go through. The knob order is stated: the built-in
// pool has always tried cpuset first (the order measured here, docs/BENCHMARKS.md), while
// the schema's default starts with cpu.idle.
import { parsePolicyText, type BatchPoolPolicy } from '../control/index.ts';

const DEFAULT_POOL_YAML = `
apiVersion: lodger.dev/v1
kind: BatchPool
metadata: { name: default }
spec:
  reserve: { cpus: 1, memory: 1Gi }
  sandbox: { maxVcpus: 4, maxMemory: 4Gi }
  knobs: [cpuset, cpu.idle, cpu.weight, pause]
`;

export const DEFAULT_POOL: BatchPoolPolicy = parsePolicyText(DEFAULT_POOL_YAML, '(built in)').pools[0]!;
