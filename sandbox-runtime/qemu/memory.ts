// Memory beyond the boot size: one virtio-mem device covering max - boot, in 2 MiB blocks.
import type { UpdateStep } from '../contract.ts';
import { SandboxError } from '../errors.ts';
import type { AgentConnection } from './agent.ts';
import { VMEM_ID } from './args.ts';
import type { QmpConnection } from './qmp.ts';

const MiB = 1048576;

export class VirtioMem {
  /** Guest MemTotal with no virtio-mem memory plugged: the base the guest sees (read after boot). */
  baseMemTotalKiB = 0;

  constructor(readonly bootMiB: number, readonly maxMiB: number) {}

  /** Bytes the guest has plugged now. */
  async pluggedBytes(qmp: QmpConnection): Promise<number> {
    if (this.maxMiB === this.bootMiB) return 0;
    const d = (await qmp.queryMemoryDevices()).find((x) => x.data.id === VMEM_ID);
    if (!d) throw new SandboxError('SANDBOX_RESIZE_FAILED', `virtio-mem device ${VMEM_ID} missing from query-memory-devices`);
    return d.data.size;
  }

  async sizeMiB(qmp: QmpConnection): Promise<number> {
    return this.bootMiB + Math.round((await this.pluggedBytes(qmp)) / MiB);
  }

  /** Moves from `fromMiB` to `targetMiB`; `onSize` hears the size reached, also on failure. */
  async resize(qmp: QmpConnection, agent: AgentConnection, fromMiB: number, targetMiB: number, stepTimeoutMs: number, steps: UpdateStep[], onSize: (miB: number) => void): Promise<void> {
    const requested = (targetMiB - this.bootMiB) * MiB;
    const t = performance.now();
    await qmp.setRequestedSize(VMEM_ID, requested);
    // QEMU rate-limits MEMORY_DEVICE_SIZE_CHANGE to one a second: poll the size instead.
    const timeout = targetMiB > fromMiB ? stepTimeoutMs : stepTimeoutMs * 2;
    const deadline = Date.now() + timeout;
    // A guest that stops giving memory back (it holds what is left: unmovable or in use)
    // is not waited on for the whole timeout: a shrink without progress for a third of
    // it fails, so the controller can suspend it instead.
    const stallMs = targetMiB > fromMiB ? timeout : Math.max(2000, stepTimeoutMs / 3);
    let size = await this.pluggedBytes(qmp);
    let moved = { size, at: Date.now() };
    while (size !== requested) {
      if (size !== moved.size) moved = { size, at: Date.now() };
      if (Date.now() > deadline || Date.now() - moved.at > stallMs) {
        // Stop the guest chasing a size it cannot reach: pin the request to what it has.
        await qmp.setRequestedSize(VMEM_ID, size).catch(() => {});
        onSize(this.bootMiB + Math.round(size / MiB));
        throw new SandboxError('SANDBOX_RESIZE_FAILED',
          `virtio-mem reached ${Math.round(size / MiB)} of ${Math.round(requested / MiB)} MiB within ${timeout} ms (no progress for ${Date.now() - moved.at} ms)`);
      }
      await new Promise((r) => setTimeout(r, 5));
      size = await this.pluggedBytes(qmp);
    }
    onSize(targetMiB);
    // The guest's MemTotal follows once the blocks are onlined (or taken away).
    const expectKiB = this.baseMemTotalKiB + requested / 1024;
    await agent.waitStats((s) => Math.abs(s.memTotalKiB - expectKiB) <= 4096, stepTimeoutMs);
    steps.push({ kind: 'memory', detail: `${fromMiB} -> ${targetMiB} MiB`, ms: performance.now() - t });
  }
}
