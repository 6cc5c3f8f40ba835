// Suspend to disk and back: QEMU streams the VM to a socket of ours (an exec: migration
// would need a shell, which its seccomp sandbox forbids) and we write the stream to a
// file; a new QEMU started with -incoming defer reads it back.
import { chownSync, createReadStream, createWriteStream, existsSync, statSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import * as net from 'node:net';
import type { SuspendReport } from '../contract.ts';
import { SandboxError } from '../errors.ts';
import type { AgentConnection } from './agent.ts';
import type { QmpConnection } from './qmp.ts';
import type { Phase } from './states.ts';
import type { VmmProcess } from './vmm.ts';
import { until, within } from './wait.ts';

/** What the sandbox lends suspend() and restore(). */
export interface SuspendHost {
  id: string;
  log(msg: string): void;
  /** The connections of a live guest; throws when there is none. */
  live(): { qmp: QmpConnection; agent: AgentConnection };
  phase(): Phase;
  to(p: Phase): void;
  vmm(): VmmProcess | null;
  spawnVmm(extra: string[]): void;
  /** Throws unless the new VMM is jailed as it should be (before the VM is loaded into it). */
  checkJail(): void;
  connectQmp(): QmpConnection;
  agent(): AgentConnection;
  /** `p`, or the VMM's death as an error, whichever comes first. */
  raceExit<T>(p: Promise<T>): Promise<T>;
  /** The sandbox has ended (its VMM died or it was stopped). */
  ended(): boolean;
}

const SAVE_TIMEOUT_MS = 300_000;
/**
 * Loading a saved VM may take this long before the restoring QEMU is given up (and the
 * saved state kept for a retry): 30 s, plus the file read at 10 MiB/s, a tenth of what
 * a slow disk does. Seen: a restoring QEMU alive but never done, and resume() with it.
 */
export function loadDeadlineMs(bytes: number): number {
  return 30_000 + Math.ceil(bytes / (10 * 1048576)) * 1000;
}

export class Snapshot {
  /** The guest was paused when it was saved, so it comes back paused. */
  pausedWhenSaved = false;

  /** `owner`: the jailed VMM's uid/gid, which must be able to connect to our socket. */
  constructor(readonly path: string, private readonly outSocket: string, private readonly inSocket: string,
    private readonly owner: () => { uid: number; gid: number } | null = () => null) {}

  get exists(): boolean {
    return existsSync(this.path);
  }

  /** Where the state is written until it is whole: only a complete save ever has `path`'s name (an owner may die mid-save). */
  private get partPath(): string {
    return `${this.path}.part`;
  }

  async drop(): Promise<void> {
    await rm(this.path, { force: true });
    await rm(this.partPath, { force: true });
  }

  /** Saves the VM to disk and ends its VMM, giving its memory back to the host. */
  async suspend(h: SuspendHost): Promise<SuspendReport> {
    const { qmp, agent } = h.live();
    const t0 = performance.now();
    const wasPaused = h.phase() === 'paused';
    if (wasPaused) await qmp.cont();
    h.to('suspending');
    // What the guest has written to /output reaches the disk image first, so a sandbox
    // that is never resumed still gives its output back.
    await agent.sync().catch(() => {});
    let bytes: number;
    try {
      bytes = await this.save(qmp);
    } catch (e) {
      await qmp.cont().catch(() => {});
      if (h.phase() === 'suspending') h.to(wasPaused ? 'paused' : 'running');
      if (wasPaused) await qmp.stop().catch(() => {});
      throw new SandboxError('SANDBOX_SUSPEND_FAILED', `sandbox ${h.id}: suspend to disk failed: ${(e as Error).message}`, { cause: e });
    }
    this.pausedWhenSaved = wasPaused;
    const vmm = h.vmm()!;
    vmm.expect('retire');
    agent.detach();
    await qmp.quit(2000).catch(() => {});
    qmp.close();
    if (!(await within(vmm.gone, 5000))) vmm.kill();
    await vmm.gone;
    h.to('suspended');
    const ms = performance.now() - t0;
    h.log(`suspended to disk: ${(bytes / 1048576).toFixed(0)} MiB in ${ms.toFixed(0)} ms`);
    return { bytes, ms };
  }

  /** Starts a new VMM that takes the saved VM back from disk and lets it run on. */
  async restore(h: SuspendHost): Promise<void> {
    h.to('resuming');
    const t0 = performance.now();
    try {
      h.spawnVmm(['-S', '-incoming', 'defer']);
      // Until the VM is loaded, the new QEMU's death is a failed restore, not the sandbox's end: the saved state is intact.
      const vmm = h.vmm()!;
      vmm.expect('retire');
      const limitMs = loadDeadlineMs(statSync(this.path).size);
      let late = false;
      const deadline = setTimeout(() => { late = true; vmm.kill(); }, limitMs);
      const died = vmm.gone.then((e) => {
        throw new SandboxError('SANDBOX_VMM_EXITED', late ? `the VM was not loaded in ${limitMs} ms` : `the restoring QEMU exited (${e.signal ?? `code ${e.code}`})`);
      });
      died.catch(() => {});
      const loading = <T>(p: Promise<T>): Promise<T> => Promise.race([p, died]);
      const qmp = h.connectQmp();
      try {
        await loading(qmp.connect(10_000));
        h.checkJail();
        await loading(this.load(qmp));
      } finally {
        clearTimeout(deadline);
      }
      vmm.expect('run');
      if (!vmm.alive()) throw new SandboxError('SANDBOX_VMM_EXITED', 'the restoring QEMU exited');
      await qmp.cont();
      await h.raceExit(h.agent().reconnect(30_000));
      if (this.pausedWhenSaved) await qmp.stop();
      h.to(this.pausedWhenSaved ? 'paused' : 'running');
      await this.drop();
      h.log(`resumed from disk in ${(performance.now() - t0).toFixed(0)} ms (pid ${h.vmm()?.pid})`);
    } catch (e) {
      // The saved state stays on disk: the job is not lost, a later resume() can retry.
      const vmm = h.vmm();
      if (vmm && !h.ended()) {
        vmm.expect('retire');
        vmm.kill();
        await vmm.gone;
      }
      if (h.phase() === 'resuming') h.to('suspended');
      throw new SandboxError('SANDBOX_RESUME_FAILED', `sandbox ${h.id}: resume from disk failed: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Saves the running VM; QEMU leaves it stopped. Returns the bytes written. */
  private async save(qmp: QmpConnection): Promise<number> {
    const server = net.createServer();
    let bytes = 0;
    const received = new Promise<void>((resolve, reject) => {
      server.once('connection', (c) => {
        const out = createWriteStream(this.partPath);
        c.on('data', (b: Buffer) => { bytes += b.length; });
        c.on('error', reject);
        out.on('error', reject);
        out.on('finish', () => resolve());
        c.pipe(out);
      });
    });
    received.catch(() => {});
    await rm(this.outSocket, { force: true });
    await new Promise<void>((resolve, reject) => server.listen(this.outSocket, resolve).once('error', reject));
    const owner = this.owner();
    if (owner) chownSync(this.outSocket, owner.uid, owner.gid);
    try {
      await qmp.migrate(`unix:${this.outSocket}`);
      await until(async () => {
        const m = await qmp.queryMigrate();
        if (m.status === 'failed' || m.status === 'cancelled') throw new SandboxError('SANDBOX_SUSPEND_FAILED', `migration to disk ${m.status}: ${m['error-desc'] ?? ''}`);
        return m.status === 'completed';
      }, SAVE_TIMEOUT_MS, 'saving the VM to disk did not complete', 'SANDBOX_SUSPEND_FAILED');
      await received;
      await rename(this.partPath, this.path);
      return bytes;
    } catch (e) {
      await qmp.migrateCancel().catch(() => {});
      await this.drop();
      throw e;
    } finally {
      server.close();
    }
  }

  /** Feeds the saved VM to a QEMU waiting with -incoming defer; resolves once it is loaded (still stopped). */
  private async load(qmp: QmpConnection): Promise<void> {
    await qmp.migrateIncoming(`unix:${this.inSocket}`);
    await new Promise<void>((resolve, reject) => {
      const c = net.connect(this.inSocket);
      c.once('error', reject);
      c.once('connect', () => {
        const src = createReadStream(this.path);
        src.once('error', reject);
        src.pipe(c);
        c.once('finish', () => resolve());
      });
    });
    await until(async () => (await qmp.queryStatus()).status !== 'inmigrate', SAVE_TIMEOUT_MS, 'restoring the VM from disk did not complete', 'SANDBOX_RESUME_FAILED');
  }
}
