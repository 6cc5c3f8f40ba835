// Public door of the control plane: policies, monitoring, the pure controller, the
// actuator and the loop. Never imports sandbox-runtime/ or native/: the actuator is
// handed anything that fits the sandbox contract.
export * from './policy/index.ts';
export * from './controller/index.ts';
export * from './monitor/index.ts';
export { FileStateStore, type StateStore } from './state-store.ts';
export { Actuator, POOL_TARGET, type ActionResult, type ActuatedPool, type ActuatedSandbox } from './actuator.ts';
export { ControlLoop, ProcHostReader, type Decision, type HostReader, type LoopSandbox, type Reaction } from './loop.ts';
