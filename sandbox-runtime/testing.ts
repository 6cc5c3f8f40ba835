// Fakes for tests: an in-memory sandbox runtime with the same contract as the QEMU one,
// for daemon and controller tests that need many sandboxes and exact control over time
// and failures. Commands are answered by a handler the test supplies; resizes succeed
// instantly (within the bounds validateUpdate() enforces for every backend) unless told to fail.
import type { ExitStatus, GuestStats } from './agent/index.ts';
import type { CgroupKnobs } from './cgroup/index.ts';
import {
  validateSpec, validateUpdate, type Backend, type ExecHandle, type ExecRequest, type ResourceUpdate, type Sandbox, type SandboxInfo, type SandboxLimits,
  type SandboxMetrics, type SandboxRuntime, type SandboxSpec, type SandboxState, type SandboxStatus, type SuspendReport, type UpdateReport, type VmmExit,
} from './contract.ts';
import { ResizeError, SandboxError, VmmExitedError } from './errors.ts';

export type FakeCommand = (req: ExecRequest, io: { stdout(s: string): void; stderr(s: string): void }) => Promise<number> | number;

export interface FakeOptions {
  /** Runs a command; default: echo argv to stdout and exit 0. */
  command?: FakeCommand;
  /** Make update() fail on the n-th call (1-based), leaving the previous size. */
  failUpdateAt?: number;
  /** The backend the fake stands in for; default qemu. */
  backend?: Backend;
}

let nextExecId = 1;

export class FakeSandbox implements Sandbox {
  readonly id: string;
  state: SandboxState = 'created';
  vcpus: number;
  memoryMiB: number;
  knobs: CgroupKnobs = {};
  readonly updates: ResourceUpdate[] = [];
  private exitInfo: VmmExit | null = null;
  private resolveExit!: (e: VmmExit) => void;
  private readonly exited = new Promise<VmmExit>((r) => { this.resolveExit = r; });
  private readonly running = new Set<{ reject: (e: Error) => void }>();
  cpuUsageUsec = 0;

  constructor(readonly spec: SandboxSpec, private readonly opts: FakeOptions = {}) {
    this.id = spec.id;
    this.vcpus = spec.vcpus;
    this.memoryMiB = spec.memoryMiB;
    this.knobs = { ...spec.cgroup };
    this.limits = { maxVcpus: spec.maxVcpus, maxMemoryMiB: spec.maxMemoryMiB };
    this.outputDir = spec.outputDir;
  }

  private guest(): GuestStats {
    return {
      cpusOnline: this.vcpus, cpusPresent: this.vcpus, memTotalKiB: this.memoryMiB * 1024,
      memAvailableKiB: this.memoryMiB * 900, load1: 0, load5: 0, load15: 0, uptimeMs: 0,
    };
  }

  private live(what: string): void {
    if (this.exitInfo) throw new VmmExitedError(this.id, this.exitInfo.code, this.exitInfo.signal, `cannot ${what}`);
    if (this.state !== 'running' && this.state !== 'paused') throw new SandboxError('SANDBOX_BAD_STATE', `cannot ${what}: sandbox ${this.id} is ${this.state}`);
  }

  async start(): Promise<void> {
    if (this.state !== 'created') throw new SandboxError('SANDBOX_BAD_STATE', `sandbox ${this.id} is ${this.state}, not created`);
    this.state = 'running';
  }

  /** Every exec's output so far, so that resumeExec() can hand on what follows an offset. */
  private readonly execs = new Map<number, { out: Buffer[]; err: Buffer[]; outCbs: ((b: Buffer) => void)[]; errCbs: ((b: Buffer) => void)[]; done: Promise<ExitStatus> }>();

  async exec(req: ExecRequest): Promise<ExecHandle> {
    this.live('exec');
    const id = nextExecId++;
    const x = { out: [] as Buffer[], err: [] as Buffer[], outCbs: [] as ((b: Buffer) => void)[], errCbs: [] as ((b: Buffer) => void)[], done: null as unknown as Promise<ExitStatus> };
    const emit = (all: Buffer[], cbs: ((b: Buffer) => void)[], s: string): void => {
      const b = Buffer.from(s);
      all.push(b);
      cbs.forEach((cb) => cb(b));
    };
    let entry!: { reject: (e: Error) => void };
    x.done = new Promise<ExitStatus>((resolve, reject) => {
      entry = { reject };
      this.running.add(entry);
      const cmd = this.opts.command ?? ((r, io) => { io.stdout(`${r.argv.join(' ')}\n`); return 0; });
      // Run on a later tick so callers can attach listeners first, as with a real guest.
      setImmediate(() => {
        Promise.resolve(cmd(req, { stdout: (s) => emit(x.out, x.outCbs, s), stderr: (s) => emit(x.err, x.errCbs, s) }))
          .then((code) => resolve({ code, signal: null }), reject)
          .finally(() => this.running.delete(entry));
      });
    });
    x.done.catch(() => {});
    this.execs.set(id, x);
    return this.handle(id, [0, 0]);
  }

  private handle(id: number, offsets: [number, number]): ExecHandle {
    const x = this.execs.get(id)!;
    // What was written before the listener came, after `offset`, is handed on first.
    const after = (all: Buffer[], offset: number): Buffer => Buffer.concat(all).subarray(offset);
    return {
      id,
      onStdout: (cb) => { const b = after(x.out, offsets[0]); if (b.length) cb(b); x.outCbs.push(cb); },
      onStderr: (cb) => { const b = after(x.err, offsets[1]); if (b.length) cb(b); x.errCbs.push(cb); },
      signal: async () => {},
      wait: () => x.done,
    };
  }

