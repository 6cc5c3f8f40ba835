// The one sandbox contract (containerd sandbox-controller style). The QEMU backend
// implements it on real QEMU; FakeSandbox (testing.ts) in memory for daemon tests.
// Nothing here knows about SLOs or jobs' policies.
import type { CgroupKnobs } from './cgroup/index.ts';
import type { ExitStatus, GuestStats } from './agent/index.ts';
import { SandboxError } from './errors.ts';

/** QEMU's accelerator, or the gVisor platform a sandbox runs on. */
export type Accelerator = 'kvm' | 'tcg' | 'systrap' | 'ptrace';
/** Which implementation of this contract runs a sandbox. */
export type Backend = 'qemu' | 'gvisor';

export interface SandboxSpec {
  id: string;
  /** vCPUs at boot and the hotplug ceiling. */
  vcpus: number;
  maxVcpus: number;
  /** Memory at boot (MiB) and the ceiling reachable by virtio-mem. */
  memoryMiB: number;
  maxMemoryMiB: number;
  /** Host directory packed read-only into an ext4 image and used as the job's root. */
  rootfsDir?: string;
  /**
   * A prebuilt read-only ext4 image of the job's root (an image cache entry, shared by every
   * sandbox that runs it): QEMU attaches it as it is instead of packing rootfsDir; gVisor,
   * which needs a directory, uses rootfsDir.
   */
  rootfsImage?: string;
  /** Host directory that receives the contents of the guest's /output after a job. */
  outputDir?: string;
  /** Size of the writable /output disk. Default 256 MiB (sparse on the host). */
  outputDiskMiB?: number;
  /** Attach an /output disk even without outputDir: a warm-pool sandbox learns it when claimed. */
  outputDisk?: boolean;
  /** Host-side knobs applied before the VMM starts. */
  cgroup?: CgroupKnobs;
  /** The backend meant to run it (a runtime holding several routes by it); a backend refuses another's. */
  backend?: Backend;
}

/** Growth caps: at least the current size, at most what the sandbox was booted with. */
export interface SandboxLimits {
  maxVcpus: number;
  maxMemoryMiB: number;
}

export interface ResourceUpdate {
  vcpus?: number;
  memoryMiB?: number;
  cgroup?: CgroupKnobs;
  /** New growth caps (a job taking a warm sandbox); vcpus and memoryMiB of the same update are checked against them. */
  limits?: SandboxLimits;
  /** Where /output goes when the job ends; the sandbox must have been booted with an /output disk. */
  outputDir?: string;
}

export interface UpdateStep {
  /** vcpu-online/-offline: the guest brings an existing vCPU up or down (no device change). */
  kind: 'vcpu-plug' | 'vcpu-unplug' | 'vcpu-online' | 'vcpu-offline' | 'memory' | 'cgroup';
  detail: string;
  ms: number;
}

export interface UpdateReport {
  steps: UpdateStep[];
  totalMs: number;
  vcpus: number;
  memoryMiB: number;
}

export type SandboxState = 'created' | 'starting' | 'running' | 'paused' | 'suspending' | 'suspended' | 'resuming' | 'stopping' | 'stopped' | 'failed';

export interface SandboxStatus {
  id: string;
  backend: Backend;
  state: SandboxState;
  accel: Accelerator | null;
  pid: number | null;
  vcpus: number;
  memoryMiB: number;
  /** The current growth caps (booted maximum, or less after update({ limits })). */
  maxVcpus: number;
  maxMemoryMiB: number;
  /** What the sandbox was booted with: bounds no update can pass. */
  booted: { memoryMiB: number; maxVcpus: number; maxMemoryMiB: number; outputDisk: boolean };
  /** Last guest report (heartbeat or answer). */
  guest: GuestStats | null;
  bootMs: number | null;
  error: string | null;
}

