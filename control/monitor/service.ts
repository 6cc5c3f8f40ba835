// One online service's latency, observed continuously: an active probe every interval
// into a sliding HDR window, or scrapes of its own Prometheus histogram. Never throws
// for a bad target: failures become the observation's typed error.
import type { OnlineServicePolicy } from '../policy/index.ts';
import type { ServiceObservation } from '../controller/index.ts';
import { createProber, type ProbeResult, type Prober } from './probes.ts';
import { HistogramWindow, parseHistogram } from './prometheus.ts';
import { LatencyWindow } from './window.ts';
import { ServiceProcesses, type ProcessPaths } from './process.ts';

export interface ServiceReading extends ServiceObservation {
  p50Ms: number | null;
  samples: number;
  timeouts: number;
}

export class ServiceMonitor {
  private readonly window: LatencyWindow;
  private readonly hist: HistogramWindow;
  private prober: Prober | null = null;
  private timer: NodeJS.Timeout | null = null;
  private lastError: string | null = null;
  private timeouts: { at: number }[] = [];
  private inFlight = false;
  /** Called after every probe sample (the control loop reacts on samples, not only on ticks). */
  onSample: ((r: ProbeResult, at: number) => void) | null = null;

  /** The service's own processes, when the policy names them. */
  private readonly processes: ServiceProcesses | null;

  constructor(
    readonly policy: OnlineServicePolicy, private readonly clock: () => number = Date.now,
    paths: ProcessPaths = { proc: '/proc', cgroupRoot: '/sys/fs/cgroup' },
  ) {
    this.window = new LatencyWindow(policy.slo.windowMs);
    this.hist = new HistogramWindow(policy.slo.windowMs);
    this.processes = policy.process ? new ServiceProcesses(policy.process, paths, clock) : null;
  }

  start(): void {
    if (this.timer) return;
    const p = this.policy;
    if (p.probe) {
      this.prober = createProber(p.probe);
      this.timer = setInterval(() => void this.probeOnce(), p.probe.intervalMs);
    } else if (p.prometheus) {
      this.timer = setInterval(() => void this.scrapeOnce(), p.prometheus.intervalMs);
      void this.scrapeOnce();
    }
  }

  /** One probe now; overlapping probes are skipped so a slow target is not piled on. */
  async probeOnce(): Promise<void> {
    if (!this.prober || this.inFlight) return;
    this.inFlight = true;
    try {
      const r = await this.prober.probe();
      const at = this.clock();
      if (r.ok) {
        this.window.record(r.latencyMs, at);
        if (r.timedOut) this.timeouts.push({ at });
        this.lastError = null;
      } else {
        this.lastError = `${r.code}: ${r.error}`;
      }
      this.onSample?.(r, at);
    } finally {
      this.inFlight = false;
    }
  }

  async scrapeOnce(): Promise<void> {
    const p = this.policy.prometheus;
    if (!p) return;
    try {
      const res = await fetch(p.url, { signal: AbortSignal.timeout(Math.max(500, p.intervalMs)) });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      this.hist.push(this.clock(), parseHistogram(await res.text(), p.histogram));
      this.lastError = null;
    } catch (e) {
      const code = (e as { code?: string }).code ?? ((e as Error).name === 'TimeoutError' ? 'TIMEOUT' : 'SCRAPE');
      this.lastError = `${code}: ${(e as Error).message}`;
    }
  }

  observe(): ServiceReading {
    const p = this.processes?.read() ?? null;
    return { ...this.latency(), cpuUse: p?.cpuUse ?? null, runDelayPct: p?.runDelayPct ?? null, memoryBytes: p?.memoryBytes ?? null };
  }

  private latency(): ServiceReading {
    const now = this.clock();
    const name = this.policy.name;
    const pct = this.policy.slo.percentile;
    this.timeouts = this.timeouts.filter((x) => x.at > now - this.policy.slo.windowMs);
    if (this.policy.prometheus) {
      const q = this.hist.quantile(pct / 100);
      const p50 = this.hist.quantile(0.5);
      // Prometheus histograms are in seconds by convention.
      return {
        name, latencyMs: q ? q.value * 1000 : null, p50Ms: p50 ? p50.value * 1000 : null, samples: q?.count ?? 0, timeouts: 0,
        error: q ? null : (this.lastError ?? 'no requests observed in the window'),
      };
    }
    const r = this.window.percentiles([pct, 50], now);
    return {
      name, latencyMs: r ? r.values[pct]! : null, p50Ms: r ? r.values[50]! : null, samples: r?.count ?? 0, timeouts: this.timeouts.length,
      error: r ? null : (this.lastError ?? 'no samples yet'),
    };
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.prober?.close();
    this.processes?.close();
  }
}
