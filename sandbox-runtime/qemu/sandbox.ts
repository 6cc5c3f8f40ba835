// A QEMU sandbox: a q35 VM with hotpluggable vCPUs, a virtio-mem region up to its maximum
// memory, the agent on virtio-serial, QMP for control, and the VMM (all its threads)
// inside its own cgroup from its first instruction. This class sequences the parts in
// this folder; its lifecycle is the table in states.ts.
import { mkdir, readFile, rm } from 'node:fs/promises';
import type { GuestStats } from '../agent/index.ts';
import type { Cgroup } from '../cgroup/index.ts';
import type {
  Accelerator, ExecHandle, ExecRequest, ResourceUpdate, SandboxMetrics, SandboxSpec, SandboxStatus, SuspendReport, UpdateReport, VmmExit,
} from '../contract.ts';
import { hasRootfs } from '../contract.ts';
import { makeOutputImage, makeRootfsImage } from '../disks.ts';
import { SandboxError, VmmExitedError } from '../errors.ts';
import { realAgent, type AgentConnection } from './agent.ts';
import { vmmMemory, type VmmMemory } from './args.ts';
import { OutputDisk } from './output.ts';
import { realQmp, type QmpConnection } from './qmp.ts';
import { allocateUid, holdUid, releaseUid, type JailIdentity } from './jail.ts';
import { checkJail, launchVmm } from './launch.ts';
import { cgroupName, readRecord, recordedUids, sandboxPaths, writeRecord, type QemuPaths } from './record.ts';
import type { HostedSandbox, QemuRuntimeOptions } from './runtime.ts';
import { Snapshot, type SuspendHost } from './snapshot.ts';
import { checkTransition, publicState, type Phase } from './states.ts';
import { Resources } from './resources.ts';
import type { VcpuUnplugMode } from './vcpus.ts';
import { findSandboxVmm, isSandboxVmm, killVmm, VmmProcess, type ProcessExit, type VmmIdentity } from './vmm.ts';
import { tail, within } from './wait.ts';

export class QemuSandbox implements HostedSandbox {
  readonly id: string;
  readonly paths: QemuPaths;
  private phase: Phase = 'created';
  private vmm: VmmProcess | null = null;
  private qmp: QmpConnection | null = null;
  private agent: AgentConnection | null = null;
  private cgroup: Cgroup | null = null;
  private bootMs: number | null = null;
  private error: string | null = null;
  /** The sandbox's end (not that of a VMM retired to suspend to disk). */
  private exitInfo: VmmExit | null = null;
  private readonly exited: Promise<VmmExit>;
  private resolveExit!: (e: VmmExit) => void;
  private cleaned: Promise<void> | null = null;
  private stopped: Promise<void> | null = null;
  /** Size, growth caps and how they change. */
  private readonly res: Resources;
  private readonly snapshot: Snapshot;
  private readonly output: OutputDisk;
  /** The uid/gid its VMM runs as in its jail; null when the runtime does not jail VMMs. */
  private jailId: JailIdentity | null = null;

  constructor(private spec: SandboxSpec, private readonly opts: QemuRuntimeOptions) {
    this.id = spec.id;
    this.paths = sandboxPaths(opts.host.runDir, spec.id);
    this.exited = new Promise((r) => { this.resolveExit = r; });
    this.res = new Resources(spec, opts.vcpuUnplug ?? (this.accel === 'kvm' ? 'acpi' : 'offline'), this.accel);
    this.snapshot = new Snapshot(this.paths.savedState, this.paths.migrateOut, this.paths.migrateIn, () => this.jailId);
    this.output = new OutputDisk(this.paths.outputImage, spec.id, (m) => this.log(m));
  }

  get accel(): Accelerator {
    return this.opts.accel.accel;
  }

  get pid(): number | null {
    return this.phase === 'suspended' ? null : (this.vmm?.pid ?? null);
  }

  get cgroupDirs(): ReadonlyMap<string, string> | null {
    return this.cgroup?.dirs ?? null;
  }

