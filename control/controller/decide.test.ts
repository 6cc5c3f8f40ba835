// Properties of decide() over random observation sequences and over a plant model in
// which batch vCPUs raise the online tail unless knobs hold them back.
import test from 'ava';
import fc from 'fast-check';
import type { BatchPoolPolicy, OnlineServicePolicy } from '../policy/index.ts';
import { decide, INITIAL_STATE, type Action, type ControllerState, type Observations, type Plan } from './decide.ts';

const service: OnlineServicePolicy = {
  name: 'web', source: 't', slo: { percentile: 99, targetMs: 2, windowMs: 1000 },
  probe: { kind: 'tcp', host: '127.0.0.1', port: 1, intervalMs: 100, timeoutMs: 500 }, prometheus: null, cpus: null,
};
const pool: BatchPoolPolicy = {
  name: 'default', source: 't', reserve: { cpus: 1, memoryBytes: 1 << 30 },
  sandbox: { minVcpus: 1, maxVcpus: 4, minMemoryMiB: 256, maxMemoryMiB: 2048 },
  knobs: ['cpu.idle', 'cpuset', 'cpu.weight', 'pause'],
  growth: { cooldownMs: 5000, minSlack: 0.3, shrinkSlack: 0.1, memoryStepMiB: 256, maxCpuPressure: 50 },
};
const policy = { services: [service], pool };
const TICK = 100;

interface Sb { id: string; vcpus: number; memoryMiB: number; paused: boolean; suspended?: boolean; guestMemAvailableMiB: number | null }

function apply(sbs: Sb[], actions: Action[]): void {
  for (const a of actions) {
    const sb = sbs.find((s) => s.id === a.sandbox)!;
    if (a.kind === 'pause') sb.paused = true;
    if (a.kind === 'resume') sb.paused = false;
    if (a.kind === 'suspend') sb.suspended = true;
    if (a.kind === 'restore') sb.suspended = false;
    if (a.kind === 'resize') {
      if (a.vcpus !== undefined) sb.vcpus = a.vcpus;
      if (a.memoryMiB !== undefined) sb.memoryMiB = a.memoryMiB;
    }
  }
}

const obsAt = (now: number, latencyMs: number | null, sbs: Sb[], memAvailMiB = 16384, cpus = 8): Observations => ({
  now, services: [{ name: 'web', latencyMs, error: null }],
  host: { cpus, cpuPressure: 0, memAvailableBytes: memAvailMiB * 1048576 },
  sandboxes: sbs.map((s) => ({ ...s })),
});

/** True when the action gives batch work more than it had. */
function grows(a: Action, before: Sb[]): boolean {
  const sb = before.find((s) => s.id === a.sandbox)!;
  if (a.kind === 'resume' || a.kind === 'restore') return true;
  if (a.kind === 'resize') return (a.vcpus ?? 0) > sb.vcpus || (a.memoryMiB ?? 0) > sb.memoryMiB;
  if (a.kind === 'knobs') return a.knobs.cpuIdle === false || a.knobs.cpuWeight === 100 || a.knobs.cpus === '0-7' || a.knobs.cpuMax === null;
  return false;
}

const latencies = fc.array(fc.oneof(fc.double({ min: 0.1, max: 6, noNaN: true }), fc.constant(null)), { minLength: 1, maxLength: 400 });

test('never grows batch resources while a service is in violation; reacts on the first tick; stays in bounds; never resizes a paused guest', (t) => {
  fc.assert(fc.property(latencies, fc.integer({ min: 1, max: 4 }), fc.integer({ min: 4000, max: 20000 }), (lat, startVcpus, memAvail) => {
    const sbs: Sb[] = [{ id: 'a', vcpus: startVcpus, memoryMiB: 512, paused: false, guestMemAvailableMiB: 64 }, { id: 'b', vcpus: 1, memoryMiB: 256, paused: false, guestMemAvailableMiB: 200 }];
    let state: ControllerState = INITIAL_STATE;
    let prevViolating = false;
    for (let i = 0; i < lat.length; i++) {
      const l = lat[i]!;
      const before = sbs.map((s) => ({ ...s }));
      const plan: Plan = decide(policy, obsAt(i * TICK, l, sbs, memAvail), state);
      const violating = l !== null && l > service.slo.targetMs;
      if (violating) {
        for (const a of plan.actions) if (grows(a, before)) return false;
        if (!prevViolating && state.level < pool.knobs.length && plan.actions.length === 0) return false;
      }
      t.truthy(plan.reason);
      apply(sbs, plan.actions);
      for (const s of sbs) {
        if (s.vcpus < 1 || s.vcpus > pool.sandbox.maxVcpus) return false;
        if (s.memoryMiB < pool.sandbox.minMemoryMiB || s.memoryMiB > pool.sandbox.maxMemoryMiB) return false;
      }
      if (plan.state.level < 0 || plan.state.level > pool.knobs.length) return false;
      // Resizes need the guest: never one for a paused sandbox.
      for (const a of plan.actions) if (a.kind === 'resize' && before.find((s) => s.id === a.sandbox)!.paused) return false;
      prevViolating = violating;
      state = plan.state;
    }
    return true;
  }), { numRuns: 300 });
});

