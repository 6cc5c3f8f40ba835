// Open-loop Redis load at a fixed rate: GET of one key over a few connections, each
// request's latency taken from the moment it was due (not when it was sent), so a
// stalled server cannot hide its queueing (no coordinated omission). redis-benchmark has
// no rate limit, so it measures the ceiling and this keeps the fixed rates.
// Prints "offset_ms,latency_ms" per reply on stdout, then "# sent N received N".
//   node --import tsx bench/colocation/redis-load.ts --port P --rate R --seconds S
import * as net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { port: { type: 'string' }, rate: { type: 'string' }, seconds: { type: 'string' }, conns: { type: 'string', default: '8' } } });
const port = Number(values.port);
const rate = Number(values.rate);
const seconds = Number(values.seconds);
const nconn = Number(values.conns);
const GET = Buffer.from('*2\r\n$3\r\nGET\r\n$8\r\nlodger:k\r\n');
const VALUE = 'colocate';
const REPLY_BYTES = `$${VALUE.length}\r\n${VALUE}\r\n`.length;

interface Conn { sock: net.Socket; due: number[]; pending: number }
const out: string[] = [];
let received = 0;

function open(): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const c: Conn = { sock: net.connect(port, '127.0.0.1'), due: [], pending: 0 };
    c.sock.setNoDelay(true);
    c.sock.once('connect', () => resolve(c));
    c.sock.once('error', reject);
    c.sock.on('data', (b: Buffer) => {
      const now = performance.now();
      // Every reply is the same bulk string, so replies are counted by their length.
      c.pending += b.length;
      while (c.pending >= REPLY_BYTES && c.due.length) {
        c.pending -= REPLY_BYTES;
        const due = c.due.shift()!;
        out.push(`${(due - start).toFixed(3)},${(now - due).toFixed(3)}`);
        received++;
      }
    });
  });
}

const setup = await open();
await new Promise<void>((resolve) => {
  setup.sock.once('data', () => resolve());
  setup.sock.write(`*3\r\n$3\r\nSET\r\n$8\r\nlodger:k\r\n$${VALUE.length}\r\n${VALUE}\r\n`);
});
setup.sock.destroy();
const conns = await Promise.all(Array.from({ length: nconn }, open));
const total = Math.round(rate * seconds);
const start = performance.now();
const startedAtWall = Date.now();
let sent = 0;
await new Promise<void>((resolve) => {
  const timer = setInterval(() => {
    const now = performance.now();
    const due = Math.min(total, Math.floor(((now - start) / 1000) * rate));
    while (sent < due) {
      const c = conns[sent % nconn]!;
      c.due.push(start + (sent * 1000) / rate);
      c.sock.write(GET);
      sent++;
    }
    if (sent >= total) {
      clearInterval(timer);
      resolve();
    }
  }, 1);
});
// Replies still on their way get a moment; the rest count as lost.
const deadline = performance.now() + 2000;
while (received < sent && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
for (const c of conns) c.sock.destroy();
// Its own start, in wall-clock ms: the caller's clock starts before this process is up.
process.stdout.write(`# start ${startedAtWall}\n${out.join('\n')}\n# sent ${sent} received ${received}\n`);