  /** Growth caps, lowered by update({ limits }). */
  limits: SandboxLimits;
  /** Where /output goes, set at creation or by update({ outputDir }). */
  outputDir: string | undefined;

  async resumeExec(execId: number, offsets: [number, number]): Promise<ExecHandle> {
    this.live('resume an exec');
    if (!this.execs.has(execId)) throw new SandboxError('SANDBOX_AGENT_ERROR', `guest agent: replay: no such exec ${execId}`);
    return this.handle(execId, offsets);
  }

  async update(req: ResourceUpdate): Promise<UpdateReport> {
    this.live('update');
    this.updates.push(req);
    if (this.opts.failUpdateAt === this.updates.length) {
      throw new ResizeError(`sandbox ${this.id}: injected resize failure`, { vcpus: this.vcpus, memoryMiB: this.memoryMiB });
    }
    const bad = validateUpdate(this.status(), req);
    if (bad) throw bad;
    if (req.limits) this.limits = { ...req.limits };
    if (req.outputDir !== undefined) this.outputDir = req.outputDir;
    if (req.cgroup) this.knobs = { ...this.knobs, ...req.cgroup };
    if (req.vcpus !== undefined) this.vcpus = req.vcpus;
    if (req.memoryMiB !== undefined) this.memoryMiB = req.memoryMiB;
    return { steps: [], totalMs: 0, vcpus: this.vcpus, memoryMiB: this.memoryMiB };
  }

  async pause(): Promise<void> {
    this.live('pause');
    this.state = 'paused';
  }

  async resume(): Promise<void> {
    if (this.state === 'suspended') {
      this.state = 'running';
      return;
    }
    this.live('resume');
    this.state = 'running';
  }

  async suspend(): Promise<SuspendReport> {
    this.live('suspend');
    this.state = 'suspended';
    return { bytes: this.memoryMiB * 1048576, ms: 0 };
  }

  async collectOutput(): Promise<string[]> {
    return [];
  }

  /** Simulates the VMM dying (kill -9): every waiter gets a VmmExitedError. */
  crash(): void {
    if (this.exitInfo) return;
    this.exitInfo = { code: null, signal: 'SIGKILL', expected: false };
    this.state = 'failed';
    const err = new VmmExitedError(this.id, null, 'SIGKILL');
    for (const r of this.running) r.reject(err);
    this.running.clear();
    this.resolveExit(this.exitInfo);
  }

  async stop(): Promise<void> {
    if (!this.exitInfo) {
      this.exitInfo = { code: 0, signal: null, expected: true };
      for (const r of this.running) r.reject(new VmmExitedError(this.id, 0, null, 'stopped'));
      this.running.clear();
      this.resolveExit(this.exitInfo);
    }
    if (this.state !== 'failed') this.state = 'stopped';
  }

  wait(): Promise<VmmExit> {
    return this.exited;
  }

  status(): SandboxStatus {
    return {
      id: this.id, backend: this.opts.backend ?? 'qemu', state: this.state, accel: null, pid: null, vcpus: this.vcpus, memoryMiB: this.memoryMiB,
      maxVcpus: this.limits.maxVcpus, maxMemoryMiB: this.limits.maxMemoryMiB, guest: this.guest(), bootMs: 0, error: null,
      booted: { memoryMiB: this.spec.memoryMiB, maxVcpus: this.spec.maxVcpus, maxMemoryMiB: this.spec.maxMemoryMiB, outputDisk: !!(this.spec.outputDisk || this.spec.outputDir) },
    };
  }

  async metrics(): Promise<SandboxMetrics> {
    return { cpuUsageUsec: this.cpuUsageUsec, memoryBytes: this.memoryMiB * 1048576, vmmRssBytes: 0, guest: this.guest() };
  }
}

export class FakeRuntime implements SandboxRuntime {
  readonly accel = 'tcg' as const;
  /** The backend the fake stands in for (the default one unless told). */
  readonly backend: Backend;
  readonly sandboxes: FakeSandbox[] = [];
  constructor(private readonly opts: FakeOptions = {}) {
    this.backend = opts.backend ?? 'qemu';
  }

  async create(spec: SandboxSpec): Promise<FakeSandbox> {
    const bad = validateSpec(spec, this.backend);
    if (bad) throw new SandboxError('SANDBOX_BAD_SPEC', `sandbox ${spec.id}: ${bad}`);
    const sb = new FakeSandbox(spec, this.opts);
    this.sandboxes.push(sb);
    return sb;
  }

  /** A FakeRuntime shared by two schedulers stands for a daemon restart. */
  async attach(id: string): Promise<FakeSandbox> {
    const sb = this.sandboxes.find((x) => x.id === id && !['stopped', 'failed'].includes(x.state));
    if (!sb) throw new SandboxError('SANDBOX_GONE', `sandbox ${id} is not running any more`);
    return sb;
  }

  /** Sandboxes not shut down; a stopped one has left nothing behind, a crashed one has. */
  async list(): Promise<SandboxInfo[]> {
    return this.sandboxes.filter((x) => x.state !== 'stopped')
      .map((x) => ({ id: x.id, pid: null, state: x.state, alive: x.state !== 'failed' && x.state !== 'created' }));
  }

  async shutdown(id: string): Promise<void> {
    for (const sb of this.sandboxes.filter((x) => x.id === id)) {
      sb.crash();
      sb.state = 'stopped';
    }
  }
}
