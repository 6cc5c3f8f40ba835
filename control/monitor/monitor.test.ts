// Probes and the service monitor against real sockets on loopback: a server that
// answers, one that never answers, a closed port, a wrong protocol.
import test from 'ava';
import * as net from 'node:net';
import * as http from 'node:http';
import { createProber } from './probes.ts';
import { ServiceMonitor } from './service.ts';
import type { OnlineServicePolicy } from '../policy/index.ts';

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)));
}

test('a redis-style PING probe measures the round trip on one kept connection', async (t) => {
  let connections = 0;
  const server = net.createServer((s) => { connections++; s.on('data', () => s.write('+PONG\r\n')); });
  const port = await listen(server);
  const p = createProber({ kind: 'redis', host: '127.0.0.1', port, timeoutMs: 500 });
  try {
    for (let i = 0; i < 5; i++) {
      const r = await p.probe();
      t.true(r.ok && !r.timedOut && r.latencyMs < 500, JSON.stringify(r));
    }
    t.is(connections, 1);
  } finally {
    p.close();
    server.close();
  }
});

test('a silent server times out as a sample at the timeout; a closed port is REFUSED; a wrong answer is PROTOCOL', async (t) => {
  const silent = net.createServer(() => {});
  const port = await listen(silent);
  const wrong = net.createServer((s) => s.on('data', () => s.write('-ERR nope\r\n')));
  const wport = await listen(wrong);
  const spare = net.createServer();
  const closed = await listen(spare);
  await new Promise((r) => spare.close(r)); // a port nobody listens on any more
  const p1 = createProber({ kind: 'redis', host: '127.0.0.1', port, timeoutMs: 150 });
  const p2 = createProber({ kind: 'memcached', host: '127.0.0.1', port: wport, timeoutMs: 500 });
  try {
    t.deepEqual(await p1.probe(), { ok: true, latencyMs: 150, timedOut: true });
    t.like(await p2.probe(), { ok: false, code: 'PROTOCOL' });
    silent.close();
    wrong.close();
    await new Promise((r) => setTimeout(r, 50));
    t.like(await createProber({ kind: 'tcp', host: '127.0.0.1', port: closed, timeoutMs: 500 }).probe(), { ok: false, code: 'REFUSED' });
  } finally {
    p1.close();
    p2.close();
  }
});

test('the monitor reports the window percentile over HTTP probes, and a typed error when the target dies', async (t) => {
  let delay = 0;
  const server = http.createServer((_req, res) => setTimeout(() => res.end('ok'), delay));
  const port = await listen(server);
  const policy: OnlineServicePolicy = {
    name: 'web', source: 't', slo: { percentile: 99, targetMs: 5, windowMs: 1000 }, prometheus: null, cpus: null,
    probe: { kind: 'http', url: `http://127.0.0.1:${port}/`, method: 'GET', intervalMs: 20, timeoutMs: 1000 },
  };
  const m = new ServiceMonitor(policy);
  try {
    t.like(m.observe(), { latencyMs: null, error: 'no samples yet' });
    m.start();
    await new Promise((r) => setTimeout(r, 400));
    // Wide margins: the host stalls for tens of ms now and then.
    const fast = m.observe();
    t.true(fast.samples >= 5 && fast.latencyMs! < 150, JSON.stringify(fast));
    delay = 200;
    await new Promise((r) => setTimeout(r, 1500));
    const slow = m.observe();
    t.true(slow.latencyMs! >= 200, `p99 ${slow.latencyMs} after the server slowed down`);
    server.closeAllConnections();
    server.close();
    await new Promise((r) => setTimeout(r, 1300));
    const gone = m.observe();
    t.is(gone.latencyMs, null);
    t.regex(gone.error!, /^REFUSED/);
  } finally {
    m.stop();
    server.close();
  }
});
