// A gVisor sandbox: one runsc container over an OCI bundle Lodger writes, inside its own
// cgroup (runsc and everything it forks are born there; runsc itself touches no
// cgroup). Resizing is the host's: vCPUs are CPU bandwidth (cpu.max = n CPUs), memory is
// memory.max/high; the controller's knobs are the same cgroup files as for QEMU.
import { copyFile, cp, lstat, mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Cgroup, CgroupKnobs } from '../cgroup/index.ts';
import {
  validateUpdate, type ExecHandle, type Sandbox, type ExecRequest, type ResourceUpdate, type SandboxLimits, type SandboxMetrics, type SandboxSpec,
  type SandboxState, type SandboxStatus, type SuspendReport, type UpdateReport, type UpdateStep, type VmmExit,
} from '../contract.ts';
import { ResizeError, SandboxError, VmmExitedError } from '../errors.ts';
import { commandScript, gvisorPaths, ociConfig, SIZE_ACK_FILE, SIZE_FILE, spoolerScript, SPOOLER_FILE, type GvisorPaths } from './bundle.ts';
import { FileExec, readFrom, readPid } from './exec.ts';
import { isSandboxProcess, parsePidFile, parseState, rssBytes, runsc, type Runsc } from './runsc.ts';
import type { GvisorRuntimeOptions } from './runtime.ts';
import { writeRecordFile } from '../record.ts';
import { gvisorCgroupName, readGvisorRecord, recordedGvisorUids, sizeKnobs, type GvisorRecord } from './record.ts';
import { allocateUid, holdUid, readJailStatus, releaseUid, type JailIdentity } from '../jail.ts';
import { gvisorJailViolation, prepareGvisorJail, releaseGvisorJail } from './jail.ts';


/** How long a resize waits for the sandbox to show it (the spooler naps 50 ms between looks). */
const SIZE_VIEW_WAIT_MS = 1000;
/** The spooler's "read cmd/size now" (x86-64 and arm64 number it 10). */
const SIGUSR1 = 10;

export class GvisorSandbox implements Sandbox {
  readonly id: string;
  readonly paths: GvisorPaths;
  private state: SandboxState = 'created';
  private pidValue: number | null = null;
  private cgroup: Cgroup | null = null;
  private vcpus: number;
  private memoryMiB: number;
  private limits: SandboxLimits;
  private nextExec = 1;
  private bootMs: number | null = null;
  private error: string | null = null;
  private exitInfo: VmmExit | null = null;
  private readonly exited: Promise<VmmExit>;
  private resolveExit!: (e: VmmExit) => void;
  /** Why the sandbox process may exit now: a stop, a checkpoint (not the sandbox's end), a release. */
  private intent: 'run' | 'stop' | 'retire' | 'release' = 'run';
  private watcher: NodeJS.Timeout | null = null;
  private readonly execs = new Set<FileExec>();
  private pausedWhenSuspended = false;
  private stopping: Promise<void> | null = null;
  /** Command scripts are written one at a time, so the spooler (which takes 1, 2, 3... in order) never waits on a number skipped. */
  private spooling: Promise<unknown> = Promise.resolve();
  /** Signals on their way (`runsc kill`): a checkpoint waits for them, and none starts during one. */
  private readonly signalling = new Set<Promise<void>>();
  /** The last size told to the sandbox (cmd/size): a token the spooler echoes once it shows it. */
  private sizeSeq = 0;
  /** The spooler has answered a size once, so its USR1 trap is set. */
  private spoolerUp = false;
  /** The uid/gid runsc's sandbox and gofer run as (jail.ts); null: not jailed. */
  private jailId: JailIdentity | null = null;

  constructor(private spec: SandboxSpec, private readonly opts: GvisorRuntimeOptions) {
    this.id = spec.id;
    this.paths = gvisorPaths(opts.host.runDir, spec.id);
    this.vcpus = spec.vcpus;
    this.memoryMiB = spec.memoryMiB;
    this.limits = { maxVcpus: spec.maxVcpus, maxMemoryMiB: spec.maxMemoryMiB };
    this.exited = new Promise((r) => { this.resolveExit = r; });
  }

