// Public door of the pure QoS controller.
export * from './decide.ts';
export { cpuSplit, expandCpus, rankKnobs, type CgroupKnob, type KnobEffects } from './knobs.ts';
export { serviceSlacks, slack } from './slack.ts';
export { memoryPlan, memoryPressure, INITIAL_MEMORY_STATE, type MemoryObservation, type MemoryState, type MemoryStep } from './memory.ts';
export { batchCapacity, type BatchCapacity } from './capacity.ts';
