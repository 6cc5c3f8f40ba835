import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Code, decodeRequest, decodeResponse, encodeFrame, encodeRequest, encodeResponse, FrameReader, HEADER_LENGTH, TtrpcClient, TtrpcError, TtrpcServer,
  TYPE_REQUEST, WireError, type MethodCodec,
} from './index.ts';

// JSON stands in for protobuf in the payloads: the framing and the envelopes are what is tested.
const json: MethodCodec & { requestSerialize(v: unknown): Buffer; responseDeserialize(b: Buffer): unknown } = {
  requestDeserialize: (b) => JSON.parse(b.toString() || '{}'),
  responseSerialize: (v) => Buffer.from(JSON.stringify(v)),
  requestSerialize: (v) => Buffer.from(JSON.stringify(v)),
  responseDeserialize: (b) => JSON.parse(b.toString()),
};

const dir = mkdtempSync(join(tmpdir(), 'lodger-ttrpc-'));
let n = 0;

async function serve(max?: { maxMessage?: number; maxInFlight?: number }): Promise<{ server: TtrpcServer; path: string; release: () => void }> {
  const path = join(dir, `s${n++}.sock`);
  let release = (): void => {};
  const held = new Promise<void>((r) => { release = r; });
  const server = new TtrpcServer(max);
  server.register('test.v1.Echo', { Echo: json, Hold: json, Fail: json, Throw: json }, {
    Echo: (req: { text: string }) => ({ text: req.text.toUpperCase() }),
    Hold: async () => { await held; return { held: true }; },
    Fail: () => { throw new TtrpcError(Code.NOT_FOUND, 'no such thing'); },
    Throw: () => { throw new Error('boom'); },
  });
  await server.listen(path);
  return { server, path, release };
}

/** A raw connection that collects the frames it is sent. */
async function raw(path: string): Promise<{ sock: Socket; next: () => Promise<{ streamId: number; code: number; message: string; payload: Buffer }> }> {
  const sock = connect(path);
  await new Promise((r) => sock.once('connect', r));
  const reader = new FrameReader();
  const queue: ReturnType<typeof decodeResponse>[] = [];
  const ids: number[] = [];
  let wake: (() => void) | null = null;
  sock.on('data', (c: Buffer) => {
    for (const ev of reader.push(c)) {
      if (ev.kind !== 'frame') continue;
      queue.push(decodeResponse(ev.frame.data));
      ids.push(ev.frame.streamId);
      wake?.();
    }
  });
  return {
    sock,
    async next() {
      while (!queue.length) await new Promise<void>((r) => { wake = r; });
      const res = queue.shift()!;
      return { streamId: ids.shift()!, code: res.status.code, message: res.status.message, payload: res.payload };
    },
  };
}

const request = (streamId: number, method: string, payload = Buffer.from('{"text":"hi"}')): Buffer =>
  encodeFrame(streamId, TYPE_REQUEST, encodeRequest({ service: 'test.v1.Echo', method, payload, timeoutNano: 0n, metadata: [{ key: 'k', value: 'v' }] }));

test('Request and Response round-trip through the wire format, with int64 and metadata', (t) => {
  const req = { service: 's', method: 'm', payload: Buffer.from([0, 1, 2]), timeoutNano: 5_000_000_000n, metadata: [{ key: 'a', value: 'b' }, { key: '', value: 'c' }] };
  t.deepEqual(decodeRequest(encodeRequest(req)), req);
  const res = { status: { code: Code.NOT_FOUND, message: 'gone' }, payload: Buffer.from('x') };
  t.deepEqual(decodeResponse(encodeResponse(res)), res);
  t.deepEqual(decodeResponse(encodeResponse({ status: { code: 0, message: '' }, payload: Buffer.alloc(0) })).status, { code: 0, message: '' });
});

test('malformed messages are refused with the reason, not read past their end', (t) => {
  t.throws(() => decodeRequest(Buffer.from([0x0a, 0x05, 0x61])), { instanceOf: WireError, message: /length 5 past the end/ });
  t.throws(() => decodeRequest(Buffer.from([0x20, 0xff, 0xff])), { instanceOf: WireError, message: /truncated varint/ });
  t.throws(() => decodeRequest(Buffer.from([0x20, ...Array(11).fill(0xff), 0x01])), { instanceOf: WireError, message: /longer than 10 bytes/ });
  t.throws(() => decodeRequest(Buffer.from([0x08, 0x01])), { instanceOf: WireError, message: /service: expected a length-delimited/ });
  t.throws(() => decodeRequest(Buffer.from([0x0b])), { instanceOf: WireError, message: /wire type 3/ });
});

test('the frame reader splits frames across chunks and never buffers an oversized message', (t) => {
  const reader = new FrameReader(16);
  const a = encodeFrame(1, 1, Buffer.from('hello'));
  const big = encodeFrame(3, 1, Buffer.alloc(1000, 7));
  const b = encodeFrame(5, 1, Buffer.from('world'));
  const all = Buffer.concat([a, big, b]);
  const events = [];
  for (let i = 0; i < all.length; i += 7) {
    events.push(...reader.push(all.subarray(i, i + 7)));
    t.true(reader.buffered <= HEADER_LENGTH + 16 + 7);
  }
  t.deepEqual(events.map((e) => (e.kind === 'frame' ? `${e.frame.streamId}:${e.frame.data.toString()}` : `oversized ${e.streamId} ${e.length}`)),
    ['1:hello', 'oversized 3 1000', '5:world']);
  t.false(reader.partial);
});