  get accel(): 'systrap' | 'ptrace' {
    return this.opts.platform;
  }

  get pid(): number | null {
    return this.pidValue;
  }

  get cgroupDirs(): ReadonlyMap<string, string> | null {
    return this.cgroup?.dirs ?? null;
  }

  private get rs(): Runsc {
    return { binary: this.opts.runscBinary, platform: this.opts.platform, root: this.paths.runscRoot };
  }

  private log(msg: string): void {
    this.opts.log?.(`[sandbox ${this.id} gvisor] ${msg}`);
  }

  private record(): void {
    const s = this.state;
    if (s !== 'running' && s !== 'paused' && s !== 'suspended') return;
    const rec: GvisorRecord = {
      spec: this.spec, limits: this.limits, pid: s === 'suspended' ? null : this.pidValue, state: s, vcpus: this.vcpus,
      memoryMiB: this.memoryMiB, nextExec: this.nextExec, pausedWhenSuspended: this.pausedWhenSuspended, jail: this.jailId,
    };
    try {
      writeRecordFile(this.paths.record, rec);
    } catch (e) {
      this.log(`record not written: ${(e as Error).message}`);
    }
  }

  private to(s: SandboxState): void {
    this.state = s;
    this.record();
  }

  async start(): Promise<void> {
    if (this.state !== 'created') throw new SandboxError('SANDBOX_BAD_STATE', `cannot start: sandbox ${this.id} is ${this.state}`);
    this.to('starting');
    const t0 = performance.now();
    const p = this.paths;
    try {
      await rm(p.dir, { recursive: true, force: true });
      for (const d of [p.bundle, p.runscRoot, p.cmd, p.io, p.output]) await mkdir(d, { recursive: true });
      if (this.opts.cgroups) {
        this.cgroup = await this.opts.cgroups.create(gvisorCgroupName(this.id));
        await this.cgroup.apply({ ...sizeKnobs(this.vcpus, this.memoryMiB), ...this.spec.cgroup });
      }
      // busybox is the spooler's shell whatever the job's root holds.
      await copyFile(this.opts.busybox, `${p.cmd}/busybox`);
      await writeFile(join(p.cmd, SPOOLER_FILE), spoolerScript());
      await this.tellSize();
      let rootfs = this.spec.rootfsDir ?? this.opts.defaultRoot;
      if (this.opts.jail) {
        this.jailId = allocateUid(this.opts.jail, this.opts.host.proc, recordedGvisorUids(this.opts.host.runDir), this.paths.dir);
        rootfs = await prepareGvisorJail(p, rootfs, this.jailId, this.opts.host.proc);
      }
      await writeFile(`${p.bundle}/config.json`, JSON.stringify(ociConfig({ rootfs, paths: p, hostname: this.id, jail: this.jailId })));
      // create and start in one runsc call (one Go binary's start-up less than two).
      await this.boot(['run', '--detach', `--bundle=${p.bundle}`, this.id]);
      await this.checkJail();
      this.bootMs = performance.now() - t0;
      this.to('running');
      this.log(`ready in ${this.bootMs.toFixed(0)} ms (pid ${this.pidValue})`);
    } catch (e) {
      this.error = (e as Error).message;
      this.state = 'failed';
      await this.killSandbox();
      this.finish({ code: null, signal: null, expected: false });
      await this.cleanup();
      throw new SandboxError(e instanceof SandboxError && e.code === 'SANDBOX_BOOT_TIMEOUT' ? e.code : 'SANDBOX_BOOT_FAILED',
        `sandbox ${this.id} failed to boot: ${this.error}`, { cause: e });
    }
  }

