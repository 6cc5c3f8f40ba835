// Prometheus metrics (prom-client), named by Prometheus conventions: `lodger_` prefix,
// base units (seconds, bytes). Live values are read when scraped; events (resizes,
// boots, decisions, reactions) are counted as they happen.
import * as http from 'node:http';
import client from 'prom-client';
import { slack, type ControlLoop, type Decision, type PolicySet } from '../control/index.ts';
import type { SandboxStatus } from '../sandbox-runtime/index.ts';
import type { JobEvent, JobStartEvent, Scheduler } from './scheduler.ts';
import type { JobStore } from './store.ts';

export interface MetricsSources {
  store: JobStore;
  scheduler: Scheduler;
  policies: () => PolicySet;
  loop: () => ControlLoop | null;
}

export class Metrics {
  readonly registry = new client.Registry();
  private readonly resize: client.Histogram<'kind'>;
  private readonly decisions: client.Counter<'action'>;
  private readonly reaction: client.Histogram;
  private readonly boot: client.Histogram;
  private readonly jobTransitions: client.Counter<'state'>;
  private readonly batchCpu: client.Counter<'sandbox'>;
  private readonly lastCpuUsec = new Map<string, number>();

  constructor(private readonly src: MetricsSources) {
    const r = this.registry;
    client.collectDefaultMetrics({ register: r });
    new client.Gauge({
      name: 'lodger_service_latency_seconds', help: 'Online service latency over its SLO window, at its SLO percentile and at p50',
      labelNames: ['service', 'quantile'], registers: [r],
      collect() {
        this.reset();
        for (const x of src.loop()?.lastReadings ?? []) {
          const svc = src.policies().services.find((s) => s.name === x.name);
          if (x.latencyMs !== null) this.set({ service: x.name, quantile: String((svc?.slo.percentile ?? 99) / 100) }, x.latencyMs / 1000);
          if (x.p50Ms !== null) this.set({ service: x.name, quantile: '0.5' }, x.p50Ms / 1000);
        }
      },
    });
    new client.Gauge({
      name: 'lodger_service_slo_target_seconds', help: 'Latency target of each online service', labelNames: ['service'], registers: [r],
      collect() {
        this.reset();
        for (const s of src.policies().services) this.set({ service: s.name }, s.slo.targetMs / 1000);
      },
    });
    new client.Gauge({
      name: 'lodger_service_slack_ratio', help: '(target - measured) / target per online service', labelNames: ['service'], registers: [r],
      collect() {
        this.reset();
        for (const x of src.loop()?.lastReadings ?? []) {
          const svc = src.policies().services.find((s) => s.name === x.name);
          if (svc && x.latencyMs !== null) this.set({ service: x.name }, slack(svc.slo.targetMs, x.latencyMs));
        }
      },
    });
    new client.Gauge({
      name: 'lodger_service_memory_bytes', help: 'Resident memory of an online service\'s processes, where its policy names them (the memory path projects its growth)',
      labelNames: ['service'], registers: [r],
      collect() {
        this.reset();
        for (const x of src.loop()?.lastReadings ?? []) if (typeof x.memoryBytes === 'number') this.set({ service: x.name }, x.memoryBytes);
      },
    });
    // What a cluster's extended-resource updater would publish for the node (docs/KUBERNETES.md).
    new client.Gauge({
      name: 'lodger_batch_capacity_cpus', help: 'CPUs batch work may use now, as the controller sees it (the reserve and the services\' use taken off; 0 while batch is paused)', registers: [r],
      collect() {
        const c = src.loop()?.lastCapacity;
        if (c) this.set(c.cpus);
      },
    });
    new client.Gauge({
      name: 'lodger_batch_capacity_memory_bytes', help: 'Memory batch work may use now: what the sandboxes hold plus what is free beyond the reserve (none under memory pressure)', registers: [r],
      collect() {
        const c = src.loop()?.lastCapacity;
        if (c) this.set(c.memoryBytes);
      },
    });
    const sandboxGauge = (name: string, help: string, value: (st: SandboxStatus) => number): void => {
      new client.Gauge({
        name, help, labelNames: ['sandbox', 'job'], registers: [r],
        collect() {
          this.reset();
          for (const { jobId, sandbox } of src.scheduler.sandboxes()) this.set({ sandbox: sandbox.id, job: jobId }, value(sandbox.status()));
        },
      });
    };
    sandboxGauge('lodger_sandbox_vcpus', 'vCPUs a batch sandbox has now', (st) => st.vcpus);
    sandboxGauge('lodger_sandbox_max_vcpus', 'vCPUs a batch sandbox may grow to', (st) => st.maxVcpus);
    sandboxGauge('lodger_sandbox_memory_bytes', 'Memory a batch sandbox has now', (st) => st.memoryMiB * 1048576);
    new client.Gauge({
      name: 'lodger_sandbox_state', help: 'State of each batch sandbox (1 for its current state), with the backend that runs it', labelNames: ['sandbox', 'state', 'backend'], registers: [r],
      collect() {
        this.reset();
        for (const { sandbox } of src.scheduler.sandboxes()) {
          const st = sandbox.status();
          this.set({ sandbox: sandbox.id, state: st.state, backend: st.backend }, 1);
        }
      },
    });
    new client.Gauge({
      name: 'lodger_jobs', help: 'Jobs by state', labelNames: ['state'], registers: [r],
      collect() {
        this.reset();
        for (const [state, n] of Object.entries(src.store.counts())) this.set({ state }, n);
      },
    });
    new client.Gauge({
      name: 'lodger_controller_level', help: 'Fast-path knobs applied now (0: none)', registers: [r],
      collect() { this.set(src.loop()?.controllerState.level ?? 0); },
    });
    this.batchCpu = new client.Counter({ name: 'lodger_batch_cpu_seconds_total', help: 'CPU time used by batch sandboxes', labelNames: ['sandbox'], registers: [r] });
    this.resize = new client.Histogram({
      name: 'lodger_resize_duration_seconds', help: 'Duration of each resize step, by kind', labelNames: ['kind'], registers: [r],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    });
    this.boot = new client.Histogram({
      name: 'lodger_sandbox_boot_duration_seconds', help: 'Sandbox start to guest agent ready', registers: [r],
      buckets: [0.05, 0.1, 0.15, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10],
    });
    this.reaction = new client.Histogram({
      name: 'lodger_reaction_seconds', help: 'First violating observation to the clamp applied', registers: [r],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    });
    this.decisions = new client.Counter({ name: 'lodger_decisions_total', help: 'Controller actions taken, by kind', labelNames: ['action'], registers: [r] });
    this.jobTransitions = new client.Counter({ name: 'lodger_job_transitions_total', help: 'Job state changes, by new state', labelNames: ['state'], registers: [r] });
    const jobStart = new client.Histogram({
      name: 'lodger_job_start_seconds', help: 'Job admitted to its command handed to the guest, by where its sandbox came from (pool or cold boot)',
      labelNames: ['source'], registers: [r], buckets: [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5],
    });
    src.scheduler.on('jobStart', (ev: JobStartEvent) => jobStart.observe({ source: ev.source }, ev.ms / 1000));
    src.scheduler.on('job', (ev: JobEvent) => {
      this.jobTransitions.inc({ state: ev.state });
      if (ev.state === 'running') {
        const sb = src.scheduler.sandboxes().find((x) => x.jobId === ev.jobId)?.sandbox;
        const ms = sb?.status().bootMs;
        if (ms) this.boot.observe(ms / 1000);
      }
    });
  }

