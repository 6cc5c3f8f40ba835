// Public door of the control plane: policies, monitoring, the pure controller and the
// actuator. Never imports sandbox-runtime/ or native/: the actuator is handed the contract.
export * from './policy/index.ts';
export * from './controller/decide.ts';
