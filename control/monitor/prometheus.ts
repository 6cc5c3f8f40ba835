// A service's own latency histogram, scraped from its /metrics page: the quantile over
// the SLO window comes from the difference between the newest scrape and the one a
// window earlier, interpolated inside a bucket as Prometheus' histogram_quantile does.

export type Buckets = [le: number, cumulative: number][];

export class MetricsParseError extends Error {
  readonly code = 'METRICS_MALFORMED';
}

/** Sum of `<name>_bucket` series over all label sets, by `le`, sorted. */
export function parseHistogram(text: string, name: string): Buckets {
  const byLe = new Map<number, number>();
  const prefix = `${name}_bucket`;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line.startsWith(prefix) || (line[prefix.length] !== '{' && line[prefix.length] !== ' ')) continue;
    const m = /le="([^"]+)"/.exec(line);
    const close = line.lastIndexOf('}');
    const rest = (close >= 0 ? line.slice(close + 1) : line.slice(prefix.length)).trim().split(/\s+/);
    if (!m) throw new MetricsParseError(`${name}_bucket line without le label: ${line.slice(0, 120)}`);
    const le = m[1] === '+Inf' ? Infinity : Number(m[1]);
    const v = Number(rest[0]);
    if (Number.isNaN(le) || Number.isNaN(v)) throw new MetricsParseError(`unparsable ${name}_bucket line: ${line.slice(0, 120)}`);
    byLe.set(le, (byLe.get(le) ?? 0) + v);
  }
  if (byLe.size === 0) throw new MetricsParseError(`no ${name}_bucket series on the page`);
  return [...byLe.entries()].sort((a, b) => a[0] - b[0]);
}

/** histogram_quantile over cumulative buckets; NaN with no observations. */
export function bucketQuantile(q: number, buckets: Buckets): number {
  const total = buckets.at(-1)?.[1] ?? 0;
  if (total <= 0) return NaN;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return prevLe; // above the highest finite bound: report that bound
      if (count === prevCount) return le;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / (count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

/** Scrapes kept long enough to difference across the window. */
export class HistogramWindow {
  private readonly scrapes: { at: number; buckets: Buckets }[] = [];
  constructor(private readonly windowMs: number) {}

  push(at: number, buckets: Buckets): void {
    this.scrapes.push({ at, buckets });
    while (this.scrapes.length > 2 && this.scrapes[1]!.at <= at - this.windowMs) this.scrapes.shift();
  }

  /** Quantile (in the histogram's unit) of what was observed during the last window. */
  quantile(q: number): { value: number; count: number } | null {
    if (this.scrapes.length < 2) return null;
    const newest = this.scrapes.at(-1)!.buckets;
    const oldest = this.scrapes[0]!.buckets;
    const delta: Buckets = newest.map(([le, c]) => {
      const before = oldest.find(([l]) => l === le)?.[1] ?? 0;
      // A counter reset (the service restarted) makes the delta the new value.
      return [le, c >= before ? c - before : c];
    });
    const count = delta.at(-1)![1];
    if (count <= 0) return null;
    return { value: bucketQuantile(q, delta), count };
  }
}