  /** `runsc run` or `create` inside the cgroup, then the sandbox process's pid (runsc's --pid-file) and a watch on it. */
  private async boot([cmd, ...args]: string[]): Promise<void> {
    const pidFile = join(this.paths.dir, 'runsc.pid');
    await rm(pidFile, { force: true });
    await runsc(this.rs, [cmd!, `--pid-file=${pidFile}`, ...args], { timeoutMs: 30_000, code: 'SANDBOX_BOOT_FAILED', cgroupProcs: this.cgroup?.procsFiles ?? [], sys: this.opts.host.sys, log: this.paths.log, rlimits: true });
    const pid = parsePidFile(readFileSync(pidFile, 'latin1'));
    this.pidValue = pid;
    this.intent = 'run';
    this.watch(pid);
  }

  /**
   * Every process of the sandbox (runsc's sandbox, gofer and stubs: all its cgroup holds)
   * shows the jail before the job's first command is written; else the start fails.
   */
  private async checkJail(): Promise<void> {
    const want = this.jailId;
    if (!want) return;
    const pids = this.cgroup ? await this.cgroup.pids() : [this.pidValue!];
    for (const pid of pids) {
      let bad: string | null;
      try { bad = gvisorJailViolation(readJailStatus(this.opts.host.proc, pid), want); } catch { continue; /* exited */ }
      if (bad) throw new SandboxError('SANDBOX_JAIL_FAILED', `sandbox ${this.id}: runsc process ${pid} is not jailed: ${bad}`);
    }
  }

  /** The sandbox process is not our child (runsc forks it): its end is seen by polling /proc. */
  private watch(pid: number): void {
    if (this.watcher) clearInterval(this.watcher);
    this.watcher = setInterval(() => {
      if (isSandboxProcess(this.opts.host.proc, pid, this.paths.runscRoot)) return;
      clearInterval(this.watcher!);
      this.watcher = null;
      this.onGone();
    }, 50);
    this.watcher.unref();
  }

  private onGone(): void {
    if (this.intent === 'retire' || this.intent === 'release') return;
    const expected = this.intent === 'stop';
    if (!expected) {
      this.error = this.exitError().message;
      this.log(this.error);
      if (this.state !== 'starting') this.state = 'failed';
      void this.releaseCgroup();
    }
    this.finish({ code: null, signal: expected ? null : 'SIGKILL', expected });
  }

  private finish(x: VmmExit): void {
    if (this.exitInfo) return;
    this.exitInfo = x;
    for (const e of this.execs) e.close();
    this.resolveExit(x);
  }

  private exitError(): VmmExitedError {
    let log = '';
    try { log = readFileSync(this.paths.log, 'utf8').slice(-2048).trim().split('\n').slice(-3).join(' | '); } catch { /* gone */ }
    const x = this.exitInfo;
    return new VmmExitedError(this.id, x?.code ?? null, x?.signal ?? 'SIGKILL', log, 'runsc sandbox');
  }

  /** Rejects once the sandbox has ended. */
  private get died(): Promise<never> {
    const p = this.exited.then(() => { throw this.exitError(); });
    p.catch(() => {});
    return p;
  }

  async attachExisting(): Promise<void> {
    const rec = readGvisorRecord(this.paths.record);
    if (rec instanceof Error) throw new SandboxError('SANDBOX_GONE', `sandbox ${this.id} has no record in ${this.paths.dir}: ${rec.message}`);
    this.spec = rec.spec;
    this.limits = rec.limits;
    this.vcpus = rec.vcpus;
    this.memoryMiB = rec.memoryMiB;
    this.nextExec = rec.nextExec;
    this.pausedWhenSuspended = rec.pausedWhenSuspended;
    this.jailId = rec.jail ?? null;
    if (this.jailId && this.opts.jail) holdUid(this.opts.jail, this.jailId.uid, this.paths.dir);
    this.cgroup = this.opts.cgroups?.open(gvisorCgroupName(this.id)) ?? null;
    if (rec.state === 'suspended') {
      if (!existsSync(this.paths.checkpoint)) throw new SandboxError('SANDBOX_GONE', `sandbox ${this.id} was suspended but its checkpoint is gone`);
      this.to('suspended');
      return;
    }
    if (rec.pid === null || !isSandboxProcess(this.opts.host.proc, rec.pid, this.paths.runscRoot)) {
      throw new SandboxError('SANDBOX_GONE', `the runsc sandbox of ${this.id} (pid ${rec.pid}) is not running any more`);
    }
    this.pidValue = rec.pid;
    this.watch(rec.pid);
    const { status } = parseState(await runsc(this.rs, ['state', this.id], { timeoutMs: 10_000 }));
    this.to(status === 'paused' ? 'paused' : 'running');
    this.log(`attached (pid ${rec.pid}, ${this.state})`);
  }