export interface SandboxMetrics {
  cpuUsageUsec: number;
  /** Host memory charged to the VMM's cgroup. */
  memoryBytes: number;
  /** VMM resident set size. */
  vmmRssBytes: number;
  guest: GuestStats | null;
}

export interface ExecRequest {
  argv: string[];
  env?: Record<string, string>;
  cwd?: string;
  /** Numeric uid and gid to run as (no supplementary groups); absent: root. */
  user?: { uid: number; gid: number };
}

/** The sandbox runs its commands in a root of its own (a directory or a prebuilt image) rather than the base image. */
export const hasRootfs = (spec: SandboxSpec): boolean => !!(spec.rootfsDir || spec.rootfsImage);

export interface ExecHandle {
  readonly id: number;
  /** Output as it arrives. */
  onStdout(cb: (chunk: Buffer) => void): void;
  onStderr(cb: (chunk: Buffer) => void): void;
  signal(signo: number): Promise<void>;
  /** Resolves when the command exits; rejects with a typed error when the VMM dies first. */
  wait(): Promise<ExitStatus>;
}

export interface SuspendReport {
  /** Size of the saved state. */
  bytes: number;
  ms: number;
}

export interface VmmExit {
  code: number | null;
  signal: string | null;
  /** The VMM was stopped by us (stop()) rather than dying on its own. */
  expected: boolean;
}

/** One sandbox found in a runtime's run directory, whoever created it. */
export interface SandboxInfo {
  id: string;
  /** The VMM's pid from the sandbox's record; null when suspended to disk or never recorded. */
  pid: number | null;
  /** The state recorded last; null when there is no readable record (it was still starting). */
  state: SandboxState | null;
  /** `pid` is alive and is this sandbox's VMM (checked by its identity, never by the pid alone). */
  alive: boolean;
}

export interface Sandbox {
  readonly id: string;
  /**
   * Takes up a command an earlier process started in this sandbox (see
   * SandboxRuntime.attach): output after `offsets` (bytes of stdout and stderr already
   * stored) and the exit status arrive on the handle; nothing is run again.
   */
  resumeExec(execId: number, offsets: [number, number]): Promise<ExecHandle>;
  /** Boots the VM and waits for the guest agent. */
  start(): Promise<void>;
  exec(req: ExecRequest): Promise<ExecHandle>;
  /** Resizes, sets host knobs, growth caps and the output directory; checked by validateUpdate(). */
  update(req: ResourceUpdate): Promise<UpdateReport>;
  pause(): Promise<void>;
  /** Continues a paused sandbox, or brings a suspended one back from disk. */
  resume(): Promise<void>;
  /**
   * Saves the whole VM (RAM and devices) to disk and ends the VMM, giving its memory back
   * to the host; resume() restores it. Jobs keep running across it, none loses work.
   */
  suspend(): Promise<SuspendReport>;
  /** Copies the guest's /output into the spec's outputDir; works after the VMM died too. */
  collectOutput(): Promise<string[]>;
  /** Stops the VMM (gracefully within graceMs, then kill) and releases its cgroup and files. */
  stop(opts?: { graceMs?: number }): Promise<void>;
  /** Resolves when the VMM exits, for whatever reason. */
  wait(): Promise<VmmExit>;
  status(): SandboxStatus;
  metrics(): Promise<SandboxMetrics>;
}

export interface SandboxRuntime {
  readonly backend: Backend;
  readonly accel: Accelerator;
  create(spec: SandboxSpec): Promise<Sandbox>;
  /**
   * Finds the sandbox with this id that an earlier process (a daemon that died or
   * restarted) created, still running, paused or suspended to disk, and takes control of it.
   * Throws SANDBOX_GONE when it is not there any more.
   */
  attach(id: string): Promise<Sandbox>;
  /** Every sandbox this runtime's run directory holds, with whether its VMM is alive. */
  list(): Promise<SandboxInfo[]>;
  /**
   * Removes everything a sandbox left whose owner is gone: its VMM (identity checked), its
   * cgroup and its run files. Idempotent: an unknown or already removed id succeeds.
   */
  shutdown(id: string): Promise<void>;
}

