// Converges reality to the controller's desired state through the sandbox contract.
// The fast path (pool and sandbox knobs, pause/resume) is applied every round: settings
// that already hold are skipped, a sandbox that joined gets the current clamp, and every
// so often each setting is handed down again so the cgroup layer can check it against the
// kernel and rewrite a drifted one. Structural steps run behind, one per sandbox at a
// time, without holding up the next round. Reports what it changed and how long it took.
import { SerialQueue } from '../lib/index.ts';
import { expandCpus, type Action, type Desired, type KnobSettings, type Plan } from './controller/index.ts';

/** The part of the sandbox contract the actuator uses (sandbox-runtime's Sandbox fits it). */
export interface ActuatedSandbox {
  readonly id: string;
  update(req: { vcpus?: number; memoryMiB?: number; cgroup?: KnobSettings }): Promise<{ steps: { kind: string; detail: string; ms: number }[] }>;
  pause(): Promise<void>;
  /** Continues a paused sandbox or restores a suspended one. */
  resume(): Promise<void>;
  suspend(): Promise<{ bytes: number; ms: number }>;
}

/** The pool's parent cgroup: what is set here holds for every sandbox below it. */
export interface ActuatedPool {
  /** Applies knobs; returns the writes made ("file=value"), none when nothing changed. */
  update(knobs: KnobSettings): Promise<string[]>;
}

export interface ActionResult {
  action: Action;
  ok: boolean;
  /** From the start of the round's actuation to this action's completion. */
  ms: number;
  detail: string;
  /** The sandbox's own report of each step (resizes, knob writes), for metrics. */
  steps?: { kind: string; ms: number }[];
}

/** Hands every setting down again after this long (the cgroup layer checks it against the kernel). */
const REASSERT_MS = 10_000;
/** The pool's id in reports. */
export const POOL_TARGET = 'pool';

const errorText = (e: unknown): string => `${(e as { code?: string }).code ?? 'ERROR'}: ${(e as Error).message}`;
const cpuCount = (k: KnobSettings | undefined): number => (k?.cpus === undefined ? Infinity : expandCpus(k.cpus).length);

export class Actuator {
  /** Structural steps per sandbox, one at a time; present while any is under way (its updates queue behind them). */
  private readonly structural = new Map<string, { queue: SerialQueue; pending: number }>();
  /** What was last applied per target, and when. */
  private readonly applied = new Map<string, { key: string; at: number; knobs: KnobSettings }>();

  constructor(
    private readonly lookup: (id: string) => (ActuatedSandbox & { status(): { state: string } }) | undefined,
    private readonly clock: () => number = Date.now,
    private readonly pool: ActuatedPool | null = null,
  ) {}

  private due(id: string, key: string): boolean {
    const prev = this.applied.get(id);
    if (!prev || prev.key !== key) return true;
    // A re-assertion would wait behind a resize and hold up the round: it can wait.
    return this.clock() - prev.at >= REASSERT_MS && !this.structural.has(id);
  }

  private async knobs(id: string, knobs: KnobSettings, reason: string, t0: number, write: () => Promise<{ detail: string; steps?: { kind: string; ms: number }[] }>): Promise<ActionResult | null> {
    const key = JSON.stringify(knobs);
    if (!this.due(id, key)) return null;
    const changed = this.applied.get(id)?.key !== key;
    const action: Action = { kind: 'knobs', sandbox: id, knobs, reason };
    try {
      const r = await write();
      this.applied.set(id, { key, at: this.clock(), knobs });
      const wrote = r.detail !== '' && r.detail !== 'no change';
      // A re-assertion that found everything in place is not news.
      if (!changed && !wrote) return null;
      return { action, ok: true, ms: this.clock() - t0, detail: changed ? r.detail : `drifted, rewritten: ${r.detail}`, ...(r.steps ? { steps: r.steps } : {}) };
    } catch (e) {
      this.applied.delete(id);
      return { action, ok: false, ms: this.clock() - t0, detail: errorText(e) };
    }
  }

