// How vCPUs come and go, behind one interface. 'acpi': device_add / device_del, the guest
// ejects the CPU. 'offline': every vCPU exists from boot and the guest onlines or
// offlines them; an offline vCPU's thread sleeps. Under TCG QEMU cannot create vCPU
// threads safely after boot (7.2 aborts in tcg_region_initial_alloc once the translation
// cache's regions are taken, and on any re-plug after an unplug; 10.0 after maxcpus thread
// creations), so TCG defaults to 'offline'.
import type { Accelerator, UpdateStep } from '../contract.ts';
import { SandboxError } from '../errors.ts';
import type { AgentConnection } from './agent.ts';
import type { HotpluggableCpu, QmpConnection } from './qmp.ts';
import { until } from './wait.ts';

export type VcpuUnplugMode = 'acpi' | 'offline';

export interface VcpuContext {
  qmp: QmpConnection;
  agent: AgentConnection;
  stepTimeoutMs: number;
  /** Hears each count reached, so a failure part-way leaves the truth behind. */
  onCount(n: number): void;
}

export interface VcpuStrategy {
  readonly mode: VcpuUnplugMode;
  /** Create every vCPU at boot (those beyond the boot count offline in the guest). */
  readonly coldPlugAll: boolean;
  /** Steps from `online` to `target` vCPUs, one at a time. */
  resize(ctx: VcpuContext, online: number, target: number, steps: UpdateStep[]): Promise<void>;
  /** How many vCPUs the sandbox has now, as QEMU and the guest say. */
  count(qmp: QmpConnection, agent: AgentConnection): Promise<number>;
}

export function vcpuStrategy(mode: VcpuUnplugMode, accel: Accelerator): VcpuStrategy {
  return mode === 'acpi' ? new AcpiVcpus(accel) : new OfflineVcpus();
}

const sortKey = (c: HotpluggableCpu): number => (c.props['socket-id'] ?? 0) * 65536 + (c.props['core-id'] ?? 0) * 256 + (c.props['thread-id'] ?? 0);

/** ACPI _OST for an eject (source 3) with status 0x80-0x83: the guest would not let go. */
export function isOstEjectFailure(data: Record<string, unknown>, id: string): boolean {
  const info = data.info as { device?: string; source?: number; status?: number } | undefined;
  return !!info && info.device === id && info.source === 3 && typeof info.status === 'number' && info.status >= 0x80 && info.status <= 0x83;
}

/** Brings vCPUs up to `target`: the guest onlines one that exists, else one is hot-added. */
async function grow(ctx: VcpuContext, online: number, target: number, steps: UpdateStep[], mayAdd: () => void): Promise<number> {
  const { qmp, agent } = ctx;
  let slots = await qmp.queryHotpluggableCpus();
  const plugged = slots.filter((c) => c['qom-path']).length;
  let added = 0;
  while (online < target) {
    const t = performance.now();
    let kind: UpdateStep['kind'] = 'vcpu-online';
    let detail = `${online} -> ${online + 1} (guest online)`;
    if (online >= plugged + added) {
      mayAdd();
      const free = slots.filter((c) => !c['qom-path']).sort((a, b) => sortKey(a) - sortKey(b))[0];
      if (!free) throw new SandboxError('SANDBOX_RESIZE_FAILED', `no free vCPU slot for ${online + 1} of ${target}`);
      const id = `vcpu-s${free.props['socket-id'] ?? 0}c${free.props['core-id'] ?? 0}t${free.props['thread-id'] ?? 0}`;
      await qmp.deviceAdd(free.type, id, free.props);
      added++;
      kind = 'vcpu-plug';
      detail = `${online} -> ${online + 1} (${id})`;
      slots = await qmp.queryHotpluggableCpus();
    }
    const want = online + 1;
    // A hot-added CPU appears in the guest a moment after device_add: the agent onlines
    // it when its uevent arrives, so keep asking until the count is reached.
    await agent.setCpus(want);
    await agent.waitStats((s) => s.cpusOnline >= want, ctx.stepTimeoutMs);
    online = want;
    ctx.onCount(online);
    steps.push({ kind, detail, ms: performance.now() - t });
  }
  return plugged + added;
}

