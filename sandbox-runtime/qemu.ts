// QEMU implementation of the sandbox contract: a q35 VM with hotpluggable vCPUs, a
// virtio-mem region up to the sandbox's maximum memory, the agent on virtio-serial, QMP
// for control, and the VMM (all its threads) inside its own cgroup from its first instruction.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, createReadStream, createWriteStream, existsSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { AccelChoice } from './accel.ts';
import { AgentClient } from './agent/index.ts';
import type { GuestStats } from './agent/index.ts';
import type { Cgroup, CgroupManager } from './cgroup/index.ts';
import {
  validateSpec, type Accelerator, type ExecHandle, type ExecRequest, type ResourceUpdate, type Sandbox,
  type SandboxMetrics, type SandboxRuntime, type SandboxSpec, type SandboxState, type SandboxStatus,
  type SuspendReport, type UpdateReport, type UpdateStep, type VmmExit, type Claim,
} from './contract.ts';
import { extractOutputImage, makeOutputImage, makeRootfsImage } from './disks.ts';
import { ResizeError, SandboxError, VmmExitedError } from './errors.ts';
import type { HostPaths } from './host.ts';
import type { GuestImage } from './image/index.ts';
import { QmpClient, type CpuInfoFast, type HotpluggableCpu, type MemoryDeviceInfo, type StatusInfo } from './qmp.ts';
import { SerialQueue } from '../lib/index.ts';

const MiB = 1048576;
export const AGENT_PORT = 'org.lodger.agent';
export const VMEM_ID = 'vmem0';
const QBOOT = '/usr/share/qemu/qboot.rom';

// Firmware and kernel options that shorten boot (measured in docs/BENCHMARKS.md).
const FAST_BOOT_CMDLINE = [
  'console=ttyS0', 'quiet', 'panic=-1', 'memhp_default_state=online_movable', 'tsc=reliable', 'no_timer_check',
  'noreplace-smp', 'cryptomgr.notests', 'i8042.noaux', 'i8042.nomux', 'i8042.nopnp', 'i8042.dumbkbd',
  'rcupdate.rcu_expedited=1', 'random.trust_cpu=on', 'pci=lastbus=0', 'nokaslr', '8250.nr_uarts=1',
  // The slowest initcalls of the Debian cloud kernel under TCG that a sandbox never uses
  // (kprobe tracing, a KDF self-test, TCP cubic, IPv6, key certificates): ~250 ms.
  'initcall_blacklist=init_kprobe_trace,crypto_kdf108_init,cubictcp_register,inet6_init,init_encrypted,load_system_certificate_list',
];

export interface QemuPaths {
  runDir: string;
  qmpSocket: string;
  agentSocket: string;
  console: string;
  outputImage: string;
  rootfsImage: string;
  /** QEMU's stderr: a file, so a later process that attaches can read it too. */
  vmmLog: string;
  /** What attach() needs to take the sandbox up again: pid, size, state. */
  record: string;
}

export function sandboxPaths(runDir: string, id: string): QemuPaths {
  const dir = join(runDir, id);
  return {
    runDir: dir,
    qmpSocket: join(dir, 'qmp.sock'),
    agentSocket: join(dir, 'agent.sock'),
    console: join(dir, 'console.log'),
    outputImage: join(dir, 'output.img'),
    rootfsImage: join(dir, 'rootfs.img'),
    vmmLog: join(dir, 'vmm.log'),
    record: join(dir, 'sandbox.json'),
  };
}

export interface QemuArgsOptions {
  accel: Accelerator;
  seccomp: boolean;
  /** TCG translation cache; it dominates the VMM's own memory under TCG (16 MiB measured best here: docs/BENCHMARKS.md). */
  tbSizeMiB: number;
  /** TCG: one host thread per vCPU ("multi") or one for all ("single"). */
  tcgThread?: 'multi' | 'single';
  firmware: string | null;
  extraCmdline?: string;
  /**
   * Create every vCPU up to the maximum at boot, those beyond `vcpus` left offline in
   * the guest. Under TCG QEMU cannot safely create vCPU threads later (see vcpuUnplugMode).
   */
  coldPlugAll?: boolean;
  /** virtio-mem memory to start with (a VM restored from disk must match what it had). */
  vmemRequestedMiB?: number;
}

export function cpuModel(accel: Accelerator): string {
  return accel === 'kvm' ? 'host' : 'qemu64';
}

