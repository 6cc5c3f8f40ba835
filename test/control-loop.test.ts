// The control loop end to end against a real HTTP server on loopback whose latency the
// test sets, with the in-memory sandbox (same contract as QEMU's) as the actuated side.
import test from 'ava';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { ControlLoop, ServiceMonitor, type BatchPoolPolicy, type HostReader, type OnlineServicePolicy } from '../control/index.ts';
import { FakeRuntime } from '../sandbox-runtime/testing.ts';

test.serial('a breach is clamped within the sampling interval, and released after the cool-down', async (t) => {
  let delay = 1;
  const server = http.createServer((_q, res) => setTimeout(() => res.end('ok'), delay));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const service: OnlineServicePolicy = {
    // Wide margins: this host stalls for tens of ms now and then; 50 ms vs 150 ms is clear.
    name: 'web', source: 't', slo: { percentile: 99, targetMs: 50, windowMs: 500 }, prometheus: null, cpus: null,
    probe: { kind: 'http', url: `http://127.0.0.1:${port}/`, method: 'GET', intervalMs: 20, timeoutMs: 500 },
  };
  const pool: BatchPoolPolicy = {
    name: 'p', source: 't', reserve: { cpus: 1, memoryBytes: 0 }, sandbox: { minVcpus: 1, maxVcpus: 2, minMemoryMiB: 256, maxMemoryMiB: 512 },
    knobs: ['cpu.idle', 'cpuset', 'cpu.weight', 'pause'], growth: { cooldownMs: 600, minSlack: 0.3, shrinkSlack: 0.1, memoryStepMiB: 256, maxCpuPressure: 50 },
  };
  const rt = new FakeRuntime();
  const sb = await rt.create({ id: 'batch', vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 512 });
  await sb.start();
  const host: HostReader = { read: async () => ({ cpus: 4, cpuPressure: 0, memAvailableBytes: 8 << 30 }) };
  const loop = new ControlLoop({ policy: { services: [service], pool }, monitors: [new ServiceMonitor(service)], host, sandboxes: () => [sb], tickMs: 100 });
  try {
    loop.start();
    await new Promise((r) => setTimeout(r, 1500));
    t.falsy(sb.knobs.cpuIdle, 'no clamp while the service is fast');
    delay = 150;
    const slowAt = performance.now();
    while (!sb.knobs.cpuIdle && performance.now() - slowAt < 3000) await new Promise((r) => setTimeout(r, 5));
    const clampedAfter = performance.now() - slowAt;
    t.true(sb.knobs.cpuIdle, 'cpu.idle applied on the breach');
    t.true(loop.reactions.length >= 1);
    const r = loop.reactions[0]!;
    t.log(`load step to clamp ${clampedAfter.toFixed(0)} ms; violating observation to clamp ${r.ms.toFixed(2)} ms`);
    t.true(r.ms < 50, `reaction ${r.ms} ms`);
    t.regex(loop.decisions.at(-1)!.reason, /breach: web p99 .* vs 50 ms/);
    delay = 1;
    const fastAt = performance.now();
    while (sb.state !== 'running' || sb.knobs.cpuIdle) {
      if (performance.now() - fastAt > 15_000) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    t.false(sb.knobs.cpuIdle, 'every knob released once the service is comfortable again');
    t.is(sb.state, 'running');
  } finally {
    await loop.stop();
    server.close();
  }
});
