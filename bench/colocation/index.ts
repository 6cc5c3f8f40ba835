// Public door of the colocation benchmark's parts (main.ts runs it): the batch jobs, a
// measured cell, the load generators and capacity, the policy it gives lodgerd.
export { JOBS, startDirect, startDaemon, type DirectBatch, type DaemonBatch } from './batch.ts';
export { measureCell, probeP99, type Cell, type Service } from './cell.ts';
export { load, measureCapacity, summarise, windowP99s } from './load.ts';
export { policyYaml } from './policy.ts';