  get vcpuUnplugMode(): VcpuUnplugMode {
    return this.res.cpu.mode;
  }

  /** The agent channel, for tests that talk to the agent directly. */
  get agentClient(): AgentConnection | null {
    return this.agent;
  }

  private log(msg: string): void {
    this.opts.log?.(`[sandbox ${this.id}] ${msg}`);
  }

  /** Every state change: checked against the table; a state another owner may take up is recorded. */
  private to(next: Phase): void {
    checkTransition(this.id, this.phase, next);
    this.phase = next;
    this.writeRecord();
  }

  async start(): Promise<void> {
    this.to('starting');
    const t0 = performance.now();
    try {
      await rm(this.paths.runDir, { recursive: true, force: true });
      await mkdir(this.paths.socketDir, { recursive: true, mode: 0o700 });
      if (this.opts.cgroups) {
        this.cgroup = await this.opts.cgroups.create(cgroupName(this.id));
        if (this.spec.cgroup) await this.cgroup.apply(this.spec.cgroup);
      }
      if (this.spec.outputDir || this.spec.outputDisk) await makeOutputImage(this.paths.outputImage, this.spec.outputDiskMiB ?? 256);
      if (this.spec.rootfsDir && !this.spec.rootfsImage) await makeRootfsImage(this.spec.rootfsDir, this.paths.rootfsImage);
      if (this.opts.jail) this.jailId = allocateUid(this.opts.jail, this.opts.host.proc, recordedUids(this.opts.host.runDir), this.paths.runDir);
      // -S: no guest instruction runs until the jail is confirmed from /proc.
      this.spawnVmm(['-S'], false);
      const bootTimeout = this.opts.bootTimeoutMs ?? (this.accel === 'kvm' ? 15_000 : 60_000);
      const qmp = this.connectQmp();
      await this.raceExit(qmp.connect(10_000));
      this.checkJail();
      await qmp.cont();
      const agent = this.agent = this.newAgent();
      await this.raceExit(agent.connect(10_000));
      await this.raceExit(agent.waitReady(bootTimeout));
      this.bootMs = performance.now() - t0;
      this.res.mem.baseMemTotalKiB = (agent.stats ?? (await agent.requestStats())).memTotalKiB;
      this.to('running');
      this.log(`ready in ${this.bootMs.toFixed(0)} ms (${this.accel}, vCPU unplug by ${this.res.cpu.mode}, pid ${this.pid})`);
    } catch (e) {
      this.to('failed');
      const consoleText = await readFile(this.paths.console, 'utf8').catch(() => '');
      this.error = `${(e as Error).message}${consoleText ? `\nguest console:\n${tail(consoleText, 15)}` : ''}`;
      await this.kill();
      await this.cleanup();
      // Failed before a VMM ran (a disk image, the cgroup): the sandbox has ended all the same.
      if (!this.exitInfo) {
        this.exitInfo = { code: null, signal: null, expected: false };
        this.resolveExit(this.exitInfo);
      }
      if (e instanceof SandboxError && e.code === 'SANDBOX_VMM_EXITED') throw e;
      throw new SandboxError(e instanceof SandboxError && e.code === 'SANDBOX_BOOT_TIMEOUT' ? 'SANDBOX_BOOT_TIMEOUT' : 'SANDBOX_BOOT_FAILED',
        `sandbox ${this.id} failed to boot: ${this.error}`, { cause: e });
    }
  }

  /** Starts a VMM (in its jail, when jailed); `restore`: it takes the VM back from disk. */
  private spawnVmm(extra: string[], restore: boolean): void {
    this.vmm = launchVmm({
      spec: this.spec, paths: this.paths, opts: this.opts, accel: this.accel, cpu: this.res.cpu, jail: this.jailId, extra,
      restoring: restore ? { vcpus: this.res.vcpus, memoryMiB: this.res.memoryMiB } : null,
      cgroupProcs: this.cgroup?.procsFiles ?? [], identity: this.identity(),
    }, (vmm, e) => this.onVmmExit(vmm, e));
  }

