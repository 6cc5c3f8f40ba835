// Typed async QMP client: one command in flight per id, each with a timeout; events
// fan out to listeners; every QMP error reaches the caller with the command that failed.
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { QmpCommandError, SandboxError } from './errors.ts';

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

interface Pending {
  command: string;
  args: unknown;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

// The QMP commands Lodger uses, with their argument and return shapes.
export interface HotpluggableCpu {
  type: string;
  'vcpus-count': number;
  props: { 'socket-id'?: number; 'core-id'?: number; 'thread-id'?: number; 'node-id'?: number; 'die-id'?: number };
  'qom-path'?: string;
}
export interface CpuInfoFast {
  'cpu-index': number;
  'qom-path': string;
  'thread-id': number;
  props?: HotpluggableCpu['props'];
  target: string;
}
export interface MemoryDeviceInfo {
  type: string;
  data: { id?: string; memaddr: number; 'requested-size'?: number; size: number; 'max-size'?: number; node?: number; memdev: string };
}
export interface StatusInfo {
  running: boolean;
  singlestep?: boolean;
  status: string;
}

export class QmpClient extends EventEmitter {
  private sock: net.Socket | null = null;
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closedErr: Error | null = null;

  constructor(private readonly path: string, private readonly defaultTimeoutMs = 10_000) {
    super();
  }

  /** Connects, reads the greeting and leaves capabilities negotiation mode. */
  async connect(timeoutMs = 5_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    // QEMU creates the socket a moment after it starts: retry until it listens.
    for (;;) {
      try {
        await this.open();
        break;
      } catch (e) {
        if (Date.now() > deadline) throw new SandboxError('QMP_TIMEOUT', `QMP socket ${this.path} did not accept a connection`, { cause: e });
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    await this.execute('qmp_capabilities');
  }

  private open(): Promise<void> {
    return new Promise((resolve, reject) => {
      const sock = net.connect(this.path);
      let greeted = false;
      sock.setEncoding('utf8');
      sock.once('error', (e: Error) => { if (!greeted) reject(e); });
      sock.on('data', (chunk: string) => {
        this.buf += chunk;
        let nl: number;
        while ((nl = this.buf.indexOf('\n')) >= 0) {
          const line = this.buf.slice(0, nl).trim();
          this.buf = this.buf.slice(nl + 1);
          if (!line) continue;
          let msg: Record<string, unknown>;
          try {
            msg = JSON.parse(line) as Record<string, unknown>;
          } catch {
            continue; // QEMU only writes JSON here; ignore a torn line rather than die
          }
          if (!greeted && 'QMP' in msg) {
            greeted = true;
            this.sock = sock;
            // Only a connection that got as far as the greeting can fail the client.
            sock.on('close', () => this.failAll(new SandboxError('QMP_CLOSED', `QMP connection ${this.path} closed`)));
            sock.on('error', (e: Error) => this.failAll(new SandboxError('QMP_CLOSED', `QMP connection ${this.path}: ${e.message}`, { cause: e })));
            resolve();
            continue;
          }
          this.dispatch(msg);
        }
      });
    });
  }

  private dispatch(msg: Record<string, unknown>): void {
    if (typeof msg.event === 'string') {
      this.emit('event', msg as unknown as QmpEvent);
      return;
    }
    const id = String(msg.id ?? '');
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('error' in msg) {
      const err = msg.error as { class?: string; desc?: string };
      p.reject(new QmpCommandError(p.command, err.class ?? 'GenericError', err.desc ?? 'unknown error', p.args));
    } else {
      p.resolve(msg.return);
    }
  }

  private failAll(err: Error): void {
    if (!this.closedErr) this.closedErr = err;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new SandboxError('QMP_CLOSED', `QMP ${p.command}: ${err.message}`, { cause: err }));
      this.pending.delete(id);
    }
    this.emit('close', err);
  }

  get closed(): boolean {
    return this.closedErr !== null;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = this.defaultTimeoutMs): Promise<T> {
    if (this.closedErr) return Promise.reject(new SandboxError('QMP_CLOSED', `QMP ${command}: connection closed`, { cause: this.closedErr }));
    const sock = this.sock;
    if (!sock) return Promise.reject(new SandboxError('QMP_CLOSED', `QMP ${command}: not connected`));
    const id = `l${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new SandboxError('QMP_TIMEOUT', `QMP ${command} got no answer in ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, args, resolve: resolve as (v: unknown) => void, reject, timer });
      sock.write(`${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`);
    });
  }

  /**
   * Resolves with the first event `name` for which `match` holds, or rejects after
   * `timeoutMs`. Register it before issuing the command that triggers the event.
   */
  waitEvent(name: string | string[], match: (e: QmpEvent) => boolean, timeoutMs: number): { promise: Promise<QmpEvent>; cancel: () => void } {
    const names = Array.isArray(name) ? name : [name];
    let cancel = (): void => {};
    const promise = new Promise<QmpEvent>((resolve, reject) => {
      const onEvent = (e: QmpEvent): void => {
        if (names.includes(e.event) && match(e)) {
          done();
          resolve(e);
        }
      };
      const onClose = (err: Error): void => {
        done();
        reject(new SandboxError('QMP_CLOSED', `waiting for ${names.join('/')}: ${err.message}`, { cause: err }));
      };
      const timer = setTimeout(() => {
        done();
        reject(new SandboxError('QMP_TIMEOUT', `no ${names.join('/')} event within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      cancel = done;
      this.on('event', onEvent);
      this.once('close', onClose);
    });
    return { promise, cancel };
  }

  close(): void {
    this.sock?.destroy();
    this.sock = null;
  }
}