  release(): void {
    this.intent = 'release';
    if (this.watcher) clearInterval(this.watcher);
    for (const e of this.execs) e.close();
    this.state = 'stopped';
  }

  private live(what: string): void {
    if (this.exitInfo) throw new VmmExitedError(this.id, this.exitInfo.code, this.exitInfo.signal, `cannot ${what}`, 'runsc sandbox');
    if (this.state !== 'running' && this.state !== 'paused') throw new SandboxError('SANDBOX_BAD_STATE', `cannot ${what}: sandbox ${this.id} is ${this.state}`);
  }

  private handle(n: number, offsets?: [number, number]): FileExec {
    const h = new FileExec(n, {
      io: this.paths.io, died: this.died,
      signal: (pid, signo) => this.signalPid(pid, signo),
    }, offsets);
    this.execs.add(h);
    void h.wait().catch(() => {}).finally(() => this.execs.delete(h));
    return h;
  }

  async exec(req: ExecRequest): Promise<ExecHandle> {
    this.live('exec');
    if (this.state === 'paused') throw new SandboxError('SANDBOX_BAD_STATE', `cannot exec: sandbox ${this.id} is paused`);
    if (!req.argv.length) throw new SandboxError('SANDBOX_BAD_SPEC', 'exec needs a command');
    // The spooler writes each command's pid and status as root into /.lodger/io.
    if (req.user && (req.user.uid !== 0 || req.user.gid !== 0)) {
      throw new SandboxError('SANDBOX_BAD_SPEC', `sandbox ${this.id}: the gVisor backend runs commands as root only (asked for ${req.user.uid}:${req.user.gid})`);
    }
    let script: string;
    try { script = commandScript(req); } catch (e) { throw new SandboxError('SANDBOX_BAD_SPEC', (e as Error).message); }
    if (!existsSync(join(this.paths.cmd, SPOOLER_FILE))) {
      throw new SandboxError('SANDBOX_BAD_STATE', `sandbox ${this.id} was started by a Lodger without the spooler: it takes no new command (its running ones are still followed)`);
    }
    const n = await this.spool(script);
    await this.started(n);
    return this.handle(n);
  }

  /**
   * Puts the next command's script where the spooler looks (cmd/N.sh): written under a
   * name it ignores, then renamed, so it never reads half a script; numbered on from the
   * record, past any N.sh already there (a record written before a crash may lag), so
   * no number is skipped or used twice. The record follows, before exec() returns.
   */
  private spool(script: string): Promise<number> {
    const next = this.spooling.then(async () => {
      let n = this.nextExec;
      while (existsSync(join(this.paths.cmd, `${n}.sh`))) n++;
      const tmp = join(this.paths.cmd, `.${n}.sh.tmp`);
      await writeFile(tmp, script, { mode: 0o644 });
      await rename(tmp, join(this.paths.cmd, `${n}.sh`));
      this.nextExec = n + 1;
      this.record();
      return n;
    });
    this.spooling = next.catch(() => {});
    return next;
  }

