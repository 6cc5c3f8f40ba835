// The memory lodgerd guards, read every round: the host's (/proc/meminfo) or, with a
// memory budget, one cgroup's limit and usage standing in for it (as a Kubernetes node's
// allocatable memory is a cgroup limit). Pressure comes from PSI: the budget cgroup's own
// memory.pressure on v2; on v1 there is no per-cgroup PSI, so the host's
// /proc/pressure/memory, which counts every task stalled in reclaim, also one stalled
// in the budget's limit reclaim (other work on the host shows there too). v1 adds the
// budget's own refault counter (memory.stat total_workingset_refault_file): page cache
// evicted and read straight back, i.e. thrashing, as opposed to reclaim of cold cache.
// "Available" leaves out inactive file cache (reclaimable without a stall), as
// MemAvailable does. PSI figures are taken from the "total" stall counters over the
// last ~1 s, not avg10 (which needs 10 s to show a step). Host paths are injected.
import { join } from 'node:path';
import type { MemoryObservation } from '../controller/index.ts';
import { ProcFile } from './procfile.ts';

export interface MemoryPaths {
  proc: string;
  /** The cgroup mount root (v2), or the tmpfs holding the v1 hierarchies. */
  cgroupRoot: string;
}

/** Stall and refault rates are taken over at least this span. */
const SPAN_MS = 1000;

/** "key value" lines (memory.stat, memory.events) as a record. */
function keyed(text: string | null): Record<string, number> {
  const out: Record<string, number> = {};
  for (const l of (text ?? '').split('\n')) {
    const [k, v] = l.split(' ');
    if (k && v !== undefined && Number.isFinite(Number(v))) out[k] = Number(v);
  }
  return out;
}
/** PSI file: total stall µs of "some" and "full". */
function psiTotals(text: string | null): { some: number; full: number } | null {
  if (text === null) return null;
  const total = (kind: string): number => Number(/total=(\d+)/.exec(text.split('\n').find((l) => l.startsWith(kind)) ?? '')?.[1] ?? 0);
  return { some: total('some'), full: total('full') };
}

interface Sample { t: number; some: number; full: number; refaults: number }

export class MemoryBudget {
  private samples: Sample[] = [];
  /** Read every round: kept open, as the host reader's (procfile.ts). */
  private readonly files = new Map<string, ProcFile>();
  private version: 1 | 2 | null = null;

  /** `cgroup`: the budget's path below the memory mount (v1) or the v2 root; '' for the host's own memory. */
  constructor(private readonly cgroup: string, private readonly paths: MemoryPaths = { proc: '/proc', cgroupRoot: '/sys/fs/cgroup' }, private readonly clock: () => number = Date.now) {}

  private text(f: string): string | null {
    let file = this.files.get(f);
    if (!file) {
      file = new ProcFile(f);
      this.files.set(f, file);
    }
    return file.read();
  }

  /** Where the budget's files are, and the cgroup version; null for the host. */
  private dir(): { dir: string; v: 1 | 2 } | null {
    if (!this.cgroup) return null;
    if (this.version === null) {
      const v2 = this.text(join(this.paths.cgroupRoot, 'cgroup.controllers'));
      this.version = v2 !== null && v2.split(/\s+/).includes('memory') ? 2 : 1;
    }
    return this.version === 2 ? { dir: join(this.paths.cgroupRoot, this.cgroup), v: 2 } : { dir: join(this.paths.cgroupRoot, 'memory', this.cgroup), v: 1 };
  }

  private last: MemoryObservation | null = null;

  /**
   * The budget now. Unreadable at the first read is an error (a wrong path is not an
   * empty budget); later, the last reading stands, marked stale in `source`, so a
   * control round never fails on it.
   */
  async read(): Promise<MemoryObservation> {
    try {
      this.last = this.readNow();
    } catch (e) {
      if (this.last === null) throw e;
      this.last = { ...this.last, source: `${this.last.source.replace(/ \(stale.*$/, '')} (stale: ${(e as Error).message})` };
    }
    return this.last;
  }

