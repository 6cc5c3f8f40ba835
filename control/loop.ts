// The control loop: observe (monitors, /proc, sandbox status) -> decide (pure) ->
// actuate. It ticks on a timer and also on a probe sample over the target, so a breach is
// acted on when the sample that shows it arrives. One loop lives as long as lodgerd: a
// policy reload swaps the policy (setPolicy) and keeps the controller's state, which is
// also stored (StateStore) so a restart keeps clamps, breach memory and learned knob
// effects. It keeps the recent decisions with their reasons and every reaction's time.
import { EventEmitter } from 'node:events';
import { cpus } from 'node:os';
import { Actuator, type ActionResult, type ActuatedPool, type ActuatedSandbox } from './actuator.ts';
import { batchCapacity, decide, INITIAL_STATE, reconcileState, type Action, type BatchCapacity, type ControllerPolicy, type ControllerState, type HostObservation, type Observations } from './controller/index.ts';
import type { StateStore } from './state-store.ts';
import { MemoryBudget, parsePsi, ProcFile, type ServiceMonitor, type ServiceReading } from './monitor/index.ts';
import { join } from 'node:path';

export interface LoopSandbox extends ActuatedSandbox {
  status(): { vcpus: number; memoryMiB: number; state: string; guest: { memAvailableKiB: number } | null };
}

export interface HostReader {
  read(): Promise<HostObservation>;
}

const hostCpus = (): number => cpus().length;

/** Host signals from /proc (injected path). */
export class ProcHostReader implements HostReader {
  // The host's CPUs, not this process's affinity: a lodgerd pinned to housekeeping CPUs
  // must still split all of them (with availableParallelism() it saw one CPU and put
  // batch on the service's).
  // With a memory budget (a cgroup below the memory mount standing in for the host's
  // memory), its limit, usage and pressure are the memory guarded; otherwise /proc's.
  private readonly memory: MemoryBudget;
  private readonly cpuPsi: ProcFile;
  constructor(proc = '/proc', private readonly cpus = hostCpus(), budget: { cgroup: string; cgroupRoot?: string } = { cgroup: '' }) {
    this.memory = new MemoryBudget(budget.cgroup, { proc, cgroupRoot: budget.cgroupRoot ?? '/sys/fs/cgroup' });
    this.cpuPsi = new ProcFile(join(proc, 'pressure', 'cpu'));
  }
  async read(): Promise<HostObservation> {
    const psi = this.cpuPsi.read();
    const memory = await this.memory.read();
    return { cpus: this.cpus, cpuPressure: psi === null ? 0 : parsePsi(psi).someAvg10, memAvailableBytes: memory.availableBytes, memory };
  }
}

export interface Decision {
  at: number;
  reason: string;
  slack: Record<string, number | null>;
  actions: Action[];
  results: ActionResult[];
}

export interface Reaction {
  /** When the violating observation was made (loop clock, ms). */
  observedAt: number;
  /** From that observation to the last fast action applied. */
  ms: number;
  actions: string[];
}

export interface ControlLoopOptions {
  policy: ControllerPolicy;
  monitors: ServiceMonitor[];
  host: HostReader;
  sandboxes: () => LoopSandbox[];
  /** The pool's parent cgroup, for clamps a starting sandbox inherits. */
  pool?: ActuatedPool | null;
  /** Where the controller's state survives a restart. */
  store?: StateStore | null;
  tickMs?: number;
  /** Wall-clock ms (stored state carries times across restarts). */
  clock?: () => number;
}

/** The stored state is rewritten at most this often unless the clamp changed. */
const SAVE_EVERY_MS = 1000;

export class ControlLoop extends EventEmitter {
  private state: ControllerState;
  private policy: ControllerPolicy;
  private monitors: ServiceMonitor[];
  private savedAt = -Infinity;
  private savedKey = '';
  private timer: NodeJS.Timeout | null = null;
  private ticking: Promise<void> | null = null;
  private again = false;
  private readonly actuator: Actuator;
  private readonly clock: () => number;
  readonly decisions: Decision[] = [];
  /** The latest round's reason, also when it changed nothing ("steady: ... (breach memory: ...)"). */
  lastReason = '';
  /** The batch capacity as of the last round (null before the first). */
  lastCapacity: BatchCapacity | null = null;
  readonly reactions: Reaction[] = [];
  lastReadings: ServiceReading[] = [];