  /** Waits for the spooler to report command n's pid: 20 s of the sandbox running (a pause or suspend stops the clock). */
  private async started(n: number): Promise<void> {
    for (let ranMs = 0; ;) {
      if (this.exitInfo) throw this.exitError();
      if (this.intent === 'release') throw new SandboxError('SANDBOX_BAD_STATE', `sandbox ${this.id} was let go of before command ${n} started`);
      if (await readPid(this.paths.io, n) !== null) return;
      if (ranMs > 20_000) throw new SandboxError('SANDBOX_AGENT_ERROR', `sandbox ${this.id}: its spooler did not start command ${n} in 20 s`);
      await new Promise((r) => setTimeout(r, 10));
      if (this.state === 'running') ranMs += 10;
    }
  }

  /**
   * `runsc kill --pid`: a call to the sandbox's controller that leaves nothing inside
   * (unlike `runsc exec`), refused while a checkpoint is taken or restored, and waited
   * for by one. The pid is the sandbox's word, validated by readPid: at worst it names
   * another process of the same sandbox.
   */
  private async signalPid(pid: number, signo: number): Promise<void> {
    this.live('signal a command');
    const p = runsc(this.rs, ['kill', `--pid=${pid}`, this.id, String(signo)], { timeoutMs: 10_000 }).then(() => {});
    this.signalling.add(p);
    try { await p; } finally { this.signalling.delete(p); }
  }

  async resumeExec(execId: number, offsets: [number, number]): Promise<ExecHandle> {
    if (this.exitInfo) throw new VmmExitedError(this.id, this.exitInfo.code, this.exitInfo.signal, 'cannot resume an exec', 'runsc sandbox');
    if (!Number.isInteger(execId) || execId < 1 || execId >= this.nextExec) throw new SandboxError('SANDBOX_BAD_SPEC', `sandbox ${this.id} ran no command ${execId}`);
    return this.handle(execId, offsets);
  }

  async update(req: ResourceUpdate): Promise<UpdateReport> {
    const bad = validateUpdate(this.status(), req);
    if (bad) throw bad;
    const t0 = performance.now();
    const steps: UpdateStep[] = [];
    const vcpus = req.vcpus ?? this.vcpus;
    const memoryMiB = req.memoryMiB ?? this.memoryMiB;
    if (req.limits) this.limits = { ...req.limits };
    if (req.outputDir) this.spec = { ...this.spec, outputDir: req.outputDir };
    const knobs: CgroupKnobs = { ...(vcpus !== this.vcpus || memoryMiB !== this.memoryMiB ? sizeKnobs(vcpus, memoryMiB) : {}), ...req.cgroup };
    if (this.cgroup && Object.keys(knobs).length) {
      const s = performance.now();
      try {
        const writes = await this.cgroup.apply(knobs);
        if (writes.length) steps.push({ kind: 'cgroup', detail: writes.map((w) => `${w.file}=${w.value}`).join(' '), ms: performance.now() - s });
      } catch (e) {
        throw new ResizeError(`sandbox ${this.id}: ${(e as Error).message}`, { vcpus: this.vcpus, memoryMiB: this.memoryMiB }, { cause: e });
      }
    }
    const resized = vcpus !== this.vcpus || memoryMiB !== this.memoryMiB;
    if (vcpus !== this.vcpus) steps.push({ kind: vcpus > this.vcpus ? 'vcpu-online' : 'vcpu-offline', detail: `cpu.max ${this.vcpus} -> ${vcpus} CPUs`, ms: 0 });
    if (memoryMiB !== this.memoryMiB) steps.push({ kind: 'memory', detail: `memory.high ${this.memoryMiB} -> ${memoryMiB} MiB`, ms: 0 });
    this.vcpus = vcpus;
    this.memoryMiB = memoryMiB;
    this.record();
    // A sandbox from a Lodger before the size file (none at boot) has a spooler that knows no SIGUSR1.
    if (resized && existsSync(join(this.paths.cmd, SIZE_FILE))) {
      // Enforced by now (the host's cgroup); the job's view follows when the spooler next
      // looks (after the resume or the restore if the sandbox is paused or suspended).
      const s = performance.now();
      const token = await this.tellSize();
      if (this.state === 'running') {
        // Until the spooler has answered once, its USR1 trap may not be set, and the signal would end it
        // (a spooler not yet up reads the size when it comes up).
        if (await this.spoolerAnswered(SIZE_VIEW_WAIT_MS)) {
          await this.signalPid(1, SIGUSR1).catch((e: unknown) => this.log(`the spooler was not told of the new size: ${(e as Error).message}`));
        }
        const seen = await this.sizeSeen(token, SIZE_VIEW_WAIT_MS);
        steps.push({ kind: 'cgroup', detail: seen ? `the sandbox shows ${vcpus} CPUs, ${memoryMiB} MiB` : `the sandbox did not show the new size in ${SIZE_VIEW_WAIT_MS} ms`, ms: performance.now() - s });
      }
    }
    return { steps, totalMs: performance.now() - t0, vcpus, memoryMiB };
  }

