// Several backends behind the one contract, as lodgerd holds them: a sandbox spec names
// its backend (or takes the default), and the backend is opened on first use, so a host
// that never runs a gVisor job never probes runsc, and one whose default is gVisor never
// builds a guest image until a QEMU job comes. Each backend keeps its own run directory
// and cgroup names, so attach, list and shutdown may ask every backend opened, and a
// backend not opened yet is opened for them only when its run directory holds something.
import { existsSync, readdirSync } from 'node:fs';
import type { Backend, Sandbox, SandboxInfo, SandboxRuntime, SandboxSpec } from './contract.ts';
import { SandboxError } from './errors.ts';

export interface BackendEntry {
  /** Where this backend keeps its sandboxes' records (its runtime's run directory). */
  runDir: string;
  /** Opens the backend; a rejection (runsc missing, no guest image) becomes the create's error. */
  open(): Promise<SandboxRuntime>;
}

export class MultiRuntime implements SandboxRuntime {
  private readonly opened = new Map<Backend, Promise<SandboxRuntime>>();

  /** `first` is the default backend, already open: its accelerator is the runtime's. */
  constructor(private readonly first: SandboxRuntime, private readonly entries: Partial<Record<Backend, BackendEntry>>) {
    this.opened.set(first.backend, Promise.resolve(first));
  }

  get backend(): Backend {
    return this.first.backend;
  }

  get accel(): SandboxRuntime['accel'] {
    return this.first.accel;
  }

  /** The backends this runtime can offer (the default and every other configured). */
  backends(): Backend[] {
    return [...new Set<Backend>([this.first.backend, ...(Object.keys(this.entries) as Backend[])])];
  }

  private open(b: Backend): Promise<SandboxRuntime> {
    let rt = this.opened.get(b);
    if (!rt) {
      const entry = this.entries[b];
      if (!entry) return Promise.reject(new SandboxError('SANDBOX_BAD_SPEC', `the ${b} backend is not configured on this host (it offers ${this.backends().join(', ')})`));
      rt = entry.open().catch((e: unknown) => {
        this.opened.delete(b); // the next job tries again (runsc may have been installed since)
        throw new SandboxError('SANDBOX_BAD_SPEC', `the ${b} backend cannot be opened: ${(e as Error).message}`, { cause: e });
      });
      this.opened.set(b, rt);
    }
    return rt;
  }

  /** Opened backends, and the others whose run directory holds a sandbox (an earlier run's). */
  private async holding(): Promise<SandboxRuntime[]> {
    const out: SandboxRuntime[] = [];
    for (const b of this.backends()) {
      const entry = this.entries[b];
      const used = this.opened.has(b) || (!!entry && existsSync(entry.runDir) && readdirSync(entry.runDir).length > 0);
      if (used) out.push(await this.open(b));
    }
    return out;
  }

  create(spec: SandboxSpec): Promise<Sandbox> {
    const b = spec.backend ?? this.first.backend;
    return this.open(b).then((rt) => rt.create({ ...spec, backend: b }));
  }

  async attach(id: string): Promise<Sandbox> {
    for (const rt of await this.holding()) {
      if ((await rt.list()).some((s) => s.id === id)) return rt.attach(id);
    }
    return this.first.attach(id); // its SANDBOX_GONE names what is missing
  }

  async list(): Promise<SandboxInfo[]> {
    const all = await Promise.all((await this.holding()).map((rt) => rt.list()));
    return all.flat();
  }

  async shutdown(id: string): Promise<void> {
    for (const rt of await this.holding()) await rt.shutdown(id);
  }
}