  constructor(private readonly o: ControlLoopOptions) {
    super();
    this.clock = o.clock ?? Date.now;
    this.actuator = new Actuator((id) => o.sandboxes().find((s) => s.id === id), this.clock, o.pool ?? null);
    this.policy = o.policy;
    this.monitors = o.monitors;
    this.state = reconcileState(o.store?.load() ?? INITIAL_STATE, o.policy);
  }

  get currentPolicy(): ControllerPolicy {
    return this.policy;
  }

  /** A reloaded policy: new monitors, the same controller state (clamps stay where they are). */
  setPolicy(policy: ControllerPolicy, monitors: ServiceMonitor[]): void {
    const running = this.timer !== null;
    for (const m of this.monitors) this.stopMonitor(m);
    this.policy = policy;
    this.monitors = monitors;
    this.state = reconcileState(this.state, policy);
    if (running) for (const m of monitors) this.startMonitor(m);
  }

  private startMonitor(m: ServiceMonitor): void {
    // A sample over the target (or a failed probe) may start a breach: act on it now.
    // Others can only ease the window and wait for the timer: a round per probe sample
    // cost lodgerd 10-14% of a CPU at 50 probes/s (docs/BENCHMARKS.md).
    m.onSample = (r) => { if (!r.ok || r.latencyMs > m.policy.slo.targetMs) void this.tick(); };
    m.start();
  }

  private stopMonitor(m: ServiceMonitor): void {
    m.onSample = null;
    m.stop();
  }

  private save(force: boolean): void {
    const store = this.o.store;
    if (!store) return;
    // Serialised only when a write may be due: at 10 rounds a second it showed in profiles.
    if (!force && this.clock() - this.savedAt < SAVE_EVERY_MS) return;
    this.savedAt = this.clock();
    const key = JSON.stringify(this.state);
    if (key === this.savedKey) return;
    try {
      store.save(this.state);
      this.savedKey = key;
    } catch (e) {
      this.emit('warning', e);
    }
  }

  get controllerState(): ControllerState {
    return this.state;
  }

  start(): void {
    for (const m of this.monitors) this.startMonitor(m);
    this.timer = setInterval(() => void this.tick(), this.o.tickMs ?? 100);
  }

  /** One observe-decide-act round; calls that arrive meanwhile fold into one more round. */
  tick(): Promise<void> {
    if (this.ticking) {
      this.again = true;
      return this.ticking;
    }
    this.ticking = this.round().finally(() => {
      this.ticking = null;
      if (this.again) {
        this.again = false;
        void this.tick();
      }
    });
    return this.ticking;
  }

  private async round(): Promise<void> {
    const readings = this.monitors.map((m) => m.observe());
    const now = this.clock();
    const sandboxes = this.o.sandboxes();
    const obs: Observations = {
      now,
      services: readings,
      host: await this.o.host.read(),
      sandboxes: sandboxes.map((s) => {
        const st = s.status();
        return {
          id: s.id, vcpus: st.vcpus, memoryMiB: st.memoryMiB, paused: st.state === 'paused', suspended: st.state === 'suspended', suspending: st.state === 'suspending' || st.state === 'resuming',
          guestMemAvailableMiB: st.guest && st.state !== 'suspended' ? Math.round(st.guest.memAvailableKiB / 1024) : null,
        };
      }),
    };
    this.lastReadings = readings;
    const plan = decide(this.policy, obs, this.state);
    this.state = plan.state;
    this.lastReason = plan.reason;
    this.lastCapacity = batchCapacity(this.policy, obs, plan);
    this.save(plan.tightened);
    const { fast, structural } = await this.actuator.apply(plan);
    if (plan.tightened && fast.length) {
      const r: Reaction = { observedAt: now, ms: this.clock() - now, actions: fast.map((x) => `${x.action.kind} ${x.action.sandbox}${x.ok ? '' : ' FAILED'}`) };
      this.reactions.push(r);
      if (this.reactions.length > 200) this.reactions.shift();
      this.emit('reaction', r);
    }
    if (fast.length) this.record({ at: now, reason: plan.reason, slack: plan.slack, actions: fast.map((r) => r.action), results: fast });
    void structural.then((results) => {
      if (results.length) this.record({ at: this.clock(), reason: plan.reason, slack: plan.slack, actions: results.map((r) => r.action), results });
    });
  }

  private record(d: Decision): void {
    this.decisions.push(d);
    if (this.decisions.length > 200) this.decisions.shift();
    this.emit('decision', d);
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const m of this.monitors) this.stopMonitor(m);
    await this.ticking;
    this.save(true);
  }
}
