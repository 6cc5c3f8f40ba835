// Host signals read straight from /proc on every tick: PSI, CPU busy time, MemAvailable.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface Psi {
  someAvg10: number;
  fullAvg10: number;
  someTotalUs: number;
}

export async function readPsi(proc: string, resource: 'cpu' | 'memory' | 'io'): Promise<Psi | null> {
  const text = await readFile(join(proc, 'pressure', resource), 'utf8').catch(() => null);
  return text === null ? null : parsePsi(text);
}

export function parsePsi(text: string): Psi {
  const line = (kind: string): Record<string, number> => {
    const l = text.split('\n').find((x) => x.startsWith(kind)) ?? '';
    return Object.fromEntries(l.split(' ').slice(1).map((kv) => kv.split('=')).map(([k, v]) => [k, Number(v)]));
  };
  const some = line('some');
  const full = line('full');
  return { someAvg10: some.avg10 ?? 0, fullAvg10: full.avg10 ?? 0, someTotalUs: some.total ?? 0 };
}

/** Busy fraction of all CPUs between two calls, from the first line of /proc/stat. */
export class CpuUsage {
  private last: { busy: number; total: number } | null = null;
  constructor(private readonly proc: string) {}

  async sample(): Promise<number | null> {
    const text = await readFile(join(this.proc, 'stat'), 'utf8');
    const f = text.split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    const now = { busy: total - idle, total };
    const prev = this.last;
    this.last = now;
    if (!prev || now.total === prev.total) return null;
    return (now.busy - prev.busy) / (now.total - prev.total);
  }
}