/** The QEMU command line for a sandbox. Pure, so it is unit-tested. */
export function qemuArgs(spec: SandboxSpec, paths: QemuPaths, image: GuestImage, o: QemuArgsOptions): string[] {
  const model = cpuModel(o.accel);
  const args = [
    '-name', `lodger-${spec.id},debug-threads=on`,
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-machine', 'q35,smbus=off,sata=off,vmport=off',
    '-accel', o.accel === 'kvm' ? 'kvm' : `tcg,thread=${o.tcgThread ?? 'multi'},tb-size=${o.tbSizeMiB}`,
    '-cpu', model,
    // One socket per vCPU, so each can be plugged alone; boot with one and cold-plug
    // the rest as devices with ids, which makes every one but the first unpluggable.
    '-smp', `1,sockets=${spec.maxVcpus},cores=1,threads=1,maxcpus=${spec.maxVcpus}`,
  ];
  const created = o.coldPlugAll ? spec.maxVcpus : spec.vcpus;
  for (let s = 1; s < created; s++) args.push('-device', `${model}-x86_64-cpu,id=vcpu-s${s},socket-id=${s},core-id=0,thread-id=0`);
  if (o.firmware) args.push('-bios', o.firmware);
  const hot = spec.maxMemoryMiB - spec.memoryMiB;
  args.push('-m', hot > 0 ? `${spec.memoryMiB}M,slots=1,maxmem=${spec.maxMemoryMiB}M` : `${spec.memoryMiB}M`);
  if (hot > 0) {
    args.push('-object', `memory-backend-ram,id=vmem-ram,size=${hot}M`,
      '-device', `virtio-mem-pci,id=${VMEM_ID},memdev=vmem-ram,requested-size=${o.vmemRequestedMiB ?? 0}M,block-size=2M`);
  }
  args.push(
    '-kernel', image.kernel, '-initrd', image.initramfs,
    '-append', [...FAST_BOOT_CMDLINE, ...(o.coldPlugAll ? [`maxcpus=${spec.vcpus}`, `lodger.vcpus=${spec.vcpus}`] : []), o.extraCmdline ?? ''].join(' ').trim(),
    '-chardev', `file,id=con,path=${paths.console}`, '-serial', 'chardev:con',
    '-device', 'virtio-serial-pci,id=vser0',
    '-chardev', `socket,id=agent,path=${paths.agentSocket},server=on,wait=off`,
    '-device', `virtserialport,bus=vser0.0,chardev=agent,name=${AGENT_PORT}`,
    '-chardev', `socket,id=qmp,path=${paths.qmpSocket},server=on,wait=off`,
    '-mon', 'chardev=qmp,mode=control',
  );
  if (spec.outputDir || spec.outputDisk) {
    args.push('-drive', `if=none,id=output,file=${paths.outputImage},format=raw`,
      '-device', 'virtio-blk-pci,drive=output,serial=lodger-output');
  }
  if (spec.rootfsDir) {
    args.push('-drive', `if=none,id=rootfs,file=${paths.rootfsImage},format=raw,readonly=on`,
      '-device', 'virtio-blk-pci,drive=rootfs,serial=lodger-rootfs');
  }
  if (o.seccomp) args.push('-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
  return args;
}

export type VcpuUnplugMode = 'acpi' | 'offline';

export interface QemuRuntimeOptions {
  host: HostPaths;
  image: GuestImage;
  accel: AccelChoice;
  /** Null runs VMMs without a cgroup of their own (only for hosts without one). */
  cgroups: CgroupManager | null;
  bootTimeoutMs?: number;
  seccomp?: boolean;
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
}

/** Written to the sandbox's record file; read back by attach(). */
interface SandboxRecord {
  spec: SandboxSpec;
  limits: { maxVcpus: number; maxMemoryMiB: number };
  pid: number | null;
  state: 'running' | 'paused' | 'suspended';
  vcpus: number;
  memoryMiB: number;
  baseMemTotalKiB: number;
  wasPausedWhenSuspended: boolean;
}

export class QemuRuntime implements SandboxRuntime {
  constructor(readonly opts: QemuRuntimeOptions) {}

  get accel(): Accelerator {
    return this.opts.accel.accel;
  }

  async create(spec: SandboxSpec): Promise<QemuSandbox> {
    const bad = validateSpec(spec);
    if (bad) throw new SandboxError('SANDBOX_BAD_SPEC', `sandbox ${spec.id}: ${bad}`);
    return new QemuSandbox(spec, this.opts);
  }

  async attach(id: string): Promise<QemuSandbox> {
    // The spec comes from the sandbox's record; this one only names it.
    const sb = new QemuSandbox({ id, vcpus: 1, maxVcpus: 1, memoryMiB: 128, maxMemoryMiB: 128 }, this.opts);
    await sb.attachExisting();
    return sb;
  }
}

function tail(text: string, lines: number): string {
  return text.trim().split('\n').slice(-lines).join('\n');
}

export class QemuSandbox implements Sandbox {
  readonly id: string;
  readonly paths: QemuPaths;
  private state: SandboxState = 'created';
  private child: ChildProcess | null = null;
  /** The VMM's pid when it is not our child (taken up by attach()). */
  private attachedPid: number | null = null;
  private qmp: QmpClient | null = null;
  private agent: AgentClient | null = null;
  private cgroup: Cgroup | null = null;
  private vcpus: number;
  private memoryMiB: number;
  private bootMs: number | null = null;
  private error: string | null = null;
  private stderrTail = '';
  private exitInfo: VmmExit | null = null;
  private stopping = false;
  private outputCollected = false;
  private readonly exited: Promise<VmmExit>;
  private resolveExit!: (e: VmmExit) => void;
  private cleanedUp: Promise<void> | null = null;
  /** Guest MemTotal with no virtio-mem memory plugged: the base the guest sees. */
  private baseMemTotalKiB = 0;
  /** Resolves when the current VMM process exits. */
  private childExit: Promise<void> = Promise.resolve();
  /** Set while the VMM is being ended on purpose to suspend to disk. */
  private suspending = false;
  private wasPausedWhenSuspended = false;
  /** Let go of by release(): this object no longer owns the VMM. */
  private released = false;
  /** An ACPI vCPU unplug happened (TCG then cannot plug again). */
  private acpiUnplugged = false;
  /** update() calls run one at a time. */
  private readonly updating = new SerialQueue();

  /** Growth caps: the booted maximum, or less once a job claimed the sandbox. */
  private limits: { maxVcpus: number; maxMemoryMiB: number };

  constructor(public spec: SandboxSpec, private readonly opts: QemuRuntimeOptions) {
    this.id = spec.id;
    this.limits = { maxVcpus: spec.maxVcpus, maxMemoryMiB: spec.maxMemoryMiB };
    this.paths = sandboxPaths(opts.host.runDir, spec.id);
    this.vcpus = spec.vcpus;
    this.memoryMiB = spec.memoryMiB;
    this.exited = new Promise((r) => { this.resolveExit = r; });
  }

  get accel(): Accelerator {
    return this.opts.accel.accel;
  }

  get pid(): number | null {
    return this.child?.pid ?? this.attachedPid;
  }

  get cgroupDirs(): ReadonlyMap<string, string> | null {
    return this.cgroup?.dirs ?? null;
  }

  private log(msg: string): void {
    this.opts.log?.(`[sandbox ${this.id}] ${msg}`);
  }

  async start(): Promise<void> {
    if (this.state !== 'created') throw new SandboxError('SANDBOX_BAD_STATE', `sandbox ${this.id} is ${this.state}, not created`);
    this.state = 'starting';
    const t0 = performance.now();
    try {
      await rm(this.paths.runDir, { recursive: true, force: true });
      await mkdir(this.paths.runDir, { recursive: true });
      if (this.opts.cgroups) {
        this.cgroup = await this.opts.cgroups.create(`sb-${this.id}`);
        if (this.spec.cgroup) await this.cgroup.apply(this.spec.cgroup);
      }
      if (this.spec.outputDir || this.spec.outputDisk) await makeOutputImage(this.paths.outputImage, this.spec.outputDiskMiB ?? 256);
      if (this.spec.rootfsDir) await makeRootfsImage(this.spec.rootfsDir, this.paths.rootfsImage);
      this.spawnVmm();
      const bootTimeout = this.opts.bootTimeoutMs ?? (this.accel === 'kvm' ? 15_000 : 60_000);
      this.qmp = new QmpClient(this.paths.qmpSocket);
      await this.raceExit(this.qmp.connect(10_000));
      this.agent = this.newAgent();
      await this.raceExit(this.agent.connect(10_000));
      await this.raceExit(this.agent.waitReady(bootTimeout));
      this.bootMs = performance.now() - t0;
      const stats = this.agent.stats ?? (await this.agent.requestStats());
      this.baseMemTotalKiB = stats.memTotalKiB;
      this.state = 'running';
      this.writeRecord();
      this.log(`ready in ${this.bootMs.toFixed(0)} ms (${this.accel}, vCPU unplug by ${this.vcpuUnplugMode}, pid ${this.pid})`);
    } catch (e) {
      this.state = 'failed';
      const consoleText = await readFile(this.paths.console, 'utf8').catch(() => '');
      this.error = `${(e as Error).message}${consoleText ? `\nguest console:\n${tail(consoleText, 15)}` : ''}`;
      await this.kill();
      await this.cleanup();
      if (e instanceof SandboxError && e.code === 'SANDBOX_VMM_EXITED') throw e;
      throw new SandboxError(e instanceof SandboxError && e.code === 'SANDBOX_BOOT_TIMEOUT' ? 'SANDBOX_BOOT_TIMEOUT' : 'SANDBOX_BOOT_FAILED',
        `sandbox ${this.id} failed to boot: ${this.error}`, { cause: e });
    }
  }

  private spawnVmm(extra: string[] = []): void {
    // A VM restored from disk is started with the vCPUs and memory it had when saved.
    const spec = extra.length ? { ...this.spec, vcpus: this.vcpuUnplugMode === 'offline' ? this.spec.vcpus : this.vcpus } : this.spec;
    const args = qemuArgs(spec, this.paths, this.opts.image, {
      vmemRequestedMiB: extra.length ? this.memoryMiB - this.spec.memoryMiB : 0,
      accel: this.accel,
      seccomp: this.opts.seccomp ?? true,
      // 16 MiB: faster boots and ~16 MiB less RSS than 32 here. A vCPU thread created
      // after boot needs free cache regions, which 16 MiB runs out of at once: the ACPI
      // path under TCG keeps 32 (docs/BENCHMARKS.md).
      tbSizeMiB: this.opts.tbSizeMiB ?? (this.vcpuUnplugMode === 'acpi' ? 32 : 16),
      tcgThread: this.opts.tcgThread,
      extraCmdline: this.opts.extraCmdline,
      coldPlugAll: this.vcpuUnplugMode === 'offline',
      firmware: existsSync(QBOOT) ? QBOOT : null,
    });
    // The shell joins the cgroup, then becomes QEMU: every thread QEMU ever makes is
    // born inside the cgroup, so none is left behind in the daemon's. It also drops the
    // CPU affinity inherited from us: where a sandbox runs is its cgroup's cpuset, set by
    // the controller, not wherever the daemon was pinned.
    const script = 'for f in $LODGER_CGROUP_PROCS; do echo $$ > "$f" || exit 125; done; '
      + 'if [ -n "$LODGER_CPUS" ] && command -v taskset >/dev/null; then exec taskset -c "$LODGER_CPUS" "$@"; fi; exec "$@"';
    let onlineCpus = '';
    try { onlineCpus = readFileSync(join(this.opts.host.sys, 'devices/system/cpu/online'), 'utf8').trim(); } catch { /* keep the inherited affinity */ }
    const errFd = openSync(this.paths.vmmLog, 'a');
    const child = spawn('/bin/sh', ['-c', script, 'lodger-vmm', this.opts.host.qemuBinary, ...args, ...extra], {
      env: { ...process.env, LODGER_CGROUP_PROCS: this.cgroup?.procsFiles.join(' ') ?? '', LODGER_CPUS: onlineCpus },
      stdio: ['ignore', 'ignore', errFd],
      detached: this.opts.detachVmm ?? false,
    });
    closeSync(errFd);
    this.child = child;
    this.attachedPid = null;
    this.childExit = new Promise((resolve) => child.once('exit', () => resolve()));
    child.on('exit', (code, signal) => {
      // The VMM we ended to suspend to disk is not the sandbox's end.
      if (child !== this.child || this.suspending || this.released) return;
      this.onVmmExit(code, signal);
    });
    child.on('error', (e) => {
      this.stderrTail += `\nspawn failed: ${e.message}`;
      if (child === this.child) this.onVmmExit(127, null);
    });
  }

  private onVmmExit(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.exitInfo) return;
    const expected = this.stopping;
    this.exitInfo = { code, signal, expected };
    const err = this.exitError();
    if (!expected) {
      this.error = err.message;
      this.log(err.message);
    }
    if (this.state !== 'starting') this.state = expected ? 'stopped' : 'failed';
    this.agent?.fail(err);
    this.qmp?.close();
    this.resolveExit(this.exitInfo);
    // An unexpected death still releases the cgroup; the output disk stays for collectOutput().
    if (!expected && this.state !== 'starting') void this.releaseCgroup();
  }

  private exitError(): VmmExitedError {
    const x = this.exitInfo!;
    let log = '';
    try { log = readFileSync(this.paths.vmmLog, 'utf8').slice(-8192); } catch { /* removed with the run directory */ }
    return new VmmExitedError(this.id, x.code, x.signal, x.code === 125 ? 'could not join its cgroup' : tail(log + this.stderrTail, 5));
  }

  /** What attach() needs, kept next to the sandbox's sockets; replaced atomically. */
  private writeRecord(): void {
    if (this.state !== 'running' && this.state !== 'paused' && this.state !== 'suspended') return;
    const rec: SandboxRecord = {
      spec: this.spec, limits: this.limits,
      pid: this.state === 'suspended' ? null : this.pid, state: this.state, vcpus: this.vcpus, memoryMiB: this.memoryMiB,
      baseMemTotalKiB: this.baseMemTotalKiB, wasPausedWhenSuspended: this.wasPausedWhenSuspended,
    };
    try {
      writeFileSync(`${this.paths.record}.tmp`, JSON.stringify(rec));
      renameSync(`${this.paths.record}.tmp`, this.paths.record);
    } catch (e) {
      this.log(`sandbox record not written: ${(e as Error).message}`);
    }
  }

  /**
   * Takes up a sandbox an earlier process left: reconnects QMP and the agent of a VMM
   * that still runs (checked by its pid and its -name, never the pid alone), or takes a
   * sandbox suspended to disk as it is, to be resumed later.
   */
  async attachExisting(): Promise<void> {
    let rec: SandboxRecord;
    try {
      rec = JSON.parse(readFileSync(this.paths.record, 'utf8')) as SandboxRecord;
    } catch (e) {
      throw new SandboxError('SANDBOX_GONE', `sandbox ${this.id} has no record in ${this.paths.runDir}: ${(e as Error).message}`);
    }
    this.spec = rec.spec;
    this.limits = rec.limits;
    this.vcpus = rec.vcpus;
    this.memoryMiB = rec.memoryMiB;
    this.baseMemTotalKiB = rec.baseMemTotalKiB;
    this.wasPausedWhenSuspended = rec.wasPausedWhenSuspended;
    this.cgroup = this.opts.cgroups?.open(`sb-${this.id}`) ?? null;
    this.agent = this.newAgent();
    if (rec.state === 'suspended' || rec.pid === null) {
      if (!existsSync(this.statePath)) throw new SandboxError('SANDBOX_GONE', `sandbox ${this.id} was suspended but its saved state is gone`);
      this.state = 'suspended';
      this.log('attached: suspended to disk');
      return;
    }
    if (!this.isOurVmm(rec.pid)) throw new SandboxError('SANDBOX_GONE', `the VMM of sandbox ${this.id} (pid ${rec.pid}) is not running any more`);
    this.attachedPid = rec.pid;
    this.state = 'starting';
    this.childExit = this.watchPid(rec.pid);
    try {
      this.qmp = new QmpClient(this.paths.qmpSocket);
      await this.raceExit(this.qmp.connect(10_000));
      const status = await this.qmp.execute<StatusInfo>('query-status');
      await this.raceExit(this.agent.connect(10_000));
      // A paused guest cannot answer: let it run for the handshake, then pause it again.
      if (status.status === 'paused') await this.qmp.execute('cont');
      await this.raceExit(this.agent.waitReady(30_000));
      const actual = await this.reread();
      if (status.status === 'paused') await this.qmp.execute('stop');
      this.vcpus = actual.vcpus;
      this.memoryMiB = actual.memoryMiB;
      this.state = status.status === 'paused' ? 'paused' : 'running';
      this.writeRecord();
      this.log(`attached to running VMM (pid ${rec.pid}, ${this.state}, ${this.vcpus} vCPUs, ${this.memoryMiB} MiB)`);
    } catch (e) {
      this.state = 'failed';
      this.qmp?.close();
      this.agent.close();
      throw new SandboxError(e instanceof SandboxError && e.code === 'SANDBOX_VMM_EXITED' ? 'SANDBOX_GONE' : 'SANDBOX_AGENT_ERROR',
        `sandbox ${this.id}: attaching to pid ${rec.pid} failed: ${(e as Error).message}`, { cause: e });
    }
  }

  /** The process is alive and is this sandbox's QEMU (its -name says so). */
  private isOurVmm(pid: number): boolean {
    return isSandboxVmm(this.opts.host.proc, pid, this.id);
  }

  /** A VMM that is not our child: its exit is seen by polling /proc. */
  private watchPid(pid: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setInterval(() => {
        if (this.attachedPid !== pid) return void clearInterval(timer);
        if (this.isOurVmm(pid)) return;
        clearInterval(timer);
        resolve();
        if (!this.suspending) this.onVmmExit(null, null);
      }, 100);
    });
  }

  private newAgent(): AgentClient {
    const agent = new AgentClient(this.paths.agentSocket);
    agent.onChannelClose = async () => {
      if (await this.exitedWithin(2000)) return this.exitError();
      return new SandboxError('SANDBOX_AGENT_ERROR', `sandbox ${this.id}: agent channel closed while QEMU runs`);
    };
    return agent;
  }

  async claim(c: Claim): Promise<void> {
    this.assertRunning('claim');
    if (c.outputDir && !this.spec.outputDisk && !this.spec.outputDir) throw new SandboxError('SANDBOX_BAD_SPEC', `sandbox ${this.id} was booted without an /output disk`);
    if (c.maxVcpus < this.vcpus || c.maxVcpus > this.spec.maxVcpus || c.maxMemoryMiB < this.memoryMiB || c.maxMemoryMiB > this.spec.maxMemoryMiB) {
      throw new SandboxError('SANDBOX_BAD_SPEC', `claim of ${this.id}: limits ${c.maxVcpus} vCPUs / ${c.maxMemoryMiB} MiB outside [${this.vcpus}, ${this.spec.maxVcpus}] / [${this.memoryMiB}, ${this.spec.maxMemoryMiB}]`);
    }
    this.spec = { ...this.spec, outputDir: c.outputDir };
    this.limits = { maxVcpus: c.maxVcpus, maxMemoryMiB: c.maxMemoryMiB };
    this.writeRecord();
  }

  /**
   * Lets go of the sandbox without stopping it, as a daemon that dies does: its sockets
   * close and the VMM runs on for another process (or runtime) to attach() to.
   */
  release(): void {
    this.released = true;
    this.attachedPid = null;
    this.agent?.detach();
    this.qmp?.close();
    this.child?.unref();
  }

  async resumeExec(execId: number, offsets: [number, number]): Promise<ExecHandle> {
    if (this.exitInfo) throw new VmmExitedError(this.id, this.exitInfo.code, this.exitInfo.signal, 'cannot resume an exec');
    if (!this.agent) throw new SandboxError('SANDBOX_BAD_STATE', `cannot resume an exec: sandbox ${this.id} is ${this.state}`);
    // A suspended sandbox replays once resume() has reconnected the agent.
    return this.agent.resumeExec(execId, offsets);
  }

  private async raceExit<T>(p: Promise<T>): Promise<T> {
    const died = this.exited.then(() => {
      throw this.exitError();
    });
    died.catch(() => {});
    return Promise.race([p, died]);
  }

  private assertRunning(what: string): { qmp: QmpClient; agent: AgentClient } {
    if (this.exitInfo) throw new VmmExitedError(this.id, this.exitInfo.code, this.exitInfo.signal, `cannot ${what}`);
    if ((this.state !== 'running' && this.state !== 'paused') || !this.qmp || !this.agent) {
      throw new SandboxError('SANDBOX_BAD_STATE', `cannot ${what}: sandbox ${this.id} is ${this.state}`);
    }
    return { qmp: this.qmp, agent: this.agent };
  }

  async exec(req: ExecRequest): Promise<ExecHandle> {
    const { agent } = this.assertRunning('exec');
    if (this.state === 'paused') throw new SandboxError('SANDBOX_BAD_STATE', `cannot exec: sandbox ${this.id} is paused`);
    if (!req.argv.length) throw new SandboxError('SANDBOX_BAD_SPEC', 'exec needs a command');
    this.outputCollected = false;
    return agent.exec({ argv: req.argv, env: req.env ?? {}, cwd: req.cwd ?? '/', chroot: !!this.spec.rootfsDir });
  }

  update(req: ResourceUpdate): Promise<UpdateReport> {
    // Host-side knobs are the fast path: they must not wait behind a vCPU or memory
    // step of hundreds of milliseconds, so a knobs-only update skips the queue.
    if (req.vcpus === undefined && req.memoryMiB === undefined) return this.doUpdate(req);
    return this.updating.run(() => this.doUpdate(req));
  }

  private async doUpdate(req: ResourceUpdate): Promise<UpdateReport> {
    const { qmp, agent } = this.assertRunning('update');
    const t0 = performance.now();
    const steps: UpdateStep[] = [];
    if (req.vcpus !== undefined && (!Number.isInteger(req.vcpus) || req.vcpus < 1 || req.vcpus > this.limits.maxVcpus)) {
      throw new SandboxError('SANDBOX_BAD_SPEC', `vcpus must be in [1, ${this.limits.maxVcpus}] (got ${req.vcpus})`);
    }
    if (req.memoryMiB !== undefined) {
      const m = req.memoryMiB;
      if (!Number.isInteger(m) || m < this.spec.memoryMiB || m > this.limits.maxMemoryMiB || (m - this.spec.memoryMiB) % 2 !== 0) {
        throw new SandboxError('SANDBOX_BAD_SPEC',
          `memoryMiB must be in [${this.spec.memoryMiB}, ${this.limits.maxMemoryMiB}] in 2 MiB steps (got ${m})`);
      }
    }
    if (this.state === 'paused' && (req.vcpus !== undefined || req.memoryMiB !== undefined)) {
      throw new SandboxError('SANDBOX_BAD_STATE', `cannot resize sandbox ${this.id} while paused: the guest must take part`);
    }
    try {
      if (req.cgroup && this.cgroup) {
        const t = performance.now();
        const writes = await this.cgroup.apply(req.cgroup);
        steps.push({ kind: 'cgroup', detail: writes.map((w) => `${w.file}=${w.value}`).join(', ') || 'no change', ms: performance.now() - t });
      }
      if (req.vcpus !== undefined && req.vcpus !== this.vcpus) await this.setVcpus(qmp, agent, req.vcpus, steps);
      if (req.memoryMiB !== undefined && req.memoryMiB !== this.memoryMiB) await this.setMemory(qmp, agent, req.memoryMiB, steps);
    } catch (e) {
      // A closed QMP socket usually means QEMU died: say so, with its last words.
      if (e instanceof SandboxError && e.code === 'QMP_CLOSED' && (await this.exitedWithin(1000))) throw this.exitError();
      const actual = await this.reread().catch(() => ({ vcpus: this.vcpus, memoryMiB: this.memoryMiB }));
      this.vcpus = actual.vcpus;
      this.memoryMiB = actual.memoryMiB;
      if (e instanceof VmmExitedError) throw e;
      throw new ResizeError(`sandbox ${this.id}: resize failed: ${(e as Error).message}`, actual, { cause: e });
    }
    if (req.vcpus !== undefined || req.memoryMiB !== undefined) this.writeRecord();
    return { steps, totalMs: performance.now() - t0, vcpus: this.vcpus, memoryMiB: this.memoryMiB };
  }

  /** What QEMU says the sandbox has now. */
  private async reread(): Promise<{ vcpus: number; memoryMiB: number }> {
    const qmp = this.qmp!;
    const memoryMiB = this.spec.memoryMiB + Math.round((await this.vmemSize(qmp)) / MiB);
    // Offline vCPUs still exist in QEMU: the guest's online count is the truth then.
    const vcpus = this.vcpuUnplugMode === 'offline'
      ? (await this.agent!.requestStats()).cpusOnline
      : (await qmp.execute<CpuInfoFast[]>('query-cpus-fast')).length;
    return { vcpus, memoryMiB };
  }

  private async vmemSize(qmp: QmpClient): Promise<number> {
    if (this.spec.maxMemoryMiB === this.spec.memoryMiB) return 0;
    const devs = await qmp.execute<MemoryDeviceInfo[]>('query-memory-devices');
    const d = devs.find((x) => x.data.id === VMEM_ID);
    if (!d) throw new SandboxError('SANDBOX_RESIZE_FAILED', `virtio-mem device ${VMEM_ID} missing from query-memory-devices`);
    return d.data.size;
  }

  private stepTimeoutMs(): number {
    return this.accel === 'kvm' ? 5_000 : 30_000;
  }

  /**
   * How vCPUs come and go. 'acpi': device_add / device_del, the guest ejects the CPU.
   * 'offline': every vCPU exists from boot and the guest onlines or offlines them; an
   * offline vCPU's thread sleeps. Under TCG QEMU cannot create vCPU threads safely after
   * boot (7.2 aborts in tcg_region_initial_alloc once the translation cache's regions are
   * taken, and on any re-plug after an unplug; 10.0 after maxcpus thread creations), so
   * TCG defaults to 'offline'.
   */
  get vcpuUnplugMode(): VcpuUnplugMode {
    return this.opts.vcpuUnplug ?? (this.accel === 'kvm' ? 'acpi' : 'offline');
  }

  private async setVcpus(qmp: QmpClient, agent: AgentClient, target: number, steps: UpdateStep[]): Promise<void> {
    const sortKey = (c: HotpluggableCpu): number => (c.props['socket-id'] ?? 0) * 65536 + (c.props['core-id'] ?? 0) * 256 + (c.props['thread-id'] ?? 0);
    const mode = this.vcpuUnplugMode;
    let slots = await qmp.execute<HotpluggableCpu[]>('query-hotpluggable-cpus');
    let plugged = slots.filter((c) => c['qom-path']).length;
    let online = this.vcpus;
    while (online < target) {
      const t = performance.now();
      let detail: string;
      let kind: UpdateStep['kind'] = 'vcpu-online';
      if (online >= plugged) {
        if (this.accel === 'tcg' && this.acpiUnplugged) {
          throw new SandboxError('SANDBOX_RESIZE_FAILED', 'refusing to plug a vCPU after an ACPI unplug under TCG: QEMU aborts on it (use vcpuUnplug "offline")');
        }
        const free = slots.filter((c) => !c['qom-path']).sort((a, b) => sortKey(a) - sortKey(b))[0];
        if (!free) throw new SandboxError('SANDBOX_RESIZE_FAILED', `no free vCPU slot for ${online + 1} of ${target}`);
        const id = `vcpu-s${free.props['socket-id'] ?? 0}c${free.props['core-id'] ?? 0}t${free.props['thread-id'] ?? 0}`;
        await qmp.execute('device_add', { driver: free.type, id, ...free.props });
        plugged++;
        kind = 'vcpu-plug';
        detail = `${online} -> ${online + 1} (${id})`;
        slots = await qmp.execute<HotpluggableCpu[]>('query-hotpluggable-cpus');
      } else {
        detail = `${online} -> ${online + 1} (guest online)`;
      }
      const want = online + 1;
      // A hot-added CPU appears in the guest a moment after device_add: the agent onlines
      // it when its uevent arrives, so keep asking until the count is reached.
      await agent.setCpus(want);
      await agent.waitStats((s) => s.cpusOnline >= want, this.stepTimeoutMs());
      online = want;
      this.vcpus = online;
      steps.push({ kind, detail, ms: performance.now() - t });
    }
    while (online > target) {
      const t = performance.now();
      const want = online - 1;
      if (mode === 'offline') {
        await agent.setCpus(want);
        await agent.waitStats((s) => s.cpusOnline <= want, this.stepTimeoutMs());
        steps.push({ kind: 'vcpu-offline', detail: `${online} -> ${want} (guest offline)`, ms: performance.now() - t });
      } else {
        await this.acpiUnplugOne(qmp, slots, sortKey);
        this.acpiUnplugged = true;
        await agent.setCpus(want);
        await agent.waitStats((s) => s.cpusOnline <= want, this.stepTimeoutMs());
        steps.push({ kind: 'vcpu-unplug', detail: `${online} -> ${want}`, ms: performance.now() - t });
        slots = await qmp.execute<HotpluggableCpu[]>('query-hotpluggable-cpus');
        plugged--;
      }
      online = want;
      this.vcpus = online;
    }
    // QEMU's view must agree: every online vCPU exists, and after ACPI unplugs no more.
    const seen = (await qmp.execute<CpuInfoFast[]>('query-cpus-fast')).length;
    if (seen < target || (mode === 'acpi' && seen !== plugged)) {
      throw new SandboxError('SANDBOX_RESIZE_FAILED', `QEMU reports ${seen} vCPUs after resizing to ${target}`);
    }
  }

  /** device_del of the highest unpluggable vCPU, confirmed by QEMU. */
  private async acpiUnplugOne(qmp: QmpClient, slots: HotpluggableCpu[], sortKey: (c: HotpluggableCpu) => number): Promise<void> {
    // Only CPUs we gave an id (cold- or hot-plugged as devices) can be unplugged.
    const victim = slots.filter((c) => c['qom-path']?.startsWith('/machine/peripheral/')).sort((a, b) => sortKey(b) - sortKey(a))[0];
    if (!victim) throw new SandboxError('SANDBOX_RESIZE_FAILED', 'no unpluggable vCPU left (the boot vCPU stays)');
    const path = victim['qom-path']!;
    const id = path.split('/').pop()!;
    // QEMU 7.2 emits DEVICE_DELETED only for the CPU's child (".../lapic"), and reports
    // a guest refusal as an ACPI _OST eject status 0x80-0x83 rather than
    // DEVICE_UNPLUG_GUEST_ERROR: accept all three forms.
    const ev = qmp.waitEvent(['DEVICE_DELETED', 'DEVICE_UNPLUG_GUEST_ERROR', 'ACPI_DEVICE_OST'], (e) => {
      if (e.event === 'ACPI_DEVICE_OST') return isOstEjectFailure(e.data, id);
      const p = typeof e.data.path === 'string' ? e.data.path : '';
      return e.data.device === id || p === path || p.startsWith(`${path}/`);
    }, this.stepTimeoutMs());
    try {
      await qmp.execute('device_del', { id });
    } catch (e) {
      ev.cancel();
      throw e;
    }
    const e = await ev.promise;
    if (e.event !== 'DEVICE_DELETED') throw new SandboxError('SANDBOX_RESIZE_FAILED', `guest refused to unplug vCPU ${id} (${e.event} ${JSON.stringify(e.data)})`);
    await this.until(async () => !(await qmp.execute<CpuInfoFast[]>('query-cpus-fast')).some((c) => c['qom-path'] === path),
      this.stepTimeoutMs(), `vCPU ${id} still listed by query-cpus-fast`);
  }

  private async until(cond: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await cond())) {
      if (Date.now() > deadline) throw new SandboxError('SANDBOX_RESIZE_FAILED', `${what} after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  private async setMemory(qmp: QmpClient, agent: AgentClient, targetMiB: number, steps: UpdateStep[]): Promise<void> {
    const from = this.memoryMiB;
    const requested = (targetMiB - this.spec.memoryMiB) * MiB;
    const t = performance.now();
    await qmp.execute('qom-set', { path: `/machine/peripheral/${VMEM_ID}`, property: 'requested-size', value: requested });
    // QEMU rate-limits MEMORY_DEVICE_SIZE_CHANGE to one a second: poll the size instead.
    const timeout = targetMiB > from ? this.stepTimeoutMs() : this.stepTimeoutMs() * 2;
    const deadline = Date.now() + timeout;
    let size = await this.vmemSize(qmp);
    while (size !== requested) {
      if (Date.now() > deadline) {
        // Stop the guest chasing a size it cannot reach: pin the request to what it has.
        await qmp.execute('qom-set', { path: `/machine/peripheral/${VMEM_ID}`, property: 'requested-size', value: size }).catch(() => {});
        this.memoryMiB = this.spec.memoryMiB + Math.round(size / MiB);
        throw new SandboxError('SANDBOX_RESIZE_FAILED',
          `virtio-mem reached ${Math.round(size / MiB)} of ${Math.round(requested / MiB)} MiB within ${timeout} ms`);
      }
      await new Promise((r) => setTimeout(r, 5));
      size = await this.vmemSize(qmp);
    }
    this.memoryMiB = targetMiB;
    // The guest's MemTotal follows once the blocks are onlined (or taken away).
    const expectKiB = this.baseMemTotalKiB + requested / 1024;
    await agent.waitStats((s) => Math.abs(s.memTotalKiB - expectKiB) <= 4096, this.stepTimeoutMs());
    steps.push({ kind: 'memory', detail: `${from} -> ${targetMiB} MiB`, ms: performance.now() - t });
  }

  async pause(): Promise<void> {
    const { qmp } = this.assertRunning('pause');
    if (this.state === 'paused') return;
    await qmp.execute('stop');
    this.state = 'paused';
    this.writeRecord();
  }

  async resume(): Promise<void> {
    if (this.state === 'suspended') return this.restore();
    const { qmp } = this.assertRunning('resume');
    if (this.state !== 'paused') return;
    await qmp.execute('cont');
    this.state = 'running';
    this.writeRecord();
  }

  private get statePath(): string {
    return join(this.paths.runDir, 'suspended.state');
  }

  async suspend(): Promise<SuspendReport> {
    const { qmp, agent } = this.assertRunning('suspend');
    const t0 = performance.now();
    const wasPaused = this.state === 'paused';
    if (wasPaused) await qmp.execute('cont');
    this.state = 'suspending';
    // What the guest has written to /output reaches the disk image first, so a sandbox
    // that is never resumed still gives its output back.
    await agent.sync().catch(() => {});
    const sock = join(this.paths.runDir, 'migrate-out.sock');
    const server = net.createServer();
    let bytes = 0;
    const received = new Promise<void>((resolve, reject) => {
      server.once('connection', (c) => {
        const out = createWriteStream(this.statePath);
        c.on('data', (b: Buffer) => { bytes += b.length; });
        c.on('error', reject);
        out.on('error', reject);
        out.on('finish', () => resolve());
        c.pipe(out);
      });
    });
    received.catch(() => {});
    await new Promise<void>((resolve, reject) => server.listen(sock, resolve).once('error', reject));
    try {
      // QEMU streams the VM to our socket (exec: migration would need a shell, which its
      // seccomp sandbox forbids); we write the stream to a file.
      await qmp.execute('migrate', { uri: `unix:${sock}` });
      await this.until(async () => {
        const m = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
        if (m.status === 'failed' || m.status === 'cancelled') throw new SandboxError('SANDBOX_AGENT_ERROR', `migration to disk ${m.status}: ${m['error-desc'] ?? ''}`);
        return m.status === 'completed';
      }, 300_000, 'saving the VM to disk did not complete');
      await received;
    } catch (e) {
      await qmp.execute('migrate_cancel').catch(() => {});
      await qmp.execute('cont').catch(() => {});
      this.state = wasPaused ? 'paused' : 'running';
      if (wasPaused) await qmp.execute('stop').catch(() => {});
      await rm(this.statePath, { force: true });
      throw new SandboxError('SANDBOX_RESIZE_FAILED', `sandbox ${this.id}: suspend to disk failed: ${(e as Error).message}`, { cause: e });
    } finally {
      server.close();
    }
    // The VM is stopped and saved: end the VMM so its memory goes back to the host.
    this.suspending = true;
    this.wasPausedWhenSuspended = wasPaused;
    agent.detach();
    await qmp.execute('quit', undefined, 2000).catch(() => {});
    qmp.close();
    if (!(await this.within(this.childExit, 5000)) && this.pid) process.kill(this.pid, 'SIGKILL');
    await this.childExit;
    this.suspending = false;
    this.state = 'suspended';
    this.writeRecord();
    const ms = performance.now() - t0;
    this.log(`suspended to disk: ${(bytes / 1048576).toFixed(0)} MiB in ${ms.toFixed(0)} ms`);
    return { bytes, ms };
  }

  /** Starts a new VMM that takes the saved VM back from disk and lets it run on. */
  private async restore(): Promise<void> {
    this.state = 'resuming';
    const t0 = performance.now();
    try {
      this.spawnVmm(['-S', '-incoming', 'defer']);
      this.qmp = new QmpClient(this.paths.qmpSocket);
      await this.raceExit(this.qmp.connect(10_000));
      const sock = join(this.paths.runDir, 'migrate-in.sock');
      await this.qmp.execute('migrate-incoming', { uri: `unix:${sock}` });
      await new Promise<void>((resolve, reject) => {
        const c = net.connect(sock);
        c.once('error', reject);
        c.once('connect', () => {
          const src = createReadStream(this.statePath);
          src.once('error', reject);
          src.pipe(c);
          c.once('finish', () => resolve());
        });
      });
      const qmp = this.qmp;
      await this.until(async () => (await qmp.execute<StatusInfo>('query-status')).status !== 'inmigrate', 300_000, 'restoring the VM from disk did not complete');
      await qmp.execute('cont');
      await this.raceExit(this.agent!.reconnect(30_000));
      if (this.wasPausedWhenSuspended) await qmp.execute('stop');
      this.state = this.wasPausedWhenSuspended ? 'paused' : 'running';
      this.writeRecord();
      await rm(this.statePath, { force: true });
      this.log(`resumed from disk in ${(performance.now() - t0).toFixed(0)} ms (pid ${this.pid})`);
    } catch (e) {
      // The saved state stays on disk: the job is not lost, a later resume() can retry.
      if (this.pid && !this.exitInfo) {
        this.suspending = true;
        try { process.kill(this.pid, 'SIGKILL'); } catch { /* gone */ }
        await this.childExit;
        this.suspending = false;
      }
      this.state = 'suspended';
      throw new SandboxError('SANDBOX_BOOT_FAILED', `sandbox ${this.id}: resume from disk failed: ${(e as Error).message}`, { cause: e });
    }
  }

  private async within(p: Promise<unknown>, ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const r = await Promise.race([p.then(() => true), new Promise<boolean>((res) => { timer = setTimeout(() => res(false), ms); })]);
    clearTimeout(timer);
    return r;
  }

  async collectOutput(): Promise<string[]> {
    if (!this.spec.outputDir) return [];
    if (!existsSync(this.paths.outputImage)) throw new SandboxError('SANDBOX_OUTPUT_FAILED', `output disk of ${this.id} is gone`);
    const alive = !this.exitInfo && this.state === 'running' && this.agent;
    try {
      if (alive) await this.agent!.sync();
      // A guest that died may have left the filesystem half-written: check it first.
      const names = await extractOutputImage(this.paths.outputImage, this.spec.outputDir, !alive);
      this.outputCollected = true;
      return names;
    } catch (e) {
      throw new SandboxError('SANDBOX_OUTPUT_FAILED', `collecting /output of ${this.id}: ${(e as Error).message}`, { cause: e });
    }
  }

  async stop(opts: { graceMs?: number } = {}): Promise<void> {
    if (this.released) return; // another owner has it now
    if (this.state === 'created') {
      this.state = 'stopped';
      return;
    }
    // A start() that failed has already killed and cleaned up.
    if (this.cleanedUp && this.exitInfo) return;
    if (this.state === 'suspended') {
      // No VMM runs; the saved state is dropped and the (synced) output disk collected.
      this.exitInfo = { code: 0, signal: null, expected: true };
      this.resolveExit(this.exitInfo);
      this.agent?.fail(new SandboxError('SANDBOX_BAD_STATE', `sandbox ${this.id} was stopped while suspended`));
      await rm(this.statePath, { force: true });
    }
    this.stopping = !this.exitInfo;
    if (!this.exitInfo && this.pid) {
      const wasPaused = this.state === 'paused';
      this.state = 'stopping';
      const grace = opts.graceMs ?? 3000;
      // Ask the guest to power off (it syncs /output first); then QMP quit; then SIGKILL.
      const asked = !!this.agent && !wasPaused && grace > 0;
      if (asked) await this.agent!.shutdown().catch(() => {});
      // A paused guest cannot power itself off: go straight to quit.
      if (!(await this.exitedWithin(asked ? grace : 0))) {
        await this.qmp?.execute('quit', undefined, 1000).catch(() => {});
        if (!(await this.exitedWithin(1000))) await this.kill();
      }
    }
    await this.exited;
    if (this.spec.outputDir && !this.outputCollected) {
      await this.collectOutput().catch((e: unknown) => this.log(`output not collected: ${(e as Error).message}`));
    }
    await this.cleanup();
    if (this.state !== 'failed') this.state = 'stopped';
  }

  private exitedWithin(ms: number): Promise<boolean> {
    return this.within(this.exited, ms);
  }

  private async kill(): Promise<void> {
    // Only a process we know is still ours: a pid that has exited may belong to another.
    const ours = this.child
      ? this.child.exitCode === null && this.child.signalCode === null
      : this.attachedPid !== null && this.isOurVmm(this.attachedPid);
    if (this.pid && !this.exitInfo && ours) {
      this.stopping = true;
      try { process.kill(this.pid, 'SIGKILL'); } catch { /* gone */ }
      await this.exited;
    }
  }

  private async releaseCgroup(): Promise<void> {
    const cg = this.cgroup;
    if (!cg) return;
    this.cgroup = null;
    await cg.destroy().catch((e: unknown) => this.log(`cgroup not removed: ${(e as Error).message}`));
  }

  private cleanup(): Promise<void> {
    this.cleanedUp ??= (async () => {
      this.agent?.close();
      this.qmp?.close();
      await this.releaseCgroup();
      if (!process.env.LODGER_KEEP_RUN_DIR) await rm(this.paths.runDir, { recursive: true, force: true });
    })();
    return this.cleanedUp;
  }

  wait(): Promise<VmmExit> {
    return this.exited;
  }

  status(): SandboxStatus {
    return {
      id: this.id,
      state: this.state,
      accel: this.accel,
      pid: this.pid,
      vcpus: this.vcpus,
      memoryMiB: this.memoryMiB,
      maxVcpus: this.limits.maxVcpus,
      maxMemoryMiB: this.limits.maxMemoryMiB,
      guest: this.agent?.stats ?? null,
      bootMs: this.bootMs,
      error: this.error,
    };
  }

  /** The latest guest report, asked for now. */
  async guestStats(): Promise<GuestStats> {
    const { agent } = this.assertRunning('read guest stats');
    return agent.requestStats();
  }

  /** The agent channel, for tests that talk to the agent directly. */
  get agentClient(): AgentClient | null {
    return this.agent;
  }

  async metrics(): Promise<SandboxMetrics> {
    const usage = (await this.cgroup?.usage()) ?? { cpuUsageUsec: 0, memoryBytes: 0 };
    const mem = this.pid ? await vmmMemory(this.opts.host.proc, this.pid, [this.spec.memoryMiB, this.spec.maxMemoryMiB - this.spec.memoryMiB]) : null;
    return {
      cpuUsageUsec: usage.cpuUsageUsec,
      memoryBytes: usage.memoryBytes,
      vmmRssBytes: mem?.rssBytes ?? 0,
      guest: this.agent?.stats ?? null,
    };
  }
}

/** `pid` is alive (not a zombie) and is the QEMU of sandbox `id`: its -name says so. A pid alone may have been reused. */
export function isSandboxVmm(proc: string, pid: number, id: string): boolean {
  try {
    const stat = readFileSync(join(proc, String(pid), 'stat'), 'utf8');
    if (/^\d+ \(.*\) Z/.test(stat)) return false;
    return readFileSync(join(proc, String(pid), 'cmdline'), 'utf8').split('\0').includes(`lodger-${id},debug-threads=on`);
  } catch {
    return false;
  }
}

/** ACPI _OST for an eject (source 3) with status 0x80-0x83: the guest would not let go. */
export function isOstEjectFailure(data: Record<string, unknown>, id: string): boolean {
  const info = data.info as { device?: string; source?: number; status?: number } | undefined;
  return !!info && info.device === id && info.source === 3 && typeof info.status === 'number' && info.status >= 0x80 && info.status <= 0x83;
}

/**
 * The VMM's memory, split into guest RAM (the mappings sized like the guest's RAM
 * regions) and everything else, which is the VMM's own overhead. PSS divides pages
 * shared with other processes (the kernel image, QEMU's code) among them: it is what one
 * more sandbox costs the host.
 */
export async function vmmMemory(proc: string, pid: number, ramRegionsMiB: number[]): Promise<{ rssBytes: number; guestRamRssBytes: number; pssBytes: number; guestRamPssBytes: number } | null> {
  const text = await readFile(join(proc, String(pid), 'smaps'), 'utf8').catch(() => null);
  if (text === null) return null;
  const sizes = new Set(ramRegionsMiB.filter((m) => m > 0).map((m) => m * 1024));
  const total = { Rss: 0, Pss: 0 };
  const guest = { Rss: 0, Pss: 0 };
  let inGuestRam = false;
  for (const line of text.split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      inGuestRam = false;
      continue;
    }
    const m = /^(Size|Rss|Pss):\s+(\d+) kB/.exec(line);
    if (!m) continue;
    const kb = Number(m[2]);
    if (m[1] === 'Size') {
      inGuestRam = sizes.has(kb);
      continue;
    }
    const key = m[1] as 'Rss' | 'Pss';
    total[key] += kb * 1024;
    if (inGuestRam) guest[key] += kb * 1024;
  }
  return { rssBytes: total.Rss, guestRamRssBytes: guest.Rss, pssBytes: total.Pss, guestRamPssBytes: guest.Pss };
}
