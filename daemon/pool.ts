// The warm pool: sandboxes booted ahead of time at the minimum size, each with an empty
// /output disk, so a job starts in milliseconds instead of a boot. A job takes one when
// it fits (no rootfs of its own, limits within the pool's maximum); it is resized to the
// job's minimum by hotplug, and the pool boots a replacement in the background.
import { randomBytes } from 'node:crypto';
import type { Sandbox, SandboxRuntime, SandboxSpec } from '../sandbox-runtime/index.ts';
import type { JobSpec } from './store.ts';

/** Memory a pool sandbox boots with; a job's minimum must be at least this. */
export const POOL_BASE_MEMORY_MIB = 256;

export interface WarmPoolOptions {
  runtime: SandboxRuntime;
  /** How many ready sandboxes to keep (the config's warmPoolSize). */
  size: number;
  /** What a pool sandbox may grow to (the batch pool policy's sandbox maximum). */
  shape: () => { maxVcpus: number; maxMemoryMiB: number };
  log?: (m: string) => void;
}

export class WarmPool {
  private readonly ready: Sandbox[] = [];
  private filling: Promise<void> | null = null;
  /** The sandbox being booted now: stop() ends it at once instead of waiting for its boot. */
  private booting: Sandbox | null = null;
  private stopped = false;

  constructor(private readonly o: WarmPoolOptions) {}

  /** Why a job cannot use the pool, or null when it can. */
  static unfit(spec: JobSpec, shape: { maxVcpus: number; maxMemoryMiB: number }, backend?: string): string | null {
    if (spec.rootfs) return 'it has a rootfs of its own';
    if (spec.runtime && backend && spec.runtime !== backend) return `it runs on ${spec.runtime}, the pool's sandboxes on ${backend}`;
    if (spec.image) return 'it runs an image (its root is attached at boot)';
    if (spec.vcpus.max > shape.maxVcpus) return `it may grow to ${spec.vcpus.max} vCPUs, the pool's sandboxes to ${shape.maxVcpus}`;
    if (spec.memoryMiB.max > shape.maxMemoryMiB) return `it may grow to ${spec.memoryMiB.max} MiB, the pool's sandboxes to ${shape.maxMemoryMiB}`;
    if (spec.memoryMiB.min < POOL_BASE_MEMORY_MIB || (spec.memoryMiB.min - POOL_BASE_MEMORY_MIB) % 2) return `its minimum memory is not ${POOL_BASE_MEMORY_MIB} MiB plus 2 MiB steps`;
    return null;
  }

  get readyCount(): number {
    return this.ready.length;
  }

  /** A ready sandbox that fits the job, or null (the job then boots its own). */
  take(spec: JobSpec): Sandbox | null {
    if (this.stopped) return null;
    for (let i = 0; i < this.ready.length; i++) {
      const sb = this.ready[i]!;
      const st = sb.status();
      if (st.state !== 'running') {
        this.ready.splice(i--, 1);
        void sb.stop({ graceMs: 0 }).catch(() => {});
        continue;
      }
      if (WarmPool.unfit(spec, { maxVcpus: st.maxVcpus, maxMemoryMiB: st.maxMemoryMiB }, st.backend)) continue;
      this.ready.splice(i, 1);
      this.fill();
      return sb;
    }
    this.fill();
    return null;
  }

  /** Boots sandboxes, one at a time so the host is not loaded by many boots, until the pool is full. */
  fill(): void {
    if (this.filling || this.stopped) return;
    this.filling = (async () => {
      let failures = 0;
      while (!this.stopped && this.ready.length < this.o.size && failures < 3) {
        const { maxVcpus, maxMemoryMiB } = this.o.shape();
        const spec: SandboxSpec = {
          id: `pool-${randomBytes(4).toString('hex')}`, vcpus: 1, maxVcpus, memoryMiB: POOL_BASE_MEMORY_MIB,
          maxMemoryMiB: Math.max(POOL_BASE_MEMORY_MIB, maxMemoryMiB - ((maxMemoryMiB - POOL_BASE_MEMORY_MIB) % 2)), outputDisk: true,
        };
        try {
          const sb = await this.o.runtime.create(spec);
          this.booting = sb;
          await sb.start().finally(() => { this.booting = null; });
          if (this.stopped) await sb.stop({ graceMs: 0 });
          else this.ready.push(sb);
          failures = 0;
        } catch (e) {
          if (this.stopped) break;
          failures++;
          this.o.log?.(`warm pool: sandbox ${spec.id} did not boot: ${(e as Error).message.split('\n')[0]}`);
        }
      }
    })().finally(() => { this.filling = null; });
  }

  /** Stops the ready sandboxes (they hold no job). */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.booting?.stop({ graceMs: 0 }).catch(() => {});
    await this.filling;
    await Promise.all(this.ready.splice(0).map((sb) => sb.stop({ graceMs: 0 }).catch(() => {})));
  }
}
