// The QMP commands a sandbox uses, typed, over the generic client in ../qmp.ts. The
// sandbox talks only to this interface, so its logic runs against a fake in unit tests.
import { QmpClient, type CpuInfoFast, type HotpluggableCpu, type MemoryDeviceInfo, type QmpEvent, type StatusInfo } from '../qmp.ts';

export type { CpuInfoFast, HotpluggableCpu, MemoryDeviceInfo, QmpEvent, StatusInfo };

export interface MigrationInfo {
  status?: string;
  'error-desc'?: string;
}

export interface QmpConnection {
  /** Connects (retrying until QEMU listens) and leaves capabilities negotiation. */
  connect(timeoutMs: number): Promise<void>;
  close(): void;
  queryStatus(): Promise<StatusInfo>;
  stop(): Promise<void>;
  cont(): Promise<void>;
  quit(timeoutMs: number): Promise<void>;
  queryHotpluggableCpus(): Promise<HotpluggableCpu[]>;
  queryCpusFast(): Promise<CpuInfoFast[]>;
  queryMemoryDevices(): Promise<MemoryDeviceInfo[]>;
  deviceAdd(driver: string, id: string, props: HotpluggableCpu['props']): Promise<void>;
  deviceDel(id: string): Promise<void>;
  /** virtio-mem: how much of its region the guest should have plugged. */
  setRequestedSize(deviceId: string, bytes: number): Promise<void>;
  migrate(uri: string): Promise<void>;
  queryMigrate(): Promise<MigrationInfo>;
  migrateCancel(): Promise<void>;
  migrateIncoming(uri: string): Promise<void>;
  /** The first event of `names` that `match` accepts; register before the command that causes it. */
  waitEvent(names: string[], match: (e: QmpEvent) => boolean, timeoutMs: number): { promise: Promise<QmpEvent>; cancel: () => void };
}

export type QmpFactory = (socketPath: string) => QmpConnection;

export class Qmp implements QmpConnection {
  private readonly c: QmpClient;

  constructor(socketPath: string) {
    this.c = new QmpClient(socketPath);
  }

  connect(timeoutMs: number): Promise<void> {
    return this.c.connect(timeoutMs);
  }

  close(): void {
    this.c.close();
  }

  queryStatus(): Promise<StatusInfo> {
    return this.c.execute<StatusInfo>('query-status');
  }

  async stop(): Promise<void> {
    await this.c.execute('stop');
  }

  async cont(): Promise<void> {
    await this.c.execute('cont');
  }

  async quit(timeoutMs: number): Promise<void> {
    await this.c.execute('quit', undefined, timeoutMs);
  }

  queryHotpluggableCpus(): Promise<HotpluggableCpu[]> {
    return this.c.execute<HotpluggableCpu[]>('query-hotpluggable-cpus');
  }

  queryCpusFast(): Promise<CpuInfoFast[]> {
    return this.c.execute<CpuInfoFast[]>('query-cpus-fast');
  }

  queryMemoryDevices(): Promise<MemoryDeviceInfo[]> {
    return this.c.execute<MemoryDeviceInfo[]>('query-memory-devices');
  }

  async deviceAdd(driver: string, id: string, props: HotpluggableCpu['props']): Promise<void> {
    await this.c.execute('device_add', { driver, id, ...props });
  }

  async deviceDel(id: string): Promise<void> {
    await this.c.execute('device_del', { id });
  }

  async setRequestedSize(deviceId: string, bytes: number): Promise<void> {
    await this.c.execute('qom-set', { path: `/machine/peripheral/${deviceId}`, property: 'requested-size', value: bytes });
  }

  async migrate(uri: string): Promise<void> {
    await this.c.execute('migrate', { uri });
  }

  queryMigrate(): Promise<MigrationInfo> {
    return this.c.execute<MigrationInfo>('query-migrate');
  }

  async migrateCancel(): Promise<void> {
    await this.c.execute('migrate_cancel');
  }

  async migrateIncoming(uri: string): Promise<void> {
    await this.c.execute('migrate-incoming', { uri });
  }

  waitEvent(names: string[], match: (e: QmpEvent) => boolean, timeoutMs: number): { promise: Promise<QmpEvent>; cancel: () => void } {
    return this.c.waitEvent(names, match, timeoutMs);
  }
}

export const realQmp: QmpFactory = (path) => new Qmp(path);
