// The online service's own processes, found by systemd unit, cgroup path, pid file or
// process name, and read every control round: CPU use and scheduling delay from each
// thread's /proc/PID/task/TID/schedstat ("run_ns wait_ns slices", nanosecond counters,
// the same on cgroup v1 and v2). These move as soon as load steps, before a latency
// window has filled with slow samples. Pids and threads are found again every couple of
// seconds; the per-round cost is one pread per thread, on a descriptor kept open between
// rescans. Host paths are injected.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ServiceProcess } from '../policy/index.ts';
import { ProcFile } from './procfile.ts';

export interface ProcessPaths {
  proc: string;
  /** The cgroup mount root (v2), or the tmpfs holding the v1 hierarchies. */
  cgroupRoot: string;
}

export interface ProcessReading {
  /** CPUs used over the last `spanMs` (null until two reads are that far apart). */
  cpuUse: number | null;
  /** Time the threads waited for a CPU, percent of wall time (summed over threads). */
  runDelayPct: number | null;
  pids: number;
  /** Resident memory of its processes (statm), bytes; null when none was readable. */
  memoryBytes?: number | null;
  error: string | null;
}

/** Readings span at least this long: one 100 ms round holds too few scheduler ticks. */
const SPAN_MS = 200;
const RESCAN_MS = 2000;
/** Bounds on what one service may cost us per round. */
const MAX_PIDS = 64;
const MAX_THREADS = 256;
/** statm counts pages; x86-64 and arm64 Linux hosts use 4 KiB pages by default. */
const PAGE_BYTES = 4096;

export class ServiceProcesses {
  private threads: ProcFile[] = [];
  private pidCount = 0;
  private pidList: number[] = [];
  private scannedAt = -Infinity;
  private error: string | null = null;
  private samples: { t: number; run: number; wait: number }[] = [];

  constructor(private readonly spec: ServiceProcess, private readonly paths: ProcessPaths, private readonly clock: () => number = Date.now) {}

  read(): ProcessReading {
    const now = this.clock();
    if (now - this.scannedAt >= RESCAN_MS) this.rescan(now);
    let run = 0;
    let wait = 0;
    let gone = 0;
    for (const f of this.threads) {
      const text = f.read();
      if (text === null) {
        gone++; // a thread that ended: its time leaves the sums, so start over
        continue;
      }
      const [r, w] = text.split(' ');
      run += Number(r) || 0;
      wait += Number(w) || 0;
    }
    if (gone) {
      this.scannedAt = -Infinity;
      this.samples = [];
    }
    this.samples.push({ t: now, run, wait });
    // The newest sample at least SPAN_MS old is the reference; older ones are dropped.
    while (this.samples.length > 2 && this.samples[1]!.t <= now - SPAN_MS) this.samples.shift();
    const ref = this.samples[0]!;
    const dtNs = (now - ref.t) * 1e6;
    const memoryBytes = this.rss();
    if (this.threads.length === 0 || dtNs < SPAN_MS * 1e6 * 0.5) return { cpuUse: null, runDelayPct: null, pids: this.pidCount, memoryBytes, error: this.error };
    return {
      cpuUse: Math.max(0, (run - ref.run) / dtNs), runDelayPct: Math.max(0, ((wait - ref.wait) / dtNs) * 100),
      pids: this.pidCount, memoryBytes, error: this.error,
    };
  }

  /** Resident set of the service's processes: statm's second field, in pages (one small read per pid). */
  private rss(): number | null {
    let sum = 0;
    let any = false;
    for (const pid of this.pidList) {
      const f = readText(join(this.paths.proc, String(pid), 'statm'));
      if (f === null) continue;
      sum += (Number(f.split(' ')[1]) || 0) * PAGE_BYTES;
      any = true;
    }
    return any ? sum : null;
  }

  /** The pids the spec names, joined. */
  pids(): number[] {
    const out = new Set<number>();
    const { spec, paths } = this;
    const cgroups = [spec.cgroup, spec.systemdUnit ? `/system.slice/${spec.systemdUnit}` : undefined].filter((x): x is string => !!x);
    for (const cg of cgroups) for (const p of cgroupPids(paths.cgroupRoot, cg)) out.add(p);
    let main: number | null = null;
    if (spec.pidFile) {
      const n = Number(readText(spec.pidFile)?.trim());
      if (Number.isInteger(n) && n > 0) main = n;
    }
    if (main !== null || spec.exe) {
      if (main !== null && existsSync(join(paths.proc, String(main)))) out.add(main);
      for (const d of safeReaddir(paths.proc)) {
        if (!/^\d+$/.test(d)) continue;
        const pid = Number(d);
        if (spec.exe && readText(join(paths.proc, d, 'comm'))?.trim() === spec.exe) out.add(pid);
        if (main !== null) {
          // The pid file names the main process; its workers are its children.
          const stat = readText(join(paths.proc, d, 'stat'));
          const ppid = stat ? Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) : NaN;
          if (ppid === main) out.add(pid);
        }
      }
    }
    return [...out].sort((a, b) => a - b).slice(0, MAX_PIDS);
  }

  private rescan(now: number): void {
    this.scannedAt = now;
    const pids = this.pids();
    const paths: string[] = [];
    for (const pid of pids) {
      for (const tid of safeReaddir(join(this.paths.proc, String(pid), 'task'))) {
        if (paths.length < MAX_THREADS) paths.push(join(this.paths.proc, String(pid), 'task', tid, 'schedstat'));
      }
    }
    this.error = pids.length ? null : `no process found for ${JSON.stringify(this.spec)}`;
    if (paths.join() !== this.threads.map((f) => f.path).join()) {
      this.samples = [];
      this.close();
      this.threads = paths.map((f) => new ProcFile(f));
    }
    this.pidCount = pids.length;
    this.pidList = pids;
  }

  /** Closes the threads' files (they are opened again on the next read). */
  close(): void {
    for (const f of this.threads) f.close();
  }
}

function readText(f: string): string | null {
  try {
    return readFileSync(f, 'utf8');
  } catch {
    return null;
  }
}

function safeReaddir(d: string): string[] {
  try {
    return readdirSync(d);
  } catch {
    return [];
  }
}

/** Pids of a cgroup given by its path below the mount (v2) or any v1 hierarchy that has it. */
export function cgroupPids(root: string, path: string): number[] {
  for (const h of ['', 'unified', 'cpu,cpuacct', 'cpu', 'cpuacct', 'systemd', 'pids', 'memory']) {
    const text = readText(join(root, h, path, 'cgroup.procs'));
    if (text !== null) return text.split('\n').filter(Boolean).map(Number).filter((n) => n > 0);
  }
  return [];
}