class OfflineVcpus implements VcpuStrategy {
  readonly mode = 'offline';
  readonly coldPlugAll = true;

  async resize(ctx: VcpuContext, online: number, target: number, steps: UpdateStep[]): Promise<void> {
    if (online < target) await grow(ctx, online, target, steps, () => {});
    for (let n = online; n > target; n--) {
      const t = performance.now();
      await ctx.agent.setCpus(n - 1);
      await ctx.agent.waitStats((s) => s.cpusOnline <= n - 1, ctx.stepTimeoutMs);
      ctx.onCount(n - 1);
      steps.push({ kind: 'vcpu-offline', detail: `${n} -> ${n - 1} (guest offline)`, ms: performance.now() - t });
    }
    // QEMU's view must agree: every online vCPU exists.
    const seen = (await ctx.qmp.queryCpusFast()).length;
    if (seen < target) throw new SandboxError('SANDBOX_RESIZE_FAILED', `QEMU reports ${seen} vCPUs after resizing to ${target}`);
  }

  async count(_qmp: QmpConnection, agent: AgentConnection): Promise<number> {
    // Offline vCPUs still exist in QEMU: the guest's online count is the truth.
    return (await agent.requestStats()).cpusOnline;
  }
}

class AcpiVcpus implements VcpuStrategy {
  readonly mode = 'acpi';
  readonly coldPlugAll = false;
  /** An ACPI unplug happened: TCG then cannot plug again. */
  private unplugged = false;

  constructor(private readonly accel: Accelerator) {}

  async resize(ctx: VcpuContext, online: number, target: number, steps: UpdateStep[]): Promise<void> {
    let plugged = await grow(ctx, online, target, steps, () => {
      if (this.accel === 'tcg' && this.unplugged) {
        throw new SandboxError('SANDBOX_RESIZE_FAILED', 'refusing to plug a vCPU after an ACPI unplug under TCG: QEMU aborts on it (use vcpuUnplug "offline")');
      }
    });
    for (let n = online; n > target; n--) {
      const t = performance.now();
      await this.unplugOne(ctx);
      this.unplugged = true;
      await ctx.agent.setCpus(n - 1);
      await ctx.agent.waitStats((s) => s.cpusOnline <= n - 1, ctx.stepTimeoutMs);
      ctx.onCount(n - 1);
      steps.push({ kind: 'vcpu-unplug', detail: `${n} -> ${n - 1}`, ms: performance.now() - t });
      plugged--;
    }
    // QEMU's view must agree: every online vCPU exists, and after unplugs no more.
    const seen = (await ctx.qmp.queryCpusFast()).length;
    if (seen < target || seen !== plugged) throw new SandboxError('SANDBOX_RESIZE_FAILED', `QEMU reports ${seen} vCPUs after resizing to ${target}`);
  }

  count(qmp: QmpConnection): Promise<number> {
    return qmp.queryCpusFast().then((c) => c.length);
  }

  /** device_del of the highest unpluggable vCPU, confirmed by QEMU. */
  private async unplugOne({ qmp, stepTimeoutMs }: VcpuContext): Promise<void> {
    const slots = await qmp.queryHotpluggableCpus();
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
    }, stepTimeoutMs);
    try {
      await qmp.deviceDel(id);
    } catch (e) {
      ev.cancel();
      throw e;
    }
    const e = await ev.promise;
    if (e.event !== 'DEVICE_DELETED') throw new SandboxError('SANDBOX_RESIZE_FAILED', `guest refused to unplug vCPU ${id} (${e.event} ${JSON.stringify(e.data)})`);
    await until(async () => !(await qmp.queryCpusFast()).some((c) => c['qom-path'] === path),
      stepTimeoutMs, `vCPU ${id} still listed by query-cpus-fast`, 'SANDBOX_RESIZE_FAILED');
  }
}