  /** Converges the pool and every sandbox to the desired fast-path setting. */
  async converge(desired: Desired): Promise<ActionResult[]> {
    const t0 = this.clock();
    // A sandbox that went away is forgotten (applied afresh should its id come back).
    for (const id of this.applied.keys()) if (id !== POOL_TARGET && !desired.sandboxes.some((d) => d.id === id)) this.applied.delete(id);
    const pool = this.pool;
    const poolStep = pool ? (): Promise<ActionResult | null> => this.knobs(POOL_TARGET, desired.pool, desired.reason, t0, async () => ({ detail: (await pool.update(desired.pool)).join(', ') })) : null;
    const sandboxSteps = (): Promise<(ActionResult | null)[]> => Promise.all(desired.sandboxes.map(async (d) => {
      const sb = this.lookup(d.id);
      if (!sb) return [];
      const state = sb.status().state;
      const out: (ActionResult | null)[] = [];
      if (state === 'running' || state === 'paused') {
        out.push(await this.knobs(d.id, d.knobs, desired.reason, t0, async () => {
          const r = await sb.update({ cgroup: { ...d.knobs } });
          return { detail: r.steps.map((s) => s.detail).join(', '), steps: r.steps };
        }));
      }
      // Pause and resume follow the sandbox's real state, not what was last asked.
      const want = d.paused ? 'paused' : 'running';
      if ((state === 'running' || state === 'paused') && state !== want) {
        const action: Action = { kind: d.paused ? 'pause' : 'resume', sandbox: d.id, reason: desired.reason };
        try {
          await (d.paused ? sb.pause() : sb.resume());
          out.push({ action, ok: true, ms: this.clock() - t0, detail: '' });
        } catch (e) {
          out.push({ action, ok: false, ms: this.clock() - t0, detail: errorText(e) });
        }
      }
      return out;
    })).then((x) => x.flat());
    // cgroup v1 refuses a parent cpuset narrower than a child's: narrow the children
    // first, widen the parent first.
    const narrowing = cpuCount(desired.pool) < cpuCount(this.applied.get(POOL_TARGET)?.knobs);
    const results: (ActionResult | null)[] = [];
    if (poolStep && !narrowing) results.push(await poolStep());
    results.push(...(await sandboxSteps()));
    if (poolStep && narrowing) results.push(await poolStep());
    return results.filter((r): r is ActionResult => r !== null);
  }

  private async run(a: Action, t0: number): Promise<ActionResult> {
    const sb = this.lookup(a.sandbox);
    if (!sb) return { action: a, ok: false, ms: this.clock() - t0, detail: `no sandbox ${a.sandbox}` };
    try {
      let detail = '';
      let steps: { kind: string; ms: number }[] | undefined;
      switch (a.kind) {
        case 'suspend': {
          const r = await sb.suspend();
          detail = `saved ${(r.bytes / 1048576).toFixed(0)} MiB in ${r.ms.toFixed(0)} ms`;
          break;
        }
        case 'restore':
        case 'resume':
          await sb.resume();
          break;
        case 'pause':
          await sb.pause();
          break;
        case 'resize': {
          const r = await sb.update({ ...(a.vcpus !== undefined ? { vcpus: a.vcpus } : {}), ...(a.memoryMiB !== undefined ? { memoryMiB: a.memoryMiB } : {}) });
          detail = r.steps.map((s) => `${s.kind} ${s.detail} ${s.ms.toFixed(0)} ms`).join(', ');
          steps = r.steps;
          break;
        }
        case 'knobs':
          detail = (await sb.update({ cgroup: { ...a.knobs } })).steps.map((s) => s.detail).join(', ');
          break;
      }
      return { action: a, ok: true, ms: this.clock() - t0, detail, ...(steps ? { steps } : {}) };
    } catch (e) {
      return { action: a, ok: false, ms: this.clock() - t0, detail: errorText(e) };
    }
  }

  /**
   * Converges the fast path and waits for it; starts the plan's structural steps and
   * returns them as a promise of their results, so the caller need not wait.
   */
  async apply(plan: Plan): Promise<{ fast: ActionResult[]; structural: Promise<ActionResult[]> }> {
    const t0 = this.clock();
    const fast = await this.converge(plan.desired);
    const structural = Promise.all(plan.actions.map((a) => {
      const s = this.structural.get(a.sandbox) ?? { queue: new SerialQueue(), pending: 0 };
      this.structural.set(a.sandbox, s);
      s.pending++;
      const next = s.queue.run(() => this.run(a, t0)).finally(() => { if (--s.pending === 0) this.structural.delete(a.sandbox); });
      return next;
    }));
    return { fast, structural };
  }

}