test('calls are answered on their own streams; a held call blocks none other; errors keep their status', async (t) => {
  const { server, path, release } = await serve();
  const client = await TtrpcClient.connect(path);
  const held = client.unary<{ held: boolean }>('test.v1.Echo', 'Hold', json, {});
  t.deepEqual(await client.unary('test.v1.Echo', 'Echo', json, { text: 'abc' }), { text: 'ABC' });
  const nf = await t.throwsAsync(client.unary('test.v1.Echo', 'Fail', json, {}), { instanceOf: TtrpcError });
  t.is(nf?.status, Code.NOT_FOUND);
  t.is(nf?.message, 'no such thing');
  const unknown = await t.throwsAsync(client.unary('test.v1.Echo', 'Nope', json, {}), { instanceOf: TtrpcError });
  t.is(unknown?.code, 'UNIMPLEMENTED');
  const thrown = await t.throwsAsync(client.unary('test.v1.Echo', 'Throw', json, {}), { instanceOf: TtrpcError });
  t.is(thrown?.code, 'UNKNOWN');
  t.is(thrown?.message, 'boom');
  release();
  t.deepEqual(await held, { held: true });
  client.close();
  await server.close();
});

test('a call that gets no answer fails with DEADLINE_EXCEEDED; a closed connection fails what is pending', async (t) => {
  const { server, path } = await serve();
  const client = await TtrpcClient.connect(path);
  const late = await t.throwsAsync(client.unary('test.v1.Echo', 'Hold', json, {}, { timeoutMs: 100 }), { instanceOf: TtrpcError });
  t.is(late?.code, 'DEADLINE_EXCEEDED');
  const pending = client.unary('test.v1.Echo', 'Hold', json, {});
  await server.close();
  const closed = await t.throwsAsync(pending, { instanceOf: TtrpcError });
  t.is(closed?.code, 'UNAVAILABLE');
  const after = await t.throwsAsync(client.unary('test.v1.Echo', 'Echo', json, { text: 'x' }), { instanceOf: TtrpcError });
  t.is(after?.code, 'UNAVAILABLE'); // the connection's end (reset or closed) fails later calls at once
});

test('an untrusted peer: oversized, even-stream, garbage and undecodable requests each get a status, and the connection goes on', async (t) => {
  const { server, path } = await serve({ maxMessage: 1024 });
  const c = await raw(path);
  // Oversized: the header claims 1 MiB; the body is discarded as it comes.
  const hdr = Buffer.alloc(HEADER_LENGTH);
  hdr.writeUInt32BE(1 << 20, 0);
  hdr.writeUInt32BE(7, 4);
  hdr.writeUInt8(TYPE_REQUEST, 8);
  c.sock.write(hdr);
  const over = await c.next();
  t.is(over.streamId, 7);
  t.is(over.code, Code.RESOURCE_EXHAUSTED);
  t.regex(over.message, /1048576 exceeds the maximum message size of 1024/);
  c.sock.write(Buffer.alloc(1 << 20, 0x41));
  c.sock.write(request(2, 'Echo'));
  const even = await c.next();
  t.is(even.streamId, 2);
  t.is(even.code, Code.INVALID_ARGUMENT);
  c.sock.write(encodeFrame(9, TYPE_REQUEST, Buffer.from([0x0a, 0x7f])));
  const garbage = await c.next();
  t.is(garbage.code, Code.INVALID_ARGUMENT);
  t.regex(garbage.message, /unmarshal request error/);
  c.sock.write(request(11, 'Echo', Buffer.from('{not json')));
  const bad = await c.next();
  t.is(bad.code, Code.INVALID_ARGUMENT);
  t.regex(bad.message, /bad request payload/);
  c.sock.write(encodeFrame(13, 3, Buffer.from('future frame type'))); // ignored
  c.sock.write(request(15, 'Echo'));
  const ok = await c.next();
  t.is(ok.streamId, 15);
  t.is(ok.code, Code.OK);
  t.deepEqual(JSON.parse(ok.payload.toString()), { text: 'HI' });
  c.sock.destroy();
  await server.close();
});

test('calls in progress per connection are bounded', async (t) => {
  const { server, path, release } = await serve({ maxInFlight: 2 });
  const c = await raw(path);
  c.sock.write(Buffer.concat([request(1, 'Hold'), request(3, 'Hold'), request(5, 'Hold')]));
  const refused = await c.next();
  t.is(refused.streamId, 5);
  t.is(refused.code, Code.RESOURCE_EXHAUSTED);
  release();
  t.deepEqual([(await c.next()).streamId, (await c.next()).streamId].sort(), [1, 3]);
  c.sock.destroy();
  await server.close();
});

test('a peer that closes mid-frame leaves the server serving others', async (t) => {
  const { server, path } = await serve();
  const c = await raw(path);
  c.sock.end(request(1, 'Echo').subarray(0, 12));
  const client = await TtrpcClient.connect(path);
  t.deepEqual(await client.unary('test.v1.Echo', 'Echo', json, { text: 'ok' }), { text: 'OK' });
  client.close();
  await server.close();
});

test('a client refuses an oversized response without buffering it', async (t) => {
  const { server, path } = await serve();
  const client = await TtrpcClient.connect(path, { maxMessage: 24 });
  const e = await t.throwsAsync(client.unary('test.v1.Echo', 'Echo', json, { text: 'a long enough answer' }), { instanceOf: TtrpcError });
  t.is(e?.code, 'RESOURCE_EXHAUSTED');
  t.deepEqual(await client.unary('test.v1.Echo', 'Echo', json, { text: '' }), { text: '' });
  client.close();
  await server.close();
});
