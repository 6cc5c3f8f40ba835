import test from 'ava';
import fc from 'fast-check';
import {
  decodeExit, decodeStats, encodeExec, encodeFrame, encodeStats, FrameDecoder, FrameType, HEADER_BYTES,
} from './protocol.ts';

const types = Object.values(FrameType).filter((v): v is number => typeof v === 'number');

test('a frame round-trips through the decoder, even one byte at a time', (t) => {
  const frame = encodeFrame(FrameType.Stdout, 42, Buffer.from('hello'));
  const d = new FrameDecoder();
  const got = [...frame].flatMap((b) => d.push(Buffer.from([b])));
  t.is(got.length, 1);
  t.is(got[0]!.type, FrameType.Stdout);
  t.is(got[0]!.id, 42);
  t.is(got[0]!.payload.toString(), 'hello');
  t.is(d.discarded, 0);
});

test('garbage before, between and after frames is skipped and every frame is found', (t) => {
  fc.assert(fc.property(
    fc.array(fc.record({ junk: fc.uint8Array({ maxLength: 64 }), type: fc.constantFrom(...types), id: fc.nat(), body: fc.uint8Array({ maxLength: 300 }) }), { maxLength: 8 }),
    fc.uint8Array({ maxLength: 64 }),
    (items, trailing) => {
      const d = new FrameDecoder();
      const wire = Buffer.concat([...items.flatMap((i) => [Buffer.from(i.junk), encodeFrame(i.type, i.id, Buffer.from(i.body))]), Buffer.from(trailing)]);
      const frames = d.push(wire);
      // Junk can't fake a frame without two valid CRC32s; expect exactly ours, in order.
      t.deepEqual(frames.map((f) => [f.type, f.id, f.payload.toString('hex')]), items.map((i) => [i.type, i.id >>> 0, Buffer.from(i.body).toString('hex')]));
    }), { numRuns: 300 });
});

test('a truncated frame does not swallow the frames after it once it goes stale', (t) => {
  const good = encodeFrame(FrameType.Pong, 7, Buffer.from('after'));
  const truncated = encodeFrame(FrameType.Stdout, 1, Buffer.alloc(1000, 1)).subarray(0, HEADER_BYTES + 10);
  const d = new FrameDecoder();
  let frames = d.push(Buffer.concat([truncated, good]));
  t.is(frames.length, 0, 'the decoder first waits for the rest of the truncated frame');
  for (let i = 0; i < 100 && frames.length === 0 && d.pending > 0; i++) frames = d.expireStale();
  t.is(frames.length, 1);
  t.is(frames[0]!.id, 7);
  t.is(frames[0]!.payload.toString(), 'after');
});

test('random bytes never throw and never yield a frame with a bad checksum', (t) => {
  fc.assert(fc.property(fc.array(fc.uint8Array({ maxLength: 200 }), { maxLength: 20 }), (chunks) => {
    const d = new FrameDecoder();
    for (const c of chunks) d.push(Buffer.from(c));
    while (d.pending > 0) d.expireStale();
    return true;
  }), { numRuns: 500 });
  t.pass();
});

test('exec payload layout: flags, argc, envc, then NUL-terminated cwd, argv, env', (t) => {
  const p = encodeExec({ argv: ['sh', '-c', 'x'], env: { A: '1' }, cwd: '/w', chroot: true });
  t.is(p.readUInt32LE(0), 1);
  t.is(p.readUInt32LE(4), 3);
  t.is(p.readUInt32LE(8), 1);
  t.is(p.subarray(12).toString(), '/w\0sh\0-c\0x\0A=1\0');
  t.throws(() => encodeExec({ argv: ['a\0b'], env: {}, cwd: '/', chroot: false }), { instanceOf: TypeError });
  // With a user: flag bit 1, then uid and gid before the strings.
  const u = encodeExec({ argv: ['id'], env: {}, cwd: '/', chroot: true, user: { uid: 1000, gid: 100 } });
  t.is(u.readUInt32LE(0), 3);
  t.is(u.readUInt32LE(12), 1000);
  t.is(u.readUInt32LE(16), 100);
  t.is(u.subarray(20).toString(), '/\0id\0');
});

test('stats and exit payloads decode', (t) => {
  const s = { cpusOnline: 3, cpusPresent: 4, memTotalKiB: 1 << 20, memAvailableKiB: 5000, load1: 1.5, load5: 0.25, load15: 0, uptimeMs: 1234 };
  t.deepEqual(decodeStats(encodeStats(s)), s);
  const exit = Buffer.alloc(8);
  exit.writeInt32LE(-1, 0);
  exit.writeInt32LE(9, 4);
  t.deepEqual(decodeExit(exit), { code: null, signal: 9 });
  exit.writeInt32LE(3, 0);
  exit.writeInt32LE(0, 4);
  t.deepEqual(decodeExit(exit), { code: 3, signal: null });
  t.throws(() => decodeStats(Buffer.alloc(3)), { message: /stats frame/ });
});
