// Public door of the monitors: latency windows, probes, Prometheus histograms, host signals.
export { LatencyWindow } from './window.ts';
export { createProber, type Prober, type ProbeErrorCode, type ProbeResult } from './probes.ts';
export { ServiceMonitor, type ServiceReading } from './service.ts';
export { bucketQuantile, HistogramWindow, parseHistogram, MetricsParseError, type Buckets } from './prometheus.ts';
export { CpuUsage, parsePsi, readPsi, type Psi } from './host.ts';
export { ProcFile } from './procfile.ts';
export { ServiceProcesses, type ProcessPaths, type ProcessReading } from './process.ts';
export { MemoryBudget, type MemoryPaths } from './memory.ts';
