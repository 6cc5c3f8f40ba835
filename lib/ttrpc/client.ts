// A ttrpc client on a unix socket: unary calls on odd stream ids, each with a deadline
// (sent as timeout_nano, and enforced here: no call waits forever on a silent peer).
import { connect as netConnect, type Socket } from 'node:net';
import { encodeFrame, FrameReader, MAX_MESSAGE, TYPE_REQUEST, TYPE_RESPONSE } from './frame.ts';
import { Code, TtrpcError } from './status.ts';
import { decodeResponse, encodeRequest } from './wire.ts';

/** How a method's messages are written and read (what @grpc/proto-loader gives per method). */
export interface ClientCodec {
  requestSerialize(v: unknown): Buffer;
  responseDeserialize(b: Buffer): unknown;
}

interface Pending {
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class TtrpcClient {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private closedBy: Error | null = null;

  private constructor(private readonly sock: Socket, private readonly path: string, maxMessage: number) {
    const reader = new FrameReader(maxMessage);
    sock.on('data', (chunk: Buffer) => {
      for (const ev of reader.push(chunk)) {
        const id = ev.kind === 'frame' ? ev.frame.streamId : ev.streamId;
        const p = this.pending.get(id);
        if (!p) continue; // a late answer to a call that timed out
        if (ev.kind === 'oversized') {
          this.settle(id, new TtrpcError(Code.RESOURCE_EXHAUSTED, `response of ${ev.length} bytes exceeds the maximum message size of ${maxMessage}`));
          continue;
        }
        if (ev.frame.type !== TYPE_RESPONSE) continue;
        try {
          const res = decodeResponse(ev.frame.data);
          this.settle(id, res.status.code === Code.OK ? res.payload : new TtrpcError(res.status.code, res.status.message));
        } catch (e) {
          this.settle(id, new TtrpcError(Code.INTERNAL, `bad response from ${path}: ${(e as Error).message}`));
        }
      }
    });
    sock.on('error', (e) => this.fail(new TtrpcError(Code.UNAVAILABLE, `${path}: ${e.message}`)));
    sock.on('close', () => this.fail(new TtrpcError(Code.UNAVAILABLE, `${path}: connection closed`)));
  }

  static connect(path: string, o: { timeoutMs?: number; maxMessage?: number } = {}): Promise<TtrpcClient> {
    return new Promise((resolve, reject) => {
      const sock = netConnect(path);
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new TtrpcError(Code.DEADLINE_EXCEEDED, `${path}: not connected within ${o.timeoutMs ?? 10_000} ms`));
      }, o.timeoutMs ?? 10_000);
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.removeAllListeners('error');
        resolve(new TtrpcClient(sock, path, o.maxMessage ?? MAX_MESSAGE));
      });
      sock.once('error', (e) => {
        clearTimeout(timer);
        reject(new TtrpcError(Code.UNAVAILABLE, `${path}: ${e.message}`, { cause: e }));
      });
    });
  }

  /** One call: resolves with the response payload, rejects with a TtrpcError. */
  call(service: string, method: string, payload: Buffer, o: { timeoutMs?: number; metadata?: { key: string; value: string }[] } = {}): Promise<Buffer> {
    if (this.closedBy) return Promise.reject(this.closedBy);
    const timeoutMs = o.timeoutMs ?? 30_000;
    const id = this.nextId;
    this.nextId = (this.nextId + 2) >>> 0 || 1; // stays odd; wraps after 2^31 calls
    const frame = encodeFrame(id, TYPE_REQUEST, encodeRequest({ service, method, payload, timeoutNano: BigInt(timeoutMs) * 1_000_000n, metadata: o.metadata ?? [] }));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.settle(id, new TtrpcError(Code.DEADLINE_EXCEEDED, `${service}/${method}: no answer within ${timeoutMs} ms`)), timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.sock.write(frame);
    });
  }

  /** A call with its messages written and read by the method's codec. */
  async unary<T>(service: string, method: string, codec: ClientCodec, req: unknown, o?: { timeoutMs?: number }): Promise<T> {
    return codec.responseDeserialize(await this.call(service, method, codec.requestSerialize(req), o)) as T;
  }

  close(): void {
    this.fail(new TtrpcError(Code.UNAVAILABLE, `${this.path}: client closed`));
    this.sock.destroy();
  }

  private settle(id: number, r: Buffer | Error): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (r instanceof Error) p.reject(r);
    else p.resolve(r);
  }

  private fail(e: Error): void {
    this.closedBy ??= e;
    for (const id of [...this.pending.keys()]) this.settle(id, e);
  }
}