  /** Writes cmd/size whole (renamed into place) for the spooler to show; returns its token. */
  private async tellSize(): Promise<string> {
    const token = `${Date.now().toString(36)}.${++this.sizeSeq}`;
    const tmp = join(this.paths.cmd, `.${SIZE_FILE}.tmp`);
    await writeFile(tmp, `${token} ${this.vcpus} ${this.memoryMiB * 1048576}\n`);
    await rename(tmp, join(this.paths.cmd, SIZE_FILE));
    return token;
  }

  /** Whether the spooler has written io/size.ack at all (its trap comes first), waiting up to ms for it. */
  private async spoolerAnswered(ms: number): Promise<boolean> {
    for (const t0 = performance.now(); !this.spoolerUp && this.state === 'running';) {
      this.spoolerUp = existsSync(join(this.paths.io, SIZE_ACK_FILE));
      if (this.spoolerUp || performance.now() - t0 >= ms) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    return this.spoolerUp;
  }

  /** Whether the spooler echoed `token` within ms (io/size.ack is the sandbox's: bounded, compared, nothing more). */
  private async sizeSeen(token: string, ms: number): Promise<boolean> {
    for (const t0 = performance.now(); performance.now() - t0 < ms && this.state === 'running';) {
      const b = await readFrom(join(this.paths.io, SIZE_ACK_FILE), 0, 64).catch(() => null);
      if (b?.toString('latin1') === `${token}\n`) return true;
      await new Promise((r) => setTimeout(r, 5));
    }
    return false;
  }

  async pause(): Promise<void> {
    this.live('pause');
    if (this.state === 'paused') return;
    await runsc(this.rs, ['pause', this.id], { timeoutMs: 10_000 });
    this.to('paused');
  }

  async resume(): Promise<void> {
    if (this.state === 'suspended') return this.restore();
    this.live('resume');
    if (this.state !== 'paused') return;
    await runsc(this.rs, ['resume', this.id], { timeoutMs: 10_000 });
    this.to('running');
  }

  /** runsc checkpoint saves the whole sandbox and ends its process; the cgroup stays for the restore. */
  async suspend(): Promise<SuspendReport> {
    this.live('suspend');
    const t0 = performance.now();
    const was = this.state;
    this.to('suspending');
    try {
      await rm(this.paths.checkpoint, { recursive: true, force: true });
      await mkdir(this.paths.checkpoint, { recursive: true });
      this.intent = 'retire';
      await Promise.allSettled([...this.signalling]);
      if (was === 'paused') await runsc(this.rs, ['resume', this.id], { timeoutMs: 10_000 });
      await runsc(this.rs, ['checkpoint', `--image-path=${this.paths.checkpoint}`, this.id], { timeoutMs: 120_000, code: 'SANDBOX_SUSPEND_FAILED', log: this.paths.log });
      for (let i = 0; i < 200 && this.pidValue !== null && isSandboxProcess(this.opts.host.proc, this.pidValue, this.paths.runscRoot); i++) await new Promise((r) => setTimeout(r, 25));
      await runsc(this.rs, ['delete', '--force', this.id], { timeoutMs: 10_000 }).catch(() => {});
    } catch (e) {
      this.intent = 'run';
      this.state = was;
      throw e instanceof SandboxError ? e : new SandboxError('SANDBOX_SUSPEND_FAILED', `sandbox ${this.id}: ${(e as Error).message}`, { cause: e });
    }
    this.pausedWhenSuspended = was === 'paused';
    this.pidValue = null;
    this.to('suspended');
    let bytes = 0;
    for (const f of await readdir(this.paths.checkpoint)) bytes += statSync(`${this.paths.checkpoint}/${f}`).size;
    return { bytes, ms: performance.now() - t0 };
  }

  private async restore(): Promise<void> {
    this.to('resuming');
    try {
      // The jail's mounts are gone after a reboot; the restored sandbox runs as the uid it had.
      if (this.jailId) await prepareGvisorJail(this.paths, this.spec.rootfsDir ?? this.opts.defaultRoot, this.jailId, this.opts.host.proc);
      // runsc restores into a created container: create, then restore into it.
      await this.boot(['create', `--bundle=${this.paths.bundle}`, this.id]);
      await runsc(this.rs, ['restore', `--bundle=${this.paths.bundle}`, `--image-path=${this.paths.checkpoint}`, '--detach', this.id], { timeoutMs: 60_000, code: 'SANDBOX_RESUME_FAILED', log: this.paths.log });
      if (this.pausedWhenSuspended) await runsc(this.rs, ['pause', this.id], { timeoutMs: 10_000 });
    } catch (e) {
      this.state = 'suspended';
      throw new SandboxError('SANDBOX_RESUME_FAILED', `sandbox ${this.id}: restore failed: ${(e as Error).message}`, { cause: e });
    }
    await rm(this.paths.checkpoint, { recursive: true, force: true });
    this.to(this.pausedWhenSuspended ? 'paused' : 'running');
  }

  /** Copies /output (regular files and directories only: the sandbox made them) to the spec's outputDir. */
  async collectOutput(): Promise<string[]> {
    const dest = this.spec.outputDir;
    if (!dest || !existsSync(this.paths.output)) return [];
    try {
      await mkdir(dest, { recursive: true });
      const names = (await readdir(this.paths.output, { withFileTypes: true })).filter((d) => d.isFile() || d.isDirectory()).map((d) => d.name);
      await cp(this.paths.output, dest, { recursive: true, force: true, filter: async (src) => {
        const st = await lstat(src);
        return st.isFile() || st.isDirectory();
      } });
      return names;
    } catch (e) {
      throw new SandboxError('SANDBOX_OUTPUT_FAILED', `collecting /output of ${this.id}: ${(e as Error).message}`, { cause: e });
    }
  }

  stop(opts: { graceMs?: number } = {}): Promise<void> {
    if (this.intent === 'release') return Promise.resolve();
    if (this.state === 'created') {
      this.state = 'stopped';
      this.finish({ code: 0, signal: null, expected: true });
      return Promise.resolve();
    }
    this.stopping ??= this.doStop(opts.graceMs ?? 3000);
    return this.stopping;
  }

  private async doStop(graceMs: number): Promise<void> {
    if (!this.exitInfo) {
      // A suspended sandbox has no process: its checkpoint goes with the run directory.
      const suspended = this.state === 'suspended';
      if (this.state !== 'failed') this.state = 'stopping';
      this.intent = 'stop';
      if (this.pidValue !== null && !suspended) {
        // Commands still running get SIGTERM and graceMs to end; then the init is killed, which ends the sandbox.
        if (graceMs > 0 && this.execs.size) {
          await runsc(this.rs, ['kill', '--all', this.id, 'TERM'], { timeoutMs: 5000 }).catch(() => {});
          for (let i = 0; i < graceMs / 20 && this.execs.size; i++) await new Promise((r) => setTimeout(r, 20));
        }
        await runsc(this.rs, ['kill', this.id, 'KILL'], { timeoutMs: 5000 }).catch(() => {});
      }
      await this.killSandbox(1000);
      this.finish({ code: 0, signal: null, expected: true });
    }
    await this.exited;
    // The cgroup's end kills what is left of the sandbox (its gofer, its stubs): nothing of the jail's uid lives
    // on while /output, its directory, is copied, so no entry can be swapped for a link between check and copy.
    await this.releaseCgroup();
    if (this.spec.outputDir) await this.collectOutput().catch((e: unknown) => this.log(`output not collected: ${(e as Error).message}`));
    await this.cleanup();
    if (this.state !== 'failed') this.state = 'stopped';
  }

  /** Ends the sandbox process (identity checked); without a cgroup of ours, runsc delete ends the rest. */
  private async killSandbox(graceMs = 0): Promise<void> {
    const pid = this.pidValue;
    const alive = (): boolean => pid !== null && isSandboxProcess(this.opts.host.proc, pid, this.paths.runscRoot);
    for (let i = 0; i < graceMs / 20 && alive(); i++) await new Promise((r) => setTimeout(r, 20));
    if (alive()) { try { process.kill(pid!, 'SIGKILL'); } catch { /* gone */ } }
    for (let i = 0; i < 250 && alive(); i++) await new Promise((r) => setTimeout(r, 20));
    // Both callers clean up next: the cgroup's destroy kills what is left (the gofer), and removing the run
    // directory forgets the container. runsc delete would wait ~0.8 s for the dead sandbox (measured: 1.7 of a
    // job's 1.8 s stop), so it is needed only where no cgroup of ours holds the rest.
    if (!this.cgroup) await runsc(this.rs, ['delete', '--force', this.id], { timeoutMs: 10_000 }).catch(() => {});
  }

  private async releaseCgroup(): Promise<void> {
    const cg = this.cgroup;
    if (!cg) return;
    this.cgroup = null;
    await cg.destroy().catch((e: unknown) => this.log(`cgroup not removed: ${(e as Error).message}`));
  }

  private async cleanup(): Promise<void> {
    if (this.watcher) clearInterval(this.watcher);
    await this.releaseCgroup();
    // Never remove through a mount: the job's root is behind it.
    const unmounted = await releaseGvisorJail(this.paths, this.opts.host.proc);
    if (!unmounted) this.log(`run directory kept: ${this.paths.rootfs} is still mounted`);
    else if (!process.env.LODGER_KEEP_RUN_DIR) await rm(this.paths.dir, { recursive: true, force: true });
    // After the run directory: a kept one (its files the uid's) keeps the lease.
    if (this.jailId && this.opts.jail) releaseUid(this.opts.jail, this.jailId.uid, this.paths.dir);
  }

  wait(): Promise<VmmExit> {
    return this.exited;
  }

  status(): SandboxStatus {
    return {
      id: this.id, backend: 'gvisor', state: this.state, accel: this.accel, pid: this.state === 'suspended' ? null : this.pidValue,
      vcpus: this.vcpus, memoryMiB: this.memoryMiB, maxVcpus: this.limits.maxVcpus, maxMemoryMiB: this.limits.maxMemoryMiB,
      booted: { memoryMiB: this.spec.memoryMiB, maxVcpus: this.spec.maxVcpus, maxMemoryMiB: this.spec.maxMemoryMiB, outputDisk: true },
      guest: null, bootMs: this.bootMs, error: this.error,
    };
  }

  /** Host memory of the sandbox beyond the job's: the sentry's and gofer's resident sets. */
  async metrics(): Promise<SandboxMetrics> {
    const usage = (await this.cgroup?.usage()) ?? { cpuUsageUsec: 0, memoryBytes: 0 };
    return { cpuUsageUsec: usage.cpuUsageUsec, memoryBytes: usage.memoryBytes, vmmRssBytes: this.pidValue ? rssBytes(this.opts.host.proc, this.pidValue) : 0, guest: null };
  }
}
