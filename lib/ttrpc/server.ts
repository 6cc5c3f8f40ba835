// A ttrpc server on a unix socket: unary calls, each answered on its own stream as soon
// as its handler settles (a call that blocks, like a shim's Wait, holds up no other).
// Every malformed request gets a status on its stream, as Go's server answers it.
import { rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { encodeFrame, FrameReader, MAX_MESSAGE, TYPE_REQUEST, TYPE_RESPONSE } from './frame.ts';
import { Code, TtrpcError } from './status.ts';
import { decodeRequest, encodeResponse, type TtrpcRequest, type TtrpcStatus } from './wire.ts';

/** How a method's messages are read and written (what @grpc/proto-loader gives per method). */
export interface MethodCodec {
  requestDeserialize(b: Buffer): unknown;
  responseSerialize(v: unknown): Buffer;
}

export interface CallContext {
  service: string;
  method: string;
  metadata: { key: string; value: string }[];
  /** The caller's deadline in ns from the request (0: none). */
  timeoutNano: bigint;
}

// Handlers take the decoded request; `any` because each method has its own message type.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Handler = (req: any, ctx: CallContext) => unknown;

export interface ServerOptions {
  /** Calls in progress per connection; past it a request is refused with RESOURCE_EXHAUSTED. */
  maxInFlight?: number;
  maxMessage?: number;
  log?: (m: string) => void;
}

interface Registered {
  codec: MethodCodec;
  handler: Handler;
}

export class TtrpcServer {
  private readonly methods = new Map<string, Registered>();
  private readonly conns = new Set<Socket>();
  private server: Server | null = null;

  constructor(private readonly o: ServerOptions = {}) {}

  /** Adds a service: every handler must have its codec (a missing one is a programming error). */
  register(service: string, codecs: Record<string, MethodCodec>, handlers: Record<string, Handler>): void {
    for (const [name, handler] of Object.entries(handlers)) {
      const codec = codecs[name];
      if (!codec) throw new Error(`ttrpc: ${service} has no method ${name}`);
      this.methods.set(`${service}/${name}`, { codec, handler });
    }
  }

  get connections(): number {
    return this.conns.size;
  }

  listen(path: string): Promise<void> {
    rmSync(path, { force: true });
    const server = createServer((sock) => this.serve(sock));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
  }

  /** Stops listening and ends every connection. */
  close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    const s = this.server;
    this.server = null;
    return new Promise((resolve) => (s ? s.close(() => resolve()) : resolve()));
  }

  private serve(sock: Socket): void {
    this.conns.add(sock);
    const reader = new FrameReader(this.o.maxMessage ?? MAX_MESSAGE);
    let inFlight = 0;
    const max = this.o.maxInFlight ?? 256;
    const reply = (streamId: number, status: TtrpcStatus, payload: Buffer = Buffer.alloc(0)): void => {
      if (!sock.destroyed && sock.writable) sock.write(encodeFrame(streamId, TYPE_RESPONSE, encodeResponse({ status, payload })));
    };
    sock.on('data', (chunk: Buffer) => {
      for (const ev of reader.push(chunk)) {
        if (ev.kind === 'oversized') {
          reply(ev.streamId, { code: Code.RESOURCE_EXHAUSTED, message: `message length ${ev.length} exceeds the maximum message size of ${this.o.maxMessage ?? MAX_MESSAGE}` });
          continue;
        }
        const { frame } = ev;
        if (frame.type !== TYPE_REQUEST) continue; // ignored for future compatibility, as Go's server does
        let req: TtrpcRequest;
        try {
          req = decodeRequest(frame.data);
        } catch (e) {
          reply(frame.streamId, { code: Code.INVALID_ARGUMENT, message: `unmarshal request error: ${(e as Error).message}` });
          continue;
        }
        if (frame.streamId % 2 !== 1) {
          reply(frame.streamId, { code: Code.INVALID_ARGUMENT, message: 'StreamID must be odd for client initiated streams' });
          continue;
        }
        if (inFlight >= max) {
          reply(frame.streamId, { code: Code.RESOURCE_EXHAUSTED, message: `more than ${max} calls in progress on this connection` });
          continue;
        }
        inFlight++;
        void this.call(req).then(({ status, payload }) => {
          inFlight--;
          reply(frame.streamId, status, payload);
        });
      }
    });
    sock.on('error', (e) => this.o.log?.(`ttrpc connection: ${e.message}`));
    sock.on('close', () => this.conns.delete(sock));
  }

  private async call(req: TtrpcRequest): Promise<{ status: TtrpcStatus; payload?: Buffer }> {
    const ctx: CallContext = { service: req.service, method: req.method, metadata: req.metadata, timeoutNano: req.timeoutNano };
    const m = this.methods.get(`${req.service}/${req.method}`);
    try {
      if (!m) throw new TtrpcError(Code.UNIMPLEMENTED, `service ${req.service}: method ${req.method} not implemented`);
      let decoded: unknown;
      try {
        decoded = m.codec.requestDeserialize(req.payload);
      } catch (e) {
        throw new TtrpcError(Code.INVALID_ARGUMENT, `${req.service}/${req.method}: bad request payload: ${(e as Error).message}`);
      }
      const res = await m.handler(decoded, ctx);
      return { status: { code: Code.OK, message: '' }, payload: m.codec.responseSerialize(res ?? {}) };
    } catch (e) {
      // A handler's own error that is no TtrpcError is UNKNOWN, as in Go's ttrpc.
      return { status: e instanceof TtrpcError ? { code: e.status, message: e.message } : { code: Code.UNKNOWN, message: e instanceof Error ? e.message : String(e) } };
    }
  }
}
