// Sliding-window latency percentiles on HDR histograms (Node's perf_hooks, the same
// HdrHistogram as the C library): the window is cut into slices, each its own
// histogram; reading merges the slices still inside the window. O(1) per sample.
import { createHistogram, type RecordableHistogram } from 'node:perf_hooks';

const LOWEST_US = 1;
const HIGHEST_US = 60_000_000; // one minute
const FIGURES = 3;

export class LatencyWindow {
  private readonly slices: { start: number; h: RecordableHistogram }[] = [];
  private readonly sliceMs: number;

  constructor(readonly windowMs: number, slices = 10) {
    this.sliceMs = Math.max(1, windowMs / slices);
  }

  private current(now: number): RecordableHistogram {
    const start = Math.floor(now / this.sliceMs) * this.sliceMs;
    const last = this.slices.at(-1);
    if (last && last.start === start) return last.h;
    const h = createHistogram({ lowest: LOWEST_US, highest: HIGHEST_US, figures: FIGURES });
    this.slices.push({ start, h });
    this.prune(now);
    return h;
  }

  private prune(now: number): void {
    while (this.slices.length && this.slices[0]!.start + this.sliceMs <= now - this.windowMs) this.slices.shift();
  }

  record(latencyMs: number, now: number): void {
    const us = Math.min(HIGHEST_US, Math.max(LOWEST_US, Math.round(latencyMs * 1000)));
    this.current(now).record(us);
  }

  /** Percentiles (ms) over the samples of the last window, or null without samples. */
  percentiles(ps: number[], now: number): { count: number; values: Record<number, number> } | null {
    this.prune(now);
    const merged = createHistogram({ lowest: LOWEST_US, highest: HIGHEST_US, figures: FIGURES });
    for (const s of this.slices) if (s.start + this.sliceMs > now - this.windowMs) merged.add(s.h);
    if (merged.count === 0) return null;
    const values: Record<number, number> = {};
    for (const p of ps) values[p] = merged.percentile(p) / 1000;
    return { count: merged.count, values };
  }
}
