// The one sandbox contract. QemuSandbox implements it on real QEMU; FakeSandbox in
// memory for daemon tests. Nothing here knows about SLOs or jobs' policies.
import type { CgroupKnobs } from './cgroup/index.ts';
import type { ExitStatus, GuestStats } from './agent/index.ts';

export type Accelerator = 'kvm' | 'tcg';

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
  /** Host directory that receives the contents of the guest's /output after a job. */
  outputDir?: string;
  /** Size of the writable /output disk. Default 256 MiB (sparse on the host). */
  outputDiskMiB?: number;
  /** Attach an /output disk even without outputDir: a warm-pool sandbox learns it when claimed. */
  outputDisk?: boolean;
  /** Host-side knobs applied before the VMM starts. */
  cgroup?: CgroupKnobs;
}

export interface ResourceUpdate {
  vcpus?: number;
  memoryMiB?: number;
  cgroup?: CgroupKnobs;
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
  state: SandboxState;
  accel: Accelerator | null;
  pid: number | null;
  vcpus: number;
  memoryMiB: number;
  maxVcpus: number;
  maxMemoryMiB: number;
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
}

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

/** What a job sets when it takes a pre-booted sandbox from the warm pool. */
export interface Claim {
  /** Where /output goes when the job ends (the sandbox was booted with `outputDisk`). */
  outputDir?: string;
  /** Caps on growth for this job, at most what the sandbox was booted with. */
  maxVcpus: number;
  maxMemoryMiB: number;
}

export interface Sandbox {
  readonly id: string;
  /** Gives a pre-booted sandbox to a job: its output directory and its size limits. */
  claim(c: Claim): Promise<void>;
  /**
   * Takes up a command an earlier process started in this sandbox (see
   * SandboxRuntime.attach): output after `offsets` (bytes of stdout and stderr already
   * stored) and the exit status arrive on the handle; nothing is run again.
   */
  resumeExec(execId: number, offsets: [number, number]): Promise<ExecHandle>;
  /** Boots the VM and waits for the guest agent. */
  start(): Promise<void>;
  exec(req: ExecRequest): Promise<ExecHandle>;
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
  readonly accel: Accelerator;
  create(spec: SandboxSpec): Promise<Sandbox>;
  /**
   * Finds the sandbox with this id that an earlier process (a daemon that died or
   * restarted) created, still running, paused or suspended to disk, and takes control of it.
   * Throws SANDBOX_GONE when it is not there any more.
   */
  attach(id: string): Promise<Sandbox>;
}

export function validateSpec(spec: SandboxSpec): string | null {
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(spec.id)) return `id ${JSON.stringify(spec.id)} must be 1-64 of [A-Za-z0-9_.-]`;
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1) return `vcpus must be a positive integer (got ${spec.vcpus})`;
  if (!Number.isInteger(spec.maxVcpus) || spec.maxVcpus < spec.vcpus || spec.maxVcpus > 288) return `maxVcpus must be an integer in [vcpus, 288] (got ${spec.maxVcpus})`;
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 128) return `memoryMiB must be an integer >= 128 (got ${spec.memoryMiB})`;
  if (!Number.isInteger(spec.maxMemoryMiB) || spec.maxMemoryMiB < spec.memoryMiB) return `maxMemoryMiB must be an integer >= memoryMiB (got ${spec.maxMemoryMiB})`;
  if ((spec.maxMemoryMiB - spec.memoryMiB) % 2 !== 0) return 'maxMemoryMiB - memoryMiB must be a multiple of 2 MiB (the virtio-mem block size)';
  return null;
}