test('unknown latency (probe errors) never leads to growth', (t) => {
  const sbs: Sb[] = [{ id: 'a', vcpus: 1, memoryMiB: 256, paused: false, guestMemAvailableMiB: 10 }];
  let state = INITIAL_STATE;
  for (let i = 0; i < 300; i++) {
    const o = obsAt(i * TICK, null, sbs);
    o.services[0]!.error = 'connection refused';
    const plan = decide(policy, o, state);
    t.deepEqual(plan.actions.filter((a) => grows(a, sbs)), []);
    state = plan.state;
  }
  t.regex(decide(policy, { ...obsAt(0, null, sbs), services: [{ name: 'web', latencyMs: null, error: 'connection refused' }] }, state).reason, /holding: no latency for web \(connection refused\)/);
});

/** The plant: online p99 rises with unrestrained batch vCPUs; each knob halves their effect. */
function plantLatency(sbs: Sb[], level: number, noise: number): number {
  const active = sbs.filter((s) => !s.paused).reduce((n, s) => n + s.vcpus, 0);
  return 1.0 * (1 + 0.35 * active * 0.5 ** level) * noise;
}

test('closed loop: a breach is clamped and the tail settles under the target; spare room is grown into', (t) => {
  fc.assert(fc.property(fc.array(fc.double({ min: 0.9, max: 1.1, noNaN: true }), { minLength: 600, maxLength: 600 }), (noise) => {
    const sbs: Sb[] = [{ id: 'a', vcpus: 4, memoryMiB: 256, paused: false, guestMemAvailableMiB: 200 }];
    let state = INITIAL_STATE;
    const lat: number[] = [];
    for (let i = 0; i < noise.length; i++) {
      const l = plantLatency(sbs, state.level, noise[i]!);
      lat.push(l);
      const plan = decide(policy, obsAt(i * TICK, l, sbs), state);
      apply(sbs, plan.actions);
      state = plan.state;
    }
    // The last 20 s stay within the target.
    return lat.slice(-200).every((l) => l <= service.slo.targetMs);
  }), { numRuns: 50 });
  t.pass();
});

test('settles: latency oscillating around the target does not make the sandboxes oscillate', (t) => {
  fc.assert(fc.property(fc.integer({ min: 2, max: 20 }), fc.double({ min: 0.02, max: 0.4, noNaN: true }), (period, amplitude) => {
    const sbs: Sb[] = [{ id: 'a', vcpus: 2, memoryMiB: 256, paused: false, guestMemAvailableMiB: 200 }];
    let state = INITIAL_STATE;
    let lastDir = 0;
    let changes = 0;
    const ticks = 1200; // 2 minutes
    for (let i = 0; i < ticks; i++) {
      const l = service.slo.targetMs * (1 + amplitude * Math.sin((2 * Math.PI * i) / period));
      const before = sbs[0]!.vcpus + (sbs[0]!.paused ? -100 : 0) - state.level;
      const plan = decide(policy, obsAt(i * TICK, l, sbs), state);
      apply(sbs, plan.actions);
      state = plan.state;
      const after = sbs[0]!.vcpus + (sbs[0]!.paused ? -100 : 0) - state.level;
      const dir = Math.sign(after - before);
      if (dir !== 0 && lastDir !== 0 && dir !== lastDir) changes++;
      if (dir !== 0) lastDir = dir;
    }
    // At most one change of direction per cool-down (50 ticks).
    return changes <= ticks / (pool.growth.cooldownMs / TICK);
  }), { numRuns: 100 });
  t.pass();
});