  /** Call when a new control loop starts (policy reload). */
  watch(loop: ControlLoop): void {
    let reactions = 0;
    loop.on('decision', (d: Decision) => {
      for (const a of d.actions) this.decisions.inc({ action: a.kind });
      for (const res of d.results) for (const step of res.steps ?? []) this.resize.observe({ kind: step.kind }, step.ms / 1000);
      while (reactions < loop.reactions.length) this.reaction.observe(loop.reactions[reactions++]!.ms / 1000);
    });
  }

  /** CPU time of batch sandboxes, read from their cgroups at scrape time. */
  private async sampleCpu(): Promise<void> {
    for (const { sandbox } of this.src.scheduler.sandboxes()) {
      const m = await sandbox.metrics().catch(() => null);
      if (!m) continue;
      const prev = this.lastCpuUsec.get(sandbox.id) ?? 0;
      if (m.cpuUsageUsec > prev) this.batchCpu.inc({ sandbox: sandbox.id }, (m.cpuUsageUsec - prev) / 1e6);
      this.lastCpuUsec.set(sandbox.id, m.cpuUsageUsec);
    }
  }

  async text(): Promise<string> {
    await this.sampleCpu();
    return this.registry.metrics();
  }

  listen(address: string): Promise<http.Server> {
    const i = address.lastIndexOf(':');
    const server = http.createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end('try /metrics\n');
        return;
      }
      this.text().then((body) => {
        res.writeHead(200, { 'Content-Type': this.registry.contentType }).end(body);
      }, (e: unknown) => res.writeHead(500).end(String(e)));
    });
    return new Promise((resolve, reject) => server.listen(Number(address.slice(i + 1)), address.slice(0, i), () => resolve(server)).once('error', reject));
  }
}
