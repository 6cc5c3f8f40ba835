// Fakes of the two connections a QemuSandbox is given (QMP and the guest agent) and a
// stand-in VMM process, for unit tests of the sandbox's logic. Each fake implements the
// same interface as the real part; what the guest would do is a few fields.
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { GuestStats } from '../agent/index.ts';
import type { ExecHandle } from '../contract.ts';
import { defaultHostPaths } from '../host.ts';
import type { AgentConnection } from './agent.ts';
import type { CpuInfoFast, HotpluggableCpu, MemoryDeviceInfo, MigrationInfo, QmpConnection, QmpEvent, StatusInfo } from './qmp.ts';
import type { QemuRuntimeOptions } from './runtime.ts';

/** What the guest and QEMU hold, shared by every connection to the same fake VM. */
export interface FakeVm {
  running: boolean;
  pluggedBytes: number;
}

export class FakeQmp implements QmpConnection {
  readonly calls: string[] = [];
  /** What query-migrate answers; a test moves it on. */
  migration: MigrationInfo = { status: 'active' };
  /** Called on quit: the test ends the stand-in VMM, as QEMU would end itself. */
  onQuit: () => void = () => {};

  constructor(readonly socket: string, private readonly vcpus: number, readonly vm: FakeVm) {}

  async connect(): Promise<void> { this.calls.push('connect'); }
  close(): void { this.calls.push('close'); }
  async queryStatus(): Promise<StatusInfo> { return { running: this.vm.running, status: this.vm.running ? 'running' : 'paused' }; }
  async stop(): Promise<void> { this.calls.push('stop'); this.vm.running = false; }
  async cont(): Promise<void> { this.calls.push('cont'); this.vm.running = true; }
  async quit(): Promise<void> { this.calls.push('quit'); this.onQuit(); }
  async queryHotpluggableCpus(): Promise<HotpluggableCpu[]> {
    return Array.from({ length: this.vcpus }, (_, s) => ({ type: 'qemu64-x86_64-cpu', 'vcpus-count': 1, props: { 'socket-id': s }, 'qom-path': `/machine/peripheral/vcpu-s${s}` }));
  }
  async queryCpusFast(): Promise<CpuInfoFast[]> {
    return Array.from({ length: this.vcpus }, (_, i) => ({ 'cpu-index': i, 'qom-path': `/machine/peripheral/vcpu-s${i}`, 'thread-id': i, target: 'x86_64' }));
  }
  async queryMemoryDevices(): Promise<MemoryDeviceInfo[]> {
    return [{ type: 'virtio-mem', data: { id: 'vmem0', memaddr: 0, size: this.vm.pluggedBytes, memdev: '/objects/vmem-ram' } }];
  }
  async deviceAdd(_driver: string, id: string): Promise<void> { this.calls.push(`device_add ${id}`); }
  async deviceDel(id: string): Promise<void> { this.calls.push(`device_del ${id}`); }
  async setRequestedSize(_id: string, bytes: number): Promise<void> { this.vm.pluggedBytes = bytes; }
  async migrate(uri: string): Promise<void> {
    this.calls.push('migrate');
    // QEMU connects to our socket and streams the VM once the migration completes.
    const c = net.connect(uri.replace(/^unix:/, ''));
    c.on('error', () => {});
    c.end(Buffer.alloc(4096, 1));
  }
  async queryMigrate(): Promise<MigrationInfo> { return this.migration; }
  async migrateCancel(): Promise<void> { this.calls.push('migrate_cancel'); }
  async migrateIncoming(): Promise<void> { this.calls.push('migrate-incoming'); }
  waitEvent(): { promise: Promise<QmpEvent>; cancel: () => void } {
    return { promise: new Promise(() => {}), cancel: () => {} };
  }
}

export class FakeAgent implements AgentConnection {
  readonly calls: string[] = [];
  private readonly base: GuestStats;
  hello = 'lodger-agent fake';
  failure: Error | null = null;
  onChannelClose: () => Promise<Error> = async () => new Error('closed');

  constructor(memoryMiB: number, private readonly vm: FakeVm) {
    this.base = { cpusOnline: 1, cpusPresent: 1, memTotalKiB: memoryMiB * 1024, memAvailableKiB: memoryMiB * 900, load1: 0, load5: 0, load15: 0, uptimeMs: 0 };
  }

  /** The guest's MemTotal follows the plugged virtio-mem blocks. */
  get stats(): GuestStats {
    return { ...this.base, memTotalKiB: this.base.memTotalKiB + this.vm.pluggedBytes / 1024 };
  }

  async connect(): Promise<void> { this.calls.push('connect'); }
  async waitReady(): Promise<void> {}
  async reconnect(): Promise<void> { this.calls.push('reconnect'); }
  detach(): void { this.calls.push('detach'); }
  close(): void { this.calls.push('close'); }
  fail(e: Error): void { this.failure ??= e; }
  async exec(): Promise<ExecHandle> {
    this.calls.push('exec');
    return { id: 1, onStdout: () => {}, onStderr: () => {}, signal: async () => {}, wait: () => new Promise(() => {}) };
  }
  async resumeExec(): Promise<ExecHandle> { return this.exec(); }
  async requestStats(): Promise<GuestStats> { return { ...this.stats }; }
  async setCpus(n: number): Promise<GuestStats> { this.calls.push(`setCpus ${n}`); this.base.cpusOnline = n; return this.requestStats(); }
  async waitStats(pred: (s: GuestStats) => boolean): Promise<GuestStats> {
    if (!pred(this.stats)) throw new Error('guest did not reach the expected state');
    return this.requestStats();
  }
  async sync(): Promise<void> { this.calls.push('sync'); }
  async shutdown(): Promise<void> { this.calls.push('shutdown'); }
  async ping(): Promise<number> { return 0; }
  sendRaw(): void {}
}

/**
 * Options for a QEMU runtime whose "QEMU" is a shell loop (a real process with QEMU's
 * command line, so identity checks and exits are real) and whose connections are fakes.
 */
export function fakeQemuOptions(o: { vcpus?: number } = {}): { opts: QemuRuntimeOptions; dir: string; qmps: FakeQmp[]; agents: FakeAgent[] } {
  const dir = mkdtempSync(join(tmpdir(), 'lodger-fakeqemu-'));
  const bin = join(dir, 'fake-qemu');
  writeFileSync(bin, '#!/bin/sh\nwhile :; do sleep 0.2; done\n');
  chmodSync(bin, 0o755);
  const vm: FakeVm = { running: true, pluggedBytes: 0 };
  const qmps: FakeQmp[] = [];
  const agents: FakeAgent[] = [];
  const opts: QemuRuntimeOptions = {
    host: defaultHostPaths({ runDir: join(dir, 'run'), qemuBinary: bin, cacheDir: dir }),
    image: { kernel: '/k', kernelSource: '/k', pvh: false, initramfs: '/i', hash: 'h', kernelVersion: null, modules: [], bytes: 0 },
    accel: { accel: 'tcg', reason: 'test' },
    cgroups: null,
    bootTimeoutMs: 5000,
    qmp: (socket) => { const q = new FakeQmp(socket, o.vcpus ?? 2, vm); qmps.push(q); return q; },
    agent: () => { const a = new FakeAgent(256, vm); agents.push(a); return a; },
  };
  return { opts, dir, qmps, agents };
}