test('the fast path follows the policy\'s knob order, cpuset moves batch off the reserved CPUs', (t) => {
  const sbs: Sb[] = [{ id: 'a', vcpus: 2, memoryMiB: 256, paused: false, guestMemAvailableMiB: 200 }];
  let plan = decide(policy, obsAt(0, 3, sbs, 16384, 2), INITIAL_STATE);
  t.deepEqual(plan.actions, [{ kind: 'knobs', sandbox: 'a', knobs: { cpuIdle: true }, reason: 'breach: web p99 3.00 ms vs 2 ms (slack -0.50): apply cpu.idle' }]);
  plan = decide(policy, obsAt(500, 3, sbs, 16384, 2), plan.state);
  t.deepEqual(plan.actions, [], 'waits for the window to refresh before the next knob');
  plan = decide(policy, obsAt(1000, 3, sbs, 16384, 2), plan.state);
  t.like(plan.actions[0], { kind: 'knobs', knobs: { cpus: '1' } });
  plan = decide(policy, obsAt(2000, 3, sbs, 16384, 2), plan.state);
  plan = decide(policy, obsAt(3000, 3, sbs, 16384, 2), plan.state);
  t.like(plan.actions[0], { kind: 'pause', sandbox: 'a' });
  t.regex(decide(policy, obsAt(3100, 3, sbs, 16384, 2), plan.state).reason, /all knobs applied, waiting/);
});

test('spare room is grown into one step per cool-down, up to what the host can lend', (t) => {
  const sbs: Sb[] = [{ id: 'a', vcpus: 1, memoryMiB: 256, paused: false, guestMemAvailableMiB: 30 }];
  let state = INITIAL_STATE;
  const grewAt: number[] = [];
  for (let i = 0; i < 400; i++) {
    const before = sbs[0]!.vcpus;
    const plan = decide(policy, obsAt(i * TICK, 0.5, sbs, 16384, 4), state);
    apply(sbs, plan.actions);
    state = plan.state;
    if (sbs[0]!.vcpus > before) grewAt.push(i);
  }
  // 4 host CPUs, 1 reserved: batch may hold 3 vCPUs, never more.
  t.is(sbs[0]!.vcpus, 3);
  t.true(grewAt.every((at, k) => k === 0 || at - grewAt[k - 1]! >= pool.growth.cooldownMs / TICK), `grew at ticks ${grewAt}`);
  t.true(sbs[0]!.memoryMiB > 256, 'a guest short of memory gets more');
});

test('memory pressure: virtio-mem steps down to the minimum, then suspend to disk; restore only when the whole sandbox fits', (t) => {
  const sbs: Sb[] = [{ id: 'a', vcpus: 1, memoryMiB: 768, paused: false, guestMemAvailableMiB: 500 }];
  let state = INITIAL_STATE;
  const seen: string[] = [];
  const run = (ticks: number, memAvailMiB: number): void => {
    for (let i = 0; i < ticks; i++) {
      const plan = decide(policy, obsAt(tick++ * TICK, 0.5, sbs, memAvailMiB), state);
      for (const a of plan.actions) {
        if (a.kind === 'resize' && a.memoryMiB !== undefined) seen.push(`resize ${a.memoryMiB}`);
        else if (a.kind === 'suspend' || a.kind === 'restore') seen.push(a.kind);
      }
      apply(sbs, plan.actions);
      state = plan.state;
    }
  };
  let tick = 0;
  run(400, 900); // MemAvailable 900 MiB < the 1024 MiB reserve
  t.deepEqual(seen, ['resize 512', 'resize 256', 'suspend'], 'steps down, then suspends, once each cool-down');
  t.true(sbs[0]!.suspended);
  t.is(sbs[0]!.vcpus, 1, 'no vCPU growth under host memory pressure');
  seen.length = 0;
  run(200, 1200); // above the reserve, but not by the sandbox's 256 MiB plus a step
  t.deepEqual(seen, [], 'no room for the whole sandbox: it stays on disk');
  run(200, 4000);
  t.deepEqual(seen, ['restore']);
  t.false(sbs[0]!.suspended);
});
