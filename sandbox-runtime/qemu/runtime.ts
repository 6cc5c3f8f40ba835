// The QEMU backend of the sandbox contract: creates sandboxes, takes up those an earlier
// process left, lists the run directory and cleans up after a crashed owner.
import { existsSync, readdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import type { AccelChoice } from '../accel.ts';
import type { GuestStats } from '../agent/index.ts';
import type { CgroupManager } from '../cgroup/index.ts';
import {
  SANDBOX_ID, validateSpec, type Accelerator, type Sandbox, type SandboxInfo, type SandboxRuntime, type SandboxSpec,
} from '../contract.ts';
import { SandboxError } from '../errors.ts';
import type { HostPaths } from '../host.ts';
import type { GuestImage } from '../image/index.ts';
import type { AgentConnection, AgentFactory } from './agent.ts';
import type { VmmMemory } from './args.ts';
import type { JailOptions } from './jail.ts';
import type { QmpFactory } from './qmp.ts';
import { cgroupName, readRecord, sandboxPaths } from './record.ts';
import { QemuSandbox } from './sandbox.ts';
import type { VcpuUnplugMode } from './vcpus.ts';
import { findSandboxVmm, isSandboxVmm, killVmm, vmmsUnder } from './vmm.ts';

export interface QemuRuntimeOptions {
  host: HostPaths;
  image: GuestImage;
  accel: AccelChoice;
  /** Null runs VMMs without a cgroup of their own (only for hosts without one). */
  cgroups: CgroupManager | null;
  bootTimeoutMs?: number;
  seccomp?: boolean;
  /** Each VMM in a jail of its own (jail.ts); absent or null: VMMs run as this process. */
  jail?: JailOptions | null;
  tbSizeMiB?: number;
  tcgThread?: 'multi' | 'single';
  /** How vCPUs are taken away; default 'acpi' under KVM, 'offline' under TCG. */
  vcpuUnplug?: VcpuUnplugMode;
  /** Appended to the guest kernel command line. */
  extraCmdline?: string;
  /**
   * Start VMMs in a session of their own, so they outlive this process (the daemon
   * keeps sandboxes across its restarts) and a terminal's Ctrl-C does not reach them.
   */
  detachVmm?: boolean;
  log?: (msg: string) => void;
  /** QMP and agent connections; default the real ones (unit tests pass fakes). */
  qmp?: QmpFactory;
  agent?: AgentFactory;
}

/** A sandbox as the QEMU backend's door shows it: the contract plus what tests, benches and diagnostics read. */
export interface HostedSandbox extends Sandbox {
  readonly accel: Accelerator;
  /** The VMM's pid (status().pid). */
  readonly pid: number | null;
  /** The sandbox cgroup's directories by hierarchy ('' on v2), or null without one. */
  readonly cgroupDirs: ReadonlyMap<string, string> | null;
  readonly vcpuUnplugMode: VcpuUnplugMode;
  /** The agent channel, for tests of its framing. */
  readonly agentClient: AgentConnection | null;
  /** A guest report asked for now (status().guest is the last one heard). */
  guestStats(): Promise<GuestStats>;
  /** The VMM's memory split into guest RAM and its own overhead; null without a VMM. */
  vmmMemory(): Promise<VmmMemory | null>;
  /** Lets go of the sandbox without stopping it, as an owner that dies does. */
  release(): void;
}

export interface HostedRuntime extends SandboxRuntime {
  readonly opts: QemuRuntimeOptions;
  create(spec: SandboxSpec): Promise<HostedSandbox>;
  attach(id: string): Promise<HostedSandbox>;
  /** The same host and image with some options changed (a bench's or test's variant). */
  with(overrides: Partial<QemuRuntimeOptions>): HostedRuntime;
}

export class QemuRuntime implements HostedRuntime {
  readonly backend = 'qemu' as const;
  constructor(readonly opts: QemuRuntimeOptions) {}

  get accel(): Accelerator {
    return this.opts.accel.accel;
  }

  with(overrides: Partial<QemuRuntimeOptions>): QemuRuntime {
    return new QemuRuntime({ ...this.opts, ...overrides });
  }

  async create(spec: SandboxSpec): Promise<QemuSandbox> {
    const bad = validateSpec(spec, this.backend);
    if (bad) throw new SandboxError('SANDBOX_BAD_SPEC', `sandbox ${spec.id}: ${bad}`);
    return new QemuSandbox(spec, this.opts);
  }

  async attach(id: string): Promise<QemuSandbox> {
    // The spec comes from the sandbox's record; this one only names it.
    const sb = new QemuSandbox({ id, vcpus: 1, maxVcpus: 1, memoryMiB: 128, maxMemoryMiB: 128 }, this.opts);
    await sb.attachExisting();
    return sb;
  }

  async list(): Promise<SandboxInfo[]> {
    const dir = this.opts.host.runDir;
    const ids = new Set(existsSync(dir) ? readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory() && SANDBOX_ID.test(d.name)).map((d) => d.name) : []);
    // A VMM whose run files are gone is still ours to remove.
    const running = vmmsUnder(this.opts.host.proc, (id) => sandboxPaths(dir, id).qmpSocket);
    for (const id of running) ids.add(id);
    return [...ids].sort().map((id) => {
      const info = this.info(id);
      return info.state === null && running.includes(id) ? { ...info, alive: true, pid: findSandboxVmm(this.opts.host.proc, id, sandboxPaths(dir, id).qmpSocket) } : info;
    });
  }

  private info(id: string): SandboxInfo {
    const paths = sandboxPaths(this.opts.host.runDir, id);
    const rec = readRecord(paths.record);
    if (rec instanceof Error) return { id, pid: null, state: null, alive: false };
    const alive = rec.pid !== null && isSandboxVmm(this.opts.host.proc, rec.pid, id, paths.qmpSocket);
    return { id, pid: rec.pid, state: rec.state, alive };
  }

  async shutdown(id: string): Promise<void> {
    if (!SANDBOX_ID.test(id) || id === '.' || id === '..') throw new SandboxError('SANDBOX_BAD_SPEC', `no sandbox can be called ${JSON.stringify(id)}`);
    const { proc } = this.opts.host;
    const paths = sandboxPaths(this.opts.host.runDir, id);
    // One still starting has no record yet: its VMM is found by its identity.
    const info = this.info(id);
    const pid = info.alive ? info.pid : findSandboxVmm(proc, id, paths.qmpSocket);
    if (pid !== null) await killVmm(proc, pid, id, paths.qmpSocket);
    await this.opts.cgroups?.open(cgroupName(id))?.destroy();
    await rm(paths.runDir, { recursive: true, force: true });
  }
}
