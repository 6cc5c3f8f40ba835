// The BatchPool used when no policy file defines one: batch work may use all but one CPU.
// Parsed as a policy document, so every default (knob order, growth, sizes) comes from the
// one schema that policy files go through.
import { defaultPool, type BatchPoolPolicy } from '../control/index.ts';

export const DEFAULT_POOL: BatchPoolPolicy = defaultPool('reserve: { cpus: 1, memory: 1Gi }, sandbox: { maxVcpus: 4, maxMemory: 4Gi }');