export const SANDBOX_ID = /^[A-Za-z0-9_.-]{1,64}$/;

export function validateSpec(spec: SandboxSpec, backend?: Backend): string | null {
  if (spec.backend && backend && spec.backend !== backend) return `it is meant for the ${spec.backend} backend, not ${backend}`;
  if (!SANDBOX_ID.test(spec.id) || spec.id === '.' || spec.id === '..') return `id ${JSON.stringify(spec.id)} must be 1-64 of [A-Za-z0-9_.-]`;
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1) return `vcpus must be a positive integer (got ${spec.vcpus})`;
  if (!Number.isInteger(spec.maxVcpus) || spec.maxVcpus < spec.vcpus || spec.maxVcpus > 288) return `maxVcpus must be an integer in [vcpus, 288] (got ${spec.maxVcpus})`;
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 128) return `memoryMiB must be an integer >= 128 (got ${spec.memoryMiB})`;
  if (!Number.isInteger(spec.maxMemoryMiB) || spec.maxMemoryMiB < spec.memoryMiB) return `maxMemoryMiB must be an integer >= memoryMiB (got ${spec.maxMemoryMiB})`;
  if ((spec.maxMemoryMiB - spec.memoryMiB) % 2 !== 0) return 'maxMemoryMiB - memoryMiB must be a multiple of 2 MiB (the virtio-mem block size)';
  return null;
}

/**
 * Whether `req` may be applied to a sandbox whose status is `status`; every backend calls
 * this before it changes anything. Resizing needs a running guest (it takes part); host
 * knobs, limits and the output directory need a live one (running or paused).
 */
export function validateUpdate(status: SandboxStatus, req: ResourceUpdate): SandboxError | null {
  const bad = (msg: string): SandboxError => new SandboxError('SANDBOX_BAD_SPEC', `sandbox ${status.id}: ${msg}`);
  const resize = req.vcpus !== undefined || req.memoryMiB !== undefined;
  if (status.state !== 'running' && status.state !== 'paused') return new SandboxError('SANDBOX_BAD_STATE', `cannot update: sandbox ${status.id} is ${status.state}`);
  if (resize && status.state === 'paused') return new SandboxError('SANDBOX_BAD_STATE', `cannot resize sandbox ${status.id} while paused: the guest must take part`);
  const b = status.booted;
  if (req.outputDir && !b.outputDisk) return bad('was booted without an /output disk');
  const lim = req.limits ?? { maxVcpus: status.maxVcpus, maxMemoryMiB: status.maxMemoryMiB };
  if (req.limits) {
    const { maxVcpus: v, maxMemoryMiB: m } = req.limits;
    if (!Number.isInteger(v) || !Number.isInteger(m) || v < status.vcpus || v > b.maxVcpus || m < status.memoryMiB || m > b.maxMemoryMiB) {
      return bad(`limits ${v} vCPUs / ${m} MiB outside [${status.vcpus}, ${b.maxVcpus}] / [${status.memoryMiB}, ${b.maxMemoryMiB}]`);
    }
  }
  if (req.vcpus !== undefined && (!Number.isInteger(req.vcpus) || req.vcpus < 1 || req.vcpus > lim.maxVcpus)) {
    return bad(`vcpus must be in [1, ${lim.maxVcpus}] (got ${req.vcpus})`);
  }
  const m = req.memoryMiB;
  // virtio-mem plugs 2 MiB blocks on top of the boot memory.
  if (m !== undefined && (!Number.isInteger(m) || m < b.memoryMiB || m > lim.maxMemoryMiB || (m - b.memoryMiB) % 2 !== 0)) {
    return bad(`memoryMiB must be in [${b.memoryMiB}, ${lim.maxMemoryMiB}] in 2 MiB steps (got ${m})`);
  }
  return null;
}
