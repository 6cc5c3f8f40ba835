// Public door of the control plane: policies, monitoring, the pure controller, the
// actuator and the loop. Never imports sandbox-runtime/ or native/: the actuator is
// handed anything that fits the sandbox contract.
export * from './policy/index.ts';
export * from './controller/decide.ts';
export { cpuSplit, expandCpus, rankKnobs, type CgroupKnob, type KnobEffects } from './controller/knobs.ts';
export { serviceSlacks, slack } from './controller/slack.ts';
export { ServiceProcesses, type ProcessPaths, type ProcessReading } from './monitor/process.ts';
export { FileStateStore, type StateStore } from './state-store.ts';
export { LatencyWindow } from './monitor/window.ts';
export { createProber, type Prober, type ProbeResult } from './monitor/probes.ts';
export { ServiceMonitor, type ServiceReading } from './monitor/service.ts';
export { bucketQuantile, HistogramWindow, parseHistogram, MetricsParseError } from './monitor/prometheus.ts';
export { CpuUsage, readMemAvailableBytes, readPsi, type Psi } from './monitor/host.ts';
export { Actuator, POOL_TARGET, type ActionResult, type ActuatedPool, type ActuatedSandbox } from './actuator.ts';
export { ControlLoop, ProcHostReader, type Decision, type HostReader, type LoopSandbox, type Reaction } from './loop.ts';
