// The task's metrics as containerd reads them from a shim's Stats: a cgroups v1 `Metrics`
// (github.com/containerd/cgroups stats/v1/metrics.proto, field numbers below) in an Any.
// What Lodger knows of a job's sandbox (lodgerd's GetJobStats) fills what CRI's container
// stats read: CPU usage, memory usage and limit (its working set is usage less
// total_inactive_file, which the guest does not report: 0), and one process.
import { ProtoWriter } from '../../lib/index.ts';

export const METRICS_TYPE_URL = 'io.containerd.cgroups.v1.Metrics';

export interface SandboxUse {
  cpuUsageNs: number;
  memoryUsedBytes: number;
  memoryLimitBytes: number;
}

/** A count from lodgerd as a uint64 field: whole, not negative, 0 when absent. */
const count = (x: unknown): number => (typeof x === 'number' && Number.isFinite(x) && x > 0 ? Math.floor(x) : 0);

export function encodeMetrics(use: SandboxUse | null): Buffer {
  const w = new ProtoWriter();
  if (!use) return w.done();
  const u = { cpuUsageNs: count(use.cpuUsageNs), memoryUsedBytes: count(use.memoryUsedBytes), memoryLimitBytes: count(use.memoryLimitBytes) };
  // PidsStat{current 1}: the task's one process (its command runs in the sandbox).
  w.bytes(2, new ProtoWriter().uint(1, 1).done(), true);
  // CPUStat{usage 1: CPUUsage{total 1}}, nanoseconds.
  w.bytes(3, new ProtoWriter().bytes(1, new ProtoWriter().uint(1, u.cpuUsageNs).done(), true).done(), true);
  // MemoryStat{rss 2, total_rss 19, usage 33: MemoryEntry{limit 1, usage 2}}.
  const entry = new ProtoWriter().uint(1, u.memoryLimitBytes).uint(2, u.memoryUsedBytes).done();
  w.bytes(4, new ProtoWriter().uint(2, u.memoryUsedBytes).uint(19, u.memoryUsedBytes).bytes(33, entry, true).done(), true);
  return w.done();
}
