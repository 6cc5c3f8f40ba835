// ttrpc's own two messages, Request and Response (with google.rpc.Status), in protobuf
// wire format. Written out by hand: they are small, and a decoder that checks every
// length against what is left is what an untrusted peer calls for.

export interface TtrpcRequest {
  service: string;
  method: string;
  payload: Buffer;
  timeoutNano: bigint;
  metadata: { key: string; value: string }[];
}

export interface TtrpcStatus {
  code: number;
  message: string;
}

export interface TtrpcResponse {
  status: TtrpcStatus;
  payload: Buffer;
}

export class WireError extends Error {
  readonly code = 'TTRPC_BAD_MESSAGE';
}

// ---- writing ----

function varint(out: number[], v: bigint): void {
  let x = BigInt.asUintN(64, v); // negative int64/int32 are ten bytes, as protobuf says
  while (x >= 0x80n) {
    out.push(Number(x & 0x7fn) | 0x80);
    x >>= 7n;
  }
  out.push(Number(x));
}

/** Writes protobuf fields in order (proto3: zero and empty values are left out unless `always`). */
export class ProtoWriter {
  private readonly parts: Buffer[] = [];
  private head(field: number, wire: number): void {
    const b: number[] = [];
    varint(b, BigInt((field << 3) | wire));
    this.parts.push(Buffer.from(b));
  }
  uint(field: number, v: number | bigint): this {
    if (v === 0 || v === 0n) return this; // proto3: defaults are not written
    this.head(field, 0);
    const b: number[] = [];
    varint(b, BigInt(v));
    this.parts.push(Buffer.from(b));
    return this;
  }
  bytes(field: number, v: Buffer | string, always = false): this {
    const buf = typeof v === 'string' ? Buffer.from(v, 'utf8') : v;
    if (buf.length === 0 && !always) return this;
    this.head(field, 2);
    const b: number[] = [];
    varint(b, BigInt(buf.length));
    this.parts.push(Buffer.from(b), buf);
    return this;
  }
  done(): Buffer {
    return Buffer.concat(this.parts);
  }
}

export function encodeRequest(r: TtrpcRequest): Buffer {
  const w = new ProtoWriter().bytes(1, r.service).bytes(2, r.method).bytes(3, r.payload).uint(4, r.timeoutNano);
  for (const kv of r.metadata) w.bytes(5, new ProtoWriter().bytes(1, kv.key).bytes(2, kv.value).done(), true);
  return w.done();
}

export function encodeResponse(r: TtrpcResponse): Buffer {
  // The status is always present: Go's client reads a missing one as OK, ours too, but be explicit.
  const status = new ProtoWriter().uint(1, r.status.code).bytes(2, r.status.message).done();
  return new ProtoWriter().bytes(1, status, true).bytes(2, r.payload).done();
}

// ---- reading ----

type Field = { n: number; wire: 0; v: bigint } | { n: number; wire: 2; v: Buffer };

function* fields(buf: Buffer): Generator<Field> {
  let i = 0;
  const readVarint = (): bigint => {
    let v = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (i >= buf.length) throw new WireError('truncated varint');
      const b = buf[i++]!;
      v |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return BigInt.asUintN(64, v);
    }
    throw new WireError('varint longer than 10 bytes');
  };
  while (i < buf.length) {
    const key = readVarint();
    const n = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (n === 0) throw new WireError('field number 0');
    if (wire === 0) yield { n, wire, v: readVarint() };
    else if (wire === 2) {
      const len = readVarint();
      if (len > BigInt(buf.length - i)) throw new WireError(`field ${n}: length ${len} past the end of the message`);
      yield { n, wire, v: buf.subarray(i, i + Number(len)) };
      i += Number(len);
    } else if (wire === 1) {
      if (i + 8 > buf.length) throw new WireError('truncated fixed64');
      i += 8; // unknown fixed64: skipped
    } else if (wire === 5) {
      if (i + 4 > buf.length) throw new WireError('truncated fixed32');
      i += 4;
    } else throw new WireError(`field ${n}: unsupported wire type ${wire}`);
  }
}

const str = (f: Field, what: string): string => {
  if (f.wire !== 2) throw new WireError(`${what}: expected a length-delimited field`);
  return f.v.toString('utf8');
};
// A copy: the frame's buffer is not kept alive by a payload someone holds on to.
const bytes = (f: Field, what: string): Buffer => {
  if (f.wire !== 2) throw new WireError(`${what}: expected a length-delimited field`);
  return Buffer.from(f.v);
};
const num = (f: Field, what: string): bigint => {
  if (f.wire !== 0) throw new WireError(`${what}: expected a varint`);
  return f.v;
};

export function decodeRequest(buf: Buffer): TtrpcRequest {
  const r: TtrpcRequest = { service: '', method: '', payload: Buffer.alloc(0), timeoutNano: 0n, metadata: [] };
  for (const f of fields(buf)) {
    if (f.n === 1) r.service = str(f, 'service');
    else if (f.n === 2) r.method = str(f, 'method');
    else if (f.n === 3) r.payload = bytes(f, 'payload');
    else if (f.n === 4) r.timeoutNano = BigInt.asIntN(64, num(f, 'timeout_nano'));
    else if (f.n === 5) {
      if (f.wire !== 2) throw new WireError('metadata: expected a message');
      const kv = { key: '', value: '' };
      for (const g of fields(f.v)) {
        if (g.n === 1) kv.key = str(g, 'metadata key');
        else if (g.n === 2) kv.value = str(g, 'metadata value');
      }
      r.metadata.push(kv);
    }
  }
  return r;
}

export function decodeResponse(buf: Buffer): TtrpcResponse {
  const r: TtrpcResponse = { status: { code: 0, message: '' }, payload: Buffer.alloc(0) };
  for (const f of fields(buf)) {
    if (f.n === 1) {
      if (f.wire !== 2) throw new WireError('status: expected a message');
      for (const g of fields(f.v)) {
        if (g.n === 1) r.status.code = Number(BigInt.asIntN(32, num(g, 'status code')));
        else if (g.n === 2) r.status.message = str(g, 'status message');
      }
    } else if (f.n === 2) r.payload = bytes(f, 'payload');
  }
  return r;
}
