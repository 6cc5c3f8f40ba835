// Applies the controller's plans through the sandbox contract. Knob and pause actions
// (the fast path) go out at once and in parallel; structural resizes run behind them,
// one per sandbox at a time, without holding up the next tick. Reports what it did
// and how long each action took.
import type { Action, Plan } from './controller/index.ts';

/** The part of the sandbox contract the actuator uses (sandbox-runtime's Sandbox fits it). */
export interface ActuatedSandbox {
  readonly id: string;
  update(req: { vcpus?: number; memoryMiB?: number; cgroup?: Record<string, unknown> }): Promise<{ steps: { kind: string; detail: string; ms: number }[] }>;
  pause(): Promise<void>;
  /** Continues a paused sandbox or restores a suspended one. */
  resume(): Promise<void>;
  suspend(): Promise<{ bytes: number; ms: number }>;
}

export interface ActionResult {
  action: Action;
  ok: boolean;
  /** From the start of apply() to this action's completion. */
  ms: number;
  detail: string;
  /** The sandbox's own report of each step (resizes, knob writes), for metrics. */
  steps?: { kind: string; ms: number }[];
}

export class Actuator {
  private readonly resizing = new Map<string, Promise<unknown>>();

  constructor(private readonly lookup: (id: string) => ActuatedSandbox | undefined, private readonly clock: () => number = () => performance.now()) {}

  private async run(a: Action, t0: number): Promise<ActionResult> {
    const sb = this.lookup(a.sandbox);
    if (!sb) return { action: a, ok: false, ms: this.clock() - t0, detail: `no sandbox ${a.sandbox}` };
    try {
      let detail = '';
      let steps: { kind: string; ms: number }[] | undefined;
      switch (a.kind) {
        case 'knobs': {
          const r = await sb.update({ cgroup: { ...a.knobs } });
          detail = r.steps.map((s) => s.detail).join(', ');
          steps = r.steps;
          break;
        }
        case 'pause':
          await sb.pause();
          break;
        case 'resume':
          await sb.resume();
          break;
        case 'suspend': {
          const r = await sb.suspend();
          detail = `saved ${(r.bytes / 1048576).toFixed(0)} MiB in ${r.ms.toFixed(0)} ms`;
          break;
        }
        case 'restore':
          await sb.resume();
          break;
        case 'resize': {
          const r = await sb.update({ ...(a.vcpus !== undefined ? { vcpus: a.vcpus } : {}), ...(a.memoryMiB !== undefined ? { memoryMiB: a.memoryMiB } : {}) });
          detail = r.steps.map((s) => `${s.kind} ${s.detail} ${s.ms.toFixed(0)} ms`).join(', ');
          steps = r.steps;
          break;
        }
      }
      return { action: a, ok: true, ms: this.clock() - t0, detail, ...(steps ? { steps } : {}) };
    } catch (e) {
      return { action: a, ok: false, ms: this.clock() - t0, detail: `${(e as { code?: string }).code ?? 'ERROR'}: ${(e as Error).message}` };
    }
  }

  /**
   * Applies the fast actions and waits for them; starts the resizes and returns them
   * as a promise of their results, so the caller need not wait.
   */
  async apply(plan: Plan): Promise<{ fast: ActionResult[]; structural: Promise<ActionResult[]> }> {
    const t0 = this.clock();
    const slow = (a: Action): boolean => a.kind === 'resize' || a.kind === 'suspend' || a.kind === 'restore';
    const fastActions = plan.actions.filter((a) => !slow(a));
    const fast = await Promise.all(fastActions.map((a) => this.run(a, t0)));
    const structural = Promise.all(plan.actions.filter(slow).map((a) => {
      const prev = this.resizing.get(a.sandbox) ?? Promise.resolve();
      const next = prev.then(() => this.run(a, t0));
      this.resizing.set(a.sandbox, next.catch(() => {}));
      return next;
    }));
    return { fast, structural };
  }

  /** A resize still under way for this sandbox. */
  busy(id: string): Promise<unknown> {
    return this.resizing.get(id) ?? Promise.resolve();
  }
}
