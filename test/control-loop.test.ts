// The control loop end to end against a real HTTP server on loopback whose latency the
// test sets, with the in-memory sandbox (same contract as QEMU's) as the actuated side.
import test from 'ava';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ControlLoop, defaultPool, FileStateStore, ServiceMonitor, type HostReader, type OnlineServicePolicy } from '../control/index.ts';
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
  const pool = defaultPool('sandbox: { maxVcpus: 2, maxMemory: 512Mi }, reserve: { cpus: 1 }, knobs: [cpu.idle, cpuset, cpu.weight, pause], keepApplied: [], escalate: [], growth: { cooldown: 600ms, reverse: 600ms, backoff: 1s, cpusetInterval: 1s }', 'p');
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

test.serial('one loop across a policy reload and a restart: the clamp stays; a sandbox that joins during the breach gets it within a round', async (t) => {
  let delay = 150;
  const server = http.createServer((_q, res) => setTimeout(() => res.end('ok'), delay));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const service = (targetMs: number): OnlineServicePolicy => ({
    name: 'web', source: 't', slo: { percentile: 99, targetMs, windowMs: 500 }, prometheus: null, cpus: '0',
    probe: { kind: 'http', url: `http://127.0.0.1:${port}/`, method: 'GET', intervalMs: 20, timeoutMs: 500 },
  });
  // Nothing kept applied: the suite checks that every knob is given back.
  const pool = defaultPool('sandbox: { maxVcpus: 2, maxMemory: 512Mi }, knobs: [cpuset, cpu.idle, cpu.weight], keepApplied: [], escalate: [], growth: { cooldown: 300ms, reverse: 300ms, backoff: 300ms, cpusetInterval: 300ms }', 'p');
  const rt = new FakeRuntime();
  const sandboxes = [await rt.create({ id: 'a', vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 512 })];
  await sandboxes[0]!.start();
  const host: HostReader = { read: async () => ({ cpus: 2, cpuPressure: 0, memAvailableBytes: 8 << 30 }) };
  const poolKnobs: Record<string, unknown>[] = [];
  const store = new FileStateStore(join(mkdtempSync(join(tmpdir(), 'lodger-loop-')), 'controller.json'));
  const make = (targetMs: number): ControlLoop => new ControlLoop({
    policy: { services: [service(targetMs)], pool }, monitors: [new ServiceMonitor(service(targetMs))], host, sandboxes: () => sandboxes, tickMs: 100,
    pool: { update: async (k) => { poolKnobs.push({ ...k }); return ['pool']; } }, store,
  });
  const until = async (cond: () => boolean, ms: number): Promise<boolean> => {
    const end = performance.now() + ms;
    while (!cond() && performance.now() < end) await new Promise((r) => setTimeout(r, 10));
    return cond();
  };
  let loop = make(50);
  try {
    loop.start();
    t.true(await until(() => sandboxes[0]!.knobs.cpus === '1', 3000), 'clamped on the breach');
    t.like(sandboxes[0]!.knobs, { cpus: '1', cpuIdle: true, cpuWeight: 1 });
    t.like(poolKnobs.at(-1), { cpus: '1', cpuIdle: true }, 'the pool parent carries the clamp');
    const late = await rt.create({ id: 'late', vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 512 });
    await late.start();
    sandboxes.push(late);
    const joinedAt = performance.now();
    t.true(await until(() => late.knobs.cpus === '1', 1000));
    t.log(`a sandbox joining during the breach had the clamp after ${(performance.now() - joinedAt).toFixed(0)} ms`);
    t.true(performance.now() - joinedAt < 250, 'within about one 100 ms round');
    // A reload (another target, still breached): same loop, same state, no release.
    loop.setPolicy({ services: [service(60)], pool }, [new ServiceMonitor(service(60))]);
    await new Promise((r) => setTimeout(r, 800));
    t.is(loop.controllerState.level, 3);
    t.true(sandboxes.every((s) => s.knobs.cpus === '1'));
    await loop.stop();
    // A restart: a new loop from the stored state keeps the clamp from its first round.
    for (const s of sandboxes) s.knobs = { cpus: '0-1', cpuIdle: false, cpuWeight: 100 }; // drifted while no loop ran
    loop = make(60);
    t.is(loop.controllerState.level, 3, 'the stored state says clamped');
    loop.start();
    t.true(await until(() => sandboxes.every((s) => s.knobs.cpus === '1' && s.knobs.cpuIdle === true), 1000), 'drifted knobs converged back to the clamp');
    // The breach ends: released, one knob at a time.
    delay = 1;
    t.true(await until(() => sandboxes.every((s) => s.knobs.cpus === '0-1' && s.knobs.cpuIdle === false), 15_000), `released: ${JSON.stringify(sandboxes.map((s) => s.knobs))}`);
    t.like(poolKnobs.at(-1), { cpus: '0-1', cpuIdle: false });
  } finally {
    await loop.stop();
    server.close();
  }
});
