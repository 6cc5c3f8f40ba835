// Door of the gVisor backend. Only the runtime package (open.ts, index.ts) imports it.
export { GvisorRuntime, ensureBusyboxRoot, type GvisorRuntimeOptions } from './runtime.ts';
export type { GvisorSandbox } from './sandbox.ts';
export { probeRunsc, SANDBOX_RLIMITS, type GvisorPlatform } from './runsc.ts';
export { gvisorJailReport, gvisorJailViolation } from './jail.ts';
