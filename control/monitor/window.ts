// Sliding-window latency percentiles over the raw samples themselves: a probe gives tens
// of samples per second, so sorting one window's worth each round is cheaper than the
// HDR histograms this replaced (a 140 KB histogram per slice and another merged one per
// round, 10 rounds a second, made the garbage collector lodgerd's biggest cost) and the
// percentiles are exact. The window holds at most MAX_SAMPLES; the oldest go first.
const MAX_SAMPLES = 65_536;

export class LatencyWindow {
  private at: number[] = [];
  private ms: number[] = [];
  private head = 0;

  constructor(readonly windowMs: number) {}

  private prune(now: number): void {
    const from = now - this.windowMs;
    while (this.head < this.at.length && (this.at[this.head]! <= from || this.at.length - this.head > MAX_SAMPLES)) this.head++;
    // Compact once the dead prefix is as long as the live part: amortised O(1) per sample.
    if (this.head > 0 && this.head * 2 >= this.at.length) {
      this.at = this.at.slice(this.head);
      this.ms = this.ms.slice(this.head);
      this.head = 0;
    }
  }

  record(latencyMs: number, now: number): void {
    if (!Number.isFinite(latencyMs)) return;
    this.at.push(now);
    this.ms.push(Math.max(0, latencyMs));
    this.prune(now);
  }

  /** Percentiles (ms, nearest rank) over the samples of the last window, or null without samples. */
  percentiles(ps: number[], now: number): { count: number; values: Record<number, number> } | null {
    this.prune(now);
    const n = this.at.length - this.head;
    if (n === 0) return null;
    const sorted = Float64Array.from(this.ms.slice(this.head)).sort();
    const values: Record<number, number> = {};
    for (const p of ps) values[p] = sorted[Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1))]!;
    return { count: n, values };
  }
}
