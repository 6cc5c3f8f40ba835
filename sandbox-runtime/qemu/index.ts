// Door of the QEMU backend. Only the runtime package (open.ts, index.ts) imports it.
export { QemuRuntime, type HostedRuntime, type HostedSandbox, type QemuRuntimeOptions } from './runtime.ts';
export type { VcpuUnplugMode } from './vcpus.ts';
export type { VmmMemory } from './args.ts';
export type { AgentConnection } from './agent.ts';
export { DEFAULT_JAIL, jailReport, readJailStatus, type JailOptions, type JailStatus } from './jail.ts';