  private readNow(): MemoryObservation {
    const now = this.clock();
    const where = this.dir();
    let total: number;
    let used: number;
    let available: number;
    let refaults = 0;
    let oomKills: number | null = null;
    let psi: { some: number; full: number } | null;
    let psiSource: MemoryObservation['psiSource'];
    if (where === null) {
      const mi = this.text(join(this.paths.proc, 'meminfo')) ?? '';
      const kib = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(mi)?.[1] ?? 0) * 1024;
      total = kib('MemTotal');
      available = kib('MemAvailable');
      used = total - kib('MemFree');
      const vm = keyed(this.text(join(this.paths.proc, 'vmstat')));
      refaults = vm.workingset_refault_file ?? vm.workingset_refault ?? 0;
      oomKills = vm.oom_kill ?? null;
      psi = psiTotals(this.text(join(this.paths.proc, 'pressure', 'memory')));
      psiSource = psi ? 'host' : null;
    } else if (where.v === 1) {
      const [lim, use, statText, oom] = ['memory.limit_in_bytes', 'memory.usage_in_bytes', 'memory.stat', 'memory.oom_control'].map((f) => this.text(join(where.dir, f)));
      if (lim === null || use === null) throw new Error(`memory budget cgroup ${where.dir} is not readable`);
      const stat = keyed(statText);
      // An unlimited budget (the v1 "max" is a huge number) is capped by the host's RAM.
      const hostTotal = Number(/^MemTotal:\s+(\d+) kB/m.exec(this.text(join(this.paths.proc, 'meminfo')) ?? '')?.[1] ?? 0) * 1024;
      total = Math.min(Number(lim), hostTotal || Number(lim));
      used = Number(use);
      available = total - used + (stat.total_inactive_file ?? 0);
      refaults = stat.total_workingset_refault_file ?? 0;
      oomKills = keyed(oom).oom_kill ?? null;
      psi = psiTotals(this.text(join(this.paths.proc, 'pressure', 'memory')));
      psiSource = psi ? 'host' : null;
    } else {
      const [max, cur, statText, events, pressure] = ['memory.max', 'memory.current', 'memory.stat', 'memory.events', 'memory.pressure'].map((f) => this.text(join(where.dir, f)));
      if (cur === null) throw new Error(`memory budget cgroup ${where.dir} is not readable`);
      const stat = keyed(statText);
      const hostTotal = Number(/^MemTotal:\s+(\d+) kB/m.exec(this.text(join(this.paths.proc, 'meminfo')) ?? '')?.[1] ?? 0) * 1024;
      total = max === null || max.trim() === 'max' ? hostTotal : Math.min(Number(max), hostTotal || Number(max));
      used = Number(cur);
      available = total - used + (stat.inactive_file ?? 0);
      refaults = stat.workingset_refault_file ?? 0;
      oomKills = keyed(events).oom_kill ?? null;
      psi = psiTotals(pressure);
      psiSource = psi ? 'cgroup' : null;
    }
    this.samples.push({ t: now, some: psi?.some ?? 0, full: psi?.full ?? 0, refaults });
    while (this.samples.length > 2 && this.samples[1]!.t <= now - SPAN_MS) this.samples.shift();
    const ref = this.samples[0]!;
    const dt = now - ref.t;
    const rate = dt >= SPAN_MS / 2;
    const pct = (a: number, b: number): number | null => (psi && rate ? Math.max(0, Math.min(100, ((a - b) / 1000 / dt) * 100)) : null);
    return {
      source: where === null ? 'host' : where.dir,
      totalBytes: total, usedBytes: used, availableBytes: Math.max(0, Math.min(total, available)),
      someStallPct: pct(psi?.some ?? 0, ref.some), fullStallPct: pct(psi?.full ?? 0, ref.full), psiSource,
      refaultsPerSec: rate ? Math.max(0, ((refaults - ref.refaults) * 1000) / dt) : null,
      oomKills,
    };
  }
}