  private checkJail(): void {
    checkJail(this.id, this.opts.host.proc, this.vmm?.pid ?? null, this.jailId, this.opts.seccomp ?? true);
  }

  private identity(): VmmIdentity {
    return { proc: this.opts.host.proc, id: this.id, qmpSocket: this.paths.qmpSocket, vmmLog: this.paths.vmmLog };
  }

  private connectQmp(): QmpConnection {
    this.qmp = (this.opts.qmp ?? realQmp)(this.paths.qmpSocket);
    return this.qmp;
  }

  private newAgent(): AgentConnection {
    const agent = (this.opts.agent ?? realAgent)(this.paths.agentSocket);
    agent.onChannelClose = async () => {
      if (await within(this.exited, 2000)) return this.exitError();
      return new SandboxError('SANDBOX_AGENT_ERROR', `sandbox ${this.id}: agent channel closed while QEMU runs`);
    };
    return agent;
  }

  private onVmmExit(vmm: VmmProcess, e: ProcessExit): void {
    if (vmm !== this.vmm || this.exitInfo) return;
    this.exitInfo = { code: e.code, signal: e.signal, expected: e.expected };
    const err = this.exitError();
    if (!e.expected) {
      this.error = err.message;
      this.log(err.message);
    }
    // A failing start() handles the exit itself.
    const wasStarting = this.phase === 'starting';
    if (!wasStarting) {
      const next = e.expected && this.phase === 'stopping' ? 'stopped' : 'failed';
      if (this.phase !== 'failed' && this.phase !== 'stopped' && this.phase !== 'released') this.to(next);
    }
    this.agent?.fail(err);
    this.qmp?.close();
    this.resolveExit(this.exitInfo);
    // An unexpected death still releases the cgroup; the output disk stays for collectOutput().
    if (!e.expected && !wasStarting) void this.releaseCgroup();
  }

  private exitError(): VmmExitedError {
    const x = this.exitInfo ?? { code: null, signal: null, expected: false };
    return this.vmm?.exitError(x) ?? new VmmExitedError(this.id, x.code, x.signal);
  }

  private writeRecord(): void {
    const state = this.phase;
    if (state !== 'running' && state !== 'paused' && state !== 'suspended') return;
    try {
      writeRecord(this.paths.record, {
        spec: this.spec, limits: this.res.limits, pid: this.pid, state, vcpus: this.res.vcpus, memoryMiB: this.res.memoryMiB,
        baseMemTotalKiB: this.res.mem.baseMemTotalKiB, wasPausedWhenSuspended: this.snapshot.pausedWhenSaved, jail: this.jailId,
      });
    } catch (e) {
      this.log(`sandbox record not written: ${(e as Error).message}`);
    }
  }

