// A sandbox's size and how it changes: vCPUs (by the strategy in vcpus.ts), memory
// (virtio-mem), host knobs, growth caps; update() calls that resize run one at a time.
import type { Cgroup } from '../cgroup/index.ts';
import { validateUpdate, type Accelerator, type ResourceUpdate, type SandboxLimits, type SandboxSpec, type SandboxStatus, type UpdateReport, type UpdateStep } from '../contract.ts';
import { ResizeError, SandboxError, VmmExitedError } from '../errors.ts';
import type { AgentConnection } from './agent.ts';
import { VirtioMem } from './memory.ts';
import type { QmpConnection } from './qmp.ts';
import type { SandboxRecord } from './record.ts';
import { vcpuStrategy, type VcpuStrategy, type VcpuUnplugMode } from './vcpus.ts';

/** What the sandbox lends an update. */
export interface UpdateHost {
  /** The connections of a live guest; throws when there is none. */
  live(): { qmp: QmpConnection; agent: AgentConnection };
  status(): SandboxStatus;
  cgroup(): Cgroup | null;
  setOutputDir(dir: string): void;
  record(): void;
  /** The VMM's death as an error when it exits within `ms`, else null. */
  diedWithin(ms: number): Promise<VmmExitedError | null>;
}

export class Resources {
  vcpus: number;
  memoryMiB: number;
  /** Growth caps: the booted maximum, or less once a job took the sandbox. */
  limits: SandboxLimits;
  readonly cpu: VcpuStrategy;
  mem: VirtioMem;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(spec: SandboxSpec, mode: VcpuUnplugMode, private readonly accel: Accelerator) {
    this.vcpus = spec.vcpus;
    this.memoryMiB = spec.memoryMiB;
    this.limits = { maxVcpus: spec.maxVcpus, maxMemoryMiB: spec.maxMemoryMiB };
    this.cpu = vcpuStrategy(mode, accel);
    this.mem = new VirtioMem(spec.memoryMiB, spec.maxMemoryMiB);
  }

  /** Takes the size an earlier owner recorded. */
  adopt(rec: SandboxRecord): void {
    this.limits = rec.limits;
    this.vcpus = rec.vcpus;
    this.memoryMiB = rec.memoryMiB;
    this.mem = new VirtioMem(rec.spec.memoryMiB, rec.spec.maxMemoryMiB);
    this.mem.baseMemTotalKiB = rec.baseMemTotalKiB;
  }

  get stepTimeoutMs(): number {
    return this.accel === 'kvm' ? 5_000 : 30_000;
  }

  update(host: UpdateHost, req: ResourceUpdate): Promise<UpdateReport> {
    // Host-side knobs are the fast path: they must not wait behind a vCPU or memory
    // step of hundreds of milliseconds, so an update that does not resize skips the queue.
    if (req.vcpus === undefined && req.memoryMiB === undefined) return this.apply(host, req);
    const next = this.queue.then(() => this.apply(host, req));
    this.queue = next.catch(() => {});
    return next;
  }

  private async apply(host: UpdateHost, req: ResourceUpdate): Promise<UpdateReport> {
    const { qmp, agent } = host.live();
    const bad = validateUpdate(host.status(), req);
    if (bad) throw bad;
    const t0 = performance.now();
    const steps: UpdateStep[] = [];
    if (req.limits) this.limits = { ...req.limits };
    if (req.outputDir !== undefined) host.setOutputDir(req.outputDir);
    if (req.limits || req.outputDir !== undefined) host.record();
    try {
      const cg = host.cgroup();
      if (req.cgroup && cg) {
        const t = performance.now();
        const writes = await cg.apply(req.cgroup);
        steps.push({ kind: 'cgroup', detail: writes.map((w) => `${w.file}=${w.value}`).join(', ') || 'no change', ms: performance.now() - t });
      }
      if (req.vcpus !== undefined && req.vcpus !== this.vcpus) {
        await this.cpu.resize({ qmp, agent, stepTimeoutMs: this.stepTimeoutMs, onCount: (n) => { this.vcpus = n; } }, this.vcpus, req.vcpus, steps);
      }
      if (req.memoryMiB !== undefined && req.memoryMiB !== this.memoryMiB) {
        await this.mem.resize(qmp, agent, this.memoryMiB, req.memoryMiB, this.stepTimeoutMs, steps, (m) => { this.memoryMiB = m; });
      }
    } catch (e) {
      // A closed QMP socket usually means QEMU died: say so, with its last words.
      const died = e instanceof SandboxError && e.code === 'QMP_CLOSED' ? await host.diedWithin(1000) : null;
      if (died) throw died;
      const actual = await this.reread(qmp, agent).catch(() => ({ vcpus: this.vcpus, memoryMiB: this.memoryMiB }));
      this.vcpus = actual.vcpus;
      this.memoryMiB = actual.memoryMiB;
      if (e instanceof VmmExitedError) throw e;
      throw new ResizeError(`sandbox ${host.status().id}: resize failed: ${(e as Error).message}`, actual, { cause: e });
    }
    if (req.vcpus !== undefined || req.memoryMiB !== undefined) host.record();
    return { steps, totalMs: performance.now() - t0, vcpus: this.vcpus, memoryMiB: this.memoryMiB };
  }

  /** What QEMU (and, for offline vCPUs, the guest) says the sandbox has now. */
  async reread(qmp: QmpConnection, agent: AgentConnection): Promise<{ vcpus: number; memoryMiB: number }> {
    const memoryMiB = await this.mem.sizeMiB(qmp);
    return { vcpus: await this.cpu.count(qmp, agent), memoryMiB };
  }
}
