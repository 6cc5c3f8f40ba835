// The C agent's own parser, built for the host with ASan/UBSan, fed garbage and
// truncated frames: it must not crash and must still find the valid frames.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { encodeFrame, FrameType, HEADER_BYTES } from '../agent/index.ts';
import { defaultHostPaths } from '../host.ts';
import { hostAgentBinary } from '../image/index.ts';

const host = defaultHostPaths({ cacheDir: process.env.LODGER_CACHE_DIR ?? join(tmpdir(), 'lodger-test-cache') });
let agent = '';
test.before(async () => {
  agent = await hostAgentBinary(host);
});

function parse(input: Buffer): { frames: string[]; total: number; discarded: number } {
  const r = spawnSync(agent, ['--parse-stdin'], { input, encoding: 'utf8', env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=0' } });
  if (r.status !== 0) throw new Error(`agent parser exited ${r.status} ${r.signal}: ${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  const last = /frames=(\d+) discarded=(\d+)/.exec(lines.at(-1)!)!;
  return { frames: lines.slice(0, -1), total: Number(last[1]), discarded: Number(last[2]) };
}

test('valid frames separated by random garbage are all found', (t) => {
  fc.assert(fc.property(fc.array(fc.record({ junk: fc.uint8Array({ maxLength: 100 }), id: fc.nat(), body: fc.uint8Array({ maxLength: 200 }) }), { minLength: 1, maxLength: 6 }), (items) => {
    const wire = Buffer.concat(items.flatMap((i) => [Buffer.from(i.junk), encodeFrame(FrameType.Ping, i.id, Buffer.from(i.body))]));
    const r = parse(wire);
    t.deepEqual(r.frames, items.map((i) => `frame type=${FrameType.Ping} id=${i.id >>> 0} len=${i.body.length}`));
  }), { numRuns: 40 });
});

test('pure random input and truncated frames do not crash the parser', (t) => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 5000 }), fc.nat({ max: 400 }), (junk, cut) => {
    const truncated = encodeFrame(FrameType.Exec, 1, Buffer.alloc(400, 7)).subarray(0, Math.min(cut, 419));
    const after = encodeFrame(FrameType.Ping, 99, Buffer.from('ok'));
    const r = parse(Buffer.concat([Buffer.from(junk), truncated, after]));
    // The frame after the truncated one survives the stall.
    t.true(r.frames.includes(`frame type=${FrameType.Ping} id=99 len=2`), r.frames.join('\n'));
  }), { numRuns: 40 });
});

test('a header that claims a huge payload is rejected, not waited for', (t) => {
  const f = encodeFrame(FrameType.Ping, 1);
  f.writeUInt32LE(0xffffffff, 8); // length beyond MAX_PAYLOAD (header CRC now wrong too)
  const r = parse(Buffer.concat([f, encodeFrame(FrameType.Ping, 2)]));
  t.deepEqual(r.frames, [`frame type=${FrameType.Ping} id=2 len=0`]);
  t.is(r.discarded, HEADER_BYTES);
});