  /**
   * Takes up a sandbox an earlier process left: reconnects QMP and the agent of a VMM
   * that still runs (checked by its pid and its identity, never the pid alone), or takes a
   * sandbox suspended to disk as it is, to be resumed later.
   */
  async attachExisting(): Promise<void> {
    const rec = readRecord(this.paths.record);
    if (rec instanceof Error) throw new SandboxError('SANDBOX_GONE', `sandbox ${this.id} has no record in ${this.paths.runDir}: ${rec.message}`);
    this.spec = rec.spec;
    this.res.adopt(rec);
    this.snapshot.pausedWhenSaved = rec.wasPausedWhenSuspended;
    this.jailId = rec.jail ?? null;
    if (this.jailId && this.opts.jail) holdUid(this.opts.jail, this.jailId.uid, this.paths.runDir);
    this.cgroup = this.opts.cgroups?.open(cgroupName(this.id)) ?? null;
    const agent = this.agent = this.newAgent();
    const { proc } = this.opts.host;
    let pid = rec.pid;
    if (rec.state === 'suspended' || pid === null) {
      // A VMM of this sandbox beside a suspended record is a restore its owner did not see
      // through: one that runs the guest is the sandbox now; one still loading is ended
      // (the saved state is whole on disk, and the restore is done again).
      const restoring = findSandboxVmm(proc, this.id, this.paths.qmpSocket);
      if (restoring !== null && await this.guestRuns()) {
        pid = restoring;
        this.log(`attached: a restore its owner did not finish runs the guest (pid ${pid}): taken up, the saved state dropped`);
      } else {
        if (restoring !== null) await killVmm(proc, restoring, this.id, this.paths.qmpSocket);
        if (!this.snapshot.exists) throw new SandboxError('SANDBOX_GONE', `sandbox ${this.id} was suspended but its saved state is gone`);
        this.to('suspended');
        this.log(`attached: suspended to disk${restoring !== null ? ` (a restore left unfinished, pid ${restoring}, ended)` : ''}`);
        return;
      }
    } else if (!isSandboxVmm(proc, pid, this.id, this.paths.qmpSocket)) {
      // Its owner died after the save was whole and the VMM had ended, before the record said so.
      if (this.snapshot.exists) {
        this.to('suspended');
        this.log('attached: suspended to disk (its owner died before recording it)');
        return;
      }
      throw new SandboxError('SANDBOX_GONE', `the VMM of sandbox ${this.id} (pid ${pid}) is not running any more`);
    }
    this.to('starting');
    const vmm: VmmProcess = VmmProcess.watch(this.identity(), pid, (e) => this.onVmmExit(vmm, e));
    this.vmm = vmm;
    try {
      const qmp = this.connectQmp();
      await this.raceExit(qmp.connect(10_000));
      const status = (await qmp.queryStatus()).status;
      // A suspend its owner did not see through: the migration done (the VM stopped after
      // it) or under way. The sandbox runs on; what was saved is not needed.
      if (status === 'postmigrate' || status === 'finish-migrate') {
        await qmp.migrateCancel().catch(() => {});
        await qmp.cont();
        this.log(`attached: a suspend its owner did not finish (${status}): the guest runs on`);
      }
      await this.snapshot.drop();
      const paused = status === 'paused';
      await this.raceExit(agent.connect(10_000));
      // A paused guest cannot answer: let it run for the handshake, then pause it again.
      if (paused) await qmp.cont();
      await this.raceExit(agent.waitReady(30_000));
      const actual = await this.res.reread(qmp, agent);
      if (paused) await qmp.stop();
      this.res.vcpus = actual.vcpus;
      this.res.memoryMiB = actual.memoryMiB;
      this.to(paused ? 'paused' : 'running');
      this.log(`attached to running VMM (pid ${pid}, ${this.phase}, ${this.res.vcpus} vCPUs, ${this.res.memoryMiB} MiB)`);
    } catch (e) {
      if (this.phase === 'starting') this.to('failed');
      this.qmp?.close();
      agent.close();
      throw new SandboxError(e instanceof SandboxError && e.code === 'SANDBOX_VMM_EXITED' ? 'SANDBOX_GONE' : 'SANDBOX_AGENT_ERROR',
        `sandbox ${this.id}: attaching to pid ${pid} failed: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Whether the VMM on this sandbox's QMP socket runs its guest (a restore that got as far as `cont`). */
  private async guestRuns(): Promise<boolean> {
    const qmp = (this.opts.qmp ?? realQmp)(this.paths.qmpSocket);
    try {
      await qmp.connect(5_000);
      return (await qmp.queryStatus()).status === 'running';
    } catch {
      return false;
    } finally {
      qmp.close();
    }
  }

  /**
   * Lets go of the sandbox without stopping it, as a daemon that dies does: its sockets
   * close and the VMM runs on for another process (or runtime) to attach() to.
   */
  release(): void {
    this.to('released');
    this.vmm?.release();
    this.agent?.detach();
    this.qmp?.close();
  }

  async resumeExec(execId: number, offsets: [number, number]): Promise<ExecHandle> {
    if (this.exitInfo) throw new VmmExitedError(this.id, this.exitInfo.code, this.exitInfo.signal, 'cannot resume an exec');
    if (!this.agent) throw new SandboxError('SANDBOX_BAD_STATE', `cannot resume an exec: sandbox ${this.id} is ${this.phase}`);
    // A suspended sandbox replays once resume() has reconnected the agent.
    return this.agent.resumeExec(execId, offsets);
  }

  private async raceExit<T>(p: Promise<T>): Promise<T> {
    const died = this.exited.then(() => { throw this.exitError(); });
    died.catch(() => {});
    return Promise.race([p, died]);
  }

  /** The connections of a sandbox whose guest is up (running or paused). */
  private live(what: string): { qmp: QmpConnection; agent: AgentConnection } {
    if (this.exitInfo) throw new VmmExitedError(this.id, this.exitInfo.code, this.exitInfo.signal, `cannot ${what}`);
    if ((this.phase !== 'running' && this.phase !== 'paused') || !this.qmp || !this.agent) {
      throw new SandboxError('SANDBOX_BAD_STATE', `cannot ${what}: sandbox ${this.id} is ${this.phase}`);
    }
    return { qmp: this.qmp, agent: this.agent };
  }

  async exec(req: ExecRequest): Promise<ExecHandle> {
    const { agent } = this.live('exec');
    if (this.phase === 'paused') throw new SandboxError('SANDBOX_BAD_STATE', `cannot exec: sandbox ${this.id} is paused`);
    if (!req.argv.length) throw new SandboxError('SANDBOX_BAD_SPEC', 'exec needs a command');
    this.output.commandStarted();
    return agent.exec({ argv: req.argv, env: req.env ?? {}, cwd: req.cwd ?? '/', chroot: hasRootfs(this.spec), ...(req.user ? { user: req.user } : {}) });
  }

  update(req: ResourceUpdate): Promise<UpdateReport> {
    return this.res.update({
      live: () => this.live('update'),
      status: () => this.status(),
      cgroup: () => this.cgroup,
      setOutputDir: (outputDir) => { this.spec = { ...this.spec, outputDir }; },
      record: () => this.writeRecord(),
      diedWithin: async (ms) => ((await within(this.exited, ms)) ? this.exitError() : null),
    }, req);
  }

  async pause(): Promise<void> {
    const { qmp } = this.live('pause');
    if (this.phase !== 'paused') await qmp.stop().then(() => this.to('paused'));
  }

  async resume(): Promise<void> {
    if (this.phase === 'suspended') return this.restore();
    const { qmp } = this.live('resume');
    if (this.phase !== 'paused') return;
    await qmp.cont();
    this.to('running');
  }

  suspend(): Promise<SuspendReport> {
    return this.snapshot.suspend(this.suspendHost());
  }

  private restore(): Promise<void> {
    return this.snapshot.restore(this.suspendHost());
  }

  private suspendHost(): SuspendHost {
    return {
      id: this.id,
      log: (m) => this.log(m),
      live: () => this.live('suspend'),
      phase: () => this.phase,
      to: (p) => this.to(p),
      vmm: () => this.vmm,
      spawnVmm: (extra) => this.spawnVmm(extra, true),
      checkJail: () => this.checkJail(),
      connectQmp: () => this.connectQmp(),
      agent: () => this.agent!,
      raceExit: (p) => this.raceExit(p),
      ended: () => this.exitInfo !== null,
    };
  }

  async collectOutput(): Promise<string[]> {
    if (!this.spec.outputDir) return [];
    const agent = !this.exitInfo && this.phase === 'running' ? this.agent : null;
    return this.output.collect(this.spec.outputDir, agent ? () => agent.sync() : null);
  }

  stop(opts: { graceMs?: number } = {}): Promise<void> {
    if (this.phase === 'released') return Promise.resolve(); // another owner has it now
    if (this.phase === 'created') {
      this.to('stopped');
      return Promise.resolve();
    }
    // A start() that failed has already killed and cleaned up.
    if (this.cleaned && this.exitInfo) return Promise.resolve();
    // A second caller waits for the stop under way.
    this.stopped ??= this.doStop(opts.graceMs ?? 3000);
    return this.stopped;
  }

  private async doStop(grace: number): Promise<void> {
    if (this.phase === 'suspended') {
      // No VMM runs; the saved state is dropped and the (synced) output disk collected.
      this.to('stopping');
      this.exitInfo = { code: 0, signal: null, expected: true };
      this.resolveExit(this.exitInfo);
      this.agent?.fail(new SandboxError('SANDBOX_BAD_STATE', `sandbox ${this.id} was stopped while suspended`));
      await this.snapshot.drop();
    }
    const vmm = this.vmm;
    if (!this.exitInfo && vmm?.pid) {
      const wasPaused = this.phase === 'paused';
      if (this.phase !== 'failed') this.to('stopping');
      vmm.expect('stop');
      // Ask the guest to power off (it syncs /output first); then QMP quit; then SIGKILL.
      // A paused guest cannot power itself off: go straight to quit.
      const asked = !!this.agent && !wasPaused && grace > 0;
      if (asked) await this.agent!.shutdown().catch(() => {});
      if (!(await within(this.exited, asked ? grace : 0))) {
        await this.qmp?.quit(1000).catch(() => {});
        if (!(await within(this.exited, 1000))) await this.kill();
      }
    }
    await this.exited;
    if (this.spec.outputDir && !this.output.collected) {
      await this.collectOutput().catch((e: unknown) => this.log(`output not collected: ${(e as Error).message}`));
    }
    await this.cleanup();
    if (this.phase === 'stopping') this.to('stopped');
  }

  /** SIGKILL, only of a VMM still ours (a pid that has exited may belong to another process). */
  private async kill(): Promise<void> {
    const vmm = this.vmm;
    if (!vmm || this.exitInfo || !vmm.alive()) return;
    vmm.expect('stop');
    vmm.kill();
    await this.exited;
  }

  private async releaseCgroup(): Promise<void> {
    const cg = this.cgroup;
    if (!cg) return;
    this.cgroup = null;
    await cg.destroy().catch((e: unknown) => this.log(`cgroup not removed: ${(e as Error).message}`));
  }

  private cleanup(): Promise<void> {
    this.cleaned ??= (async () => {
      this.agent?.close();
      this.qmp?.close();
      await this.releaseCgroup();
      if (!process.env.LODGER_KEEP_RUN_DIR) await rm(this.paths.runDir, { recursive: true, force: true });
      // After the run directory: a kept one (its files the uid's) keeps the lease.
      if (this.jailId && this.opts.jail) releaseUid(this.opts.jail, this.jailId.uid, this.paths.runDir);
    })();
    return this.cleaned;
  }

  wait(): Promise<VmmExit> { return this.exited; }

  status(): SandboxStatus {
    const { res, spec } = this;
    return {
      id: this.id, backend: 'qemu', state: publicState(this.phase), accel: this.accel, pid: this.pid, vcpus: res.vcpus, memoryMiB: res.memoryMiB,
      maxVcpus: res.limits.maxVcpus, maxMemoryMiB: res.limits.maxMemoryMiB,
      booted: { memoryMiB: spec.memoryMiB, maxVcpus: spec.maxVcpus, maxMemoryMiB: spec.maxMemoryMiB, outputDisk: !!(spec.outputDisk || spec.outputDir) },
      guest: this.agent?.stats ?? null, bootMs: this.bootMs, error: this.error,
    };
  }

  /** The latest guest report, asked for now. */
  async guestStats(): Promise<GuestStats> {
    return this.live('read guest stats').agent.requestStats();
  }

  async vmmMemory(): Promise<VmmMemory | null> {
    const pid = this.pid;
    return pid ? vmmMemory(this.opts.host.proc, pid, [this.spec.memoryMiB, this.spec.maxMemoryMiB - this.spec.memoryMiB]) : null;
  }

  async metrics(): Promise<SandboxMetrics> {
    const usage = (await this.cgroup?.usage()) ?? { cpuUsageUsec: 0, memoryBytes: 0 };
    const mem = await this.vmmMemory();
    return { cpuUsageUsec: usage.cpuUsageUsec, memoryBytes: usage.memoryBytes, vmmRssBytes: mem?.rssBytes ?? 0, guest: this.agent?.stats ?? null };
  }
}
