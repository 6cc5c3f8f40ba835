// The batch capacity published for a cluster: what limits it, each case on its own, and
// through decide() on a host whose services' load moves at random.
import test from 'ava';
import fc from 'fast-check';
import { defaultPool, type OnlineServicePolicy } from '../policy/index.ts';
import { batchCapacity } from './capacity.ts';
import { decide, INITIAL_STATE, type ControllerPolicy, type ControllerState, type Observations } from './decide.ts';

const MiB = 1048576;
const service: OnlineServicePolicy = {
  name: 'web', source: 't', slo: { percentile: 99, targetMs: 2, windowMs: 1000 },
  probe: { kind: 'tcp', host: '127.0.0.1', port: 1, intervalMs: 100, timeoutMs: 500 }, prometheus: null, cpus: '0',
};
const pool = defaultPool('reserve: { cpus: 1, memory: 256Mi }, sandbox: { maxVcpus: 4, minMemory: 256Mi, maxMemory: 1Gi }');
const policy: ControllerPolicy = { services: [service], pool };

function obs(o: { cpuUse?: number; availMiB?: number; sandboxesMiB?: number[]; latencyMs?: number; now?: number; serviceMiB?: number }): Observations {
  const avail = (o.availMiB ?? 4096) * MiB;
  return {
    now: o.now ?? 1_000_000,
    services: [{ name: 'web', latencyMs: o.latencyMs ?? 0.5, error: null, ...(o.cpuUse !== undefined ? { cpuUse: o.cpuUse } : {}), ...(o.serviceMiB !== undefined ? { memoryBytes: o.serviceMiB * MiB } : {}) }],
    host: { cpus: 8, cpuPressure: 0, memAvailableBytes: avail },
    sandboxes: (o.sandboxesMiB ?? []).map((m, i) => ({ id: `s${i}`, vcpus: 1, memoryMiB: m, paused: false, guestMemAvailableMiB: null })),
  };
}
const plan = (state: Partial<ControllerState> = {}, cpus?: string) => ({ state: { ...INITIAL_STATE, ...state }, desired: { pool: cpus ? { cpus } : {}, sandboxes: [], applied: [], reason: '' } });

test('CPUs: the host less the reserve and the services\' use; the batch cpuset bounds it; none while paused', (t) => {
  t.is(batchCapacity(policy, obs({}), plan()).cpus, 7);
  const used = batchCapacity(policy, obs({ cpuUse: 2.34 }), plan());
  t.is(used.cpus, 4.7);
  t.regex(used.reason, /the services use 2\.34 CPUs/);
  const held = batchCapacity(policy, obs({ cpuUse: 0.5 }), plan({}, '6-7'));
  t.is(held.cpus, 2);
  t.regex(held.reason, /batch held to CPUs 6-7/);
  t.is(batchCapacity(policy, obs({}), plan({}, '0-7')).cpus, 7, 'the whole host as cpuset holds nothing back');
  const paused = batchCapacity(policy, obs({}), plan({ paused: true }));
  t.is(paused.cpus, 0);
  t.regex(paused.reason, /paused/);
  t.is(batchCapacity(policy, obs({ cpuUse: 20 }), plan()).cpus, 0, 'never below zero');
});

test('memory: what the sandboxes hold plus what is free beyond the reserve; under pressure only what they hold', (t) => {
  t.is(batchCapacity(policy, obs({ availMiB: 1280, sandboxesMiB: [512, 256] }), plan()).memoryBytes, (768 + 1024) * MiB);
  const short = batchCapacity(policy, obs({ availMiB: 200, sandboxesMiB: [512] }), plan());
  t.is(short.memoryBytes, 512 * MiB);
  t.regex(short.reason, /memory under pressure/);
  // A service growing 100 MiB/s is projected 2 s ahead, as the memory path does.
  const growing = plan({ memory: { pressureSince: null, calmSince: null, pending: [], refused: [], tookAt: null, last: null, services: [{ t: 999_000, mib: 100 }, { t: 1_000_000, mib: 200 }] } });
  t.is(batchCapacity(policy, obs({ availMiB: 1280, serviceMiB: 200 }), growing).memoryBytes, (1280 - 200 - 256) * MiB);
});

test('through decide(): never more CPUs than the host less the reserve, never negative, zero whenever the plan pauses batch', (t) => {
  fc.assert(fc.property(fc.array(fc.record({ cpuUse: fc.double({ min: 0, max: 8, noNaN: true }), latencyMs: fc.double({ min: 0.1, max: 10, noNaN: true }) }), { minLength: 1, maxLength: 80 }), (steps) => {
    let state: ControllerState = INITIAL_STATE;
    let now = 1_000_000;
    for (const s of steps) {
      now += 100;
      const o = obs({ ...s, now, sandboxesMiB: [512] });
      const p = decide(policy, o, state);
      state = p.state;
      const c = batchCapacity(policy, o, p);
      if (c.cpus < 0 || c.cpus > 7 || (p.state.paused && c.cpus !== 0) || c.memoryBytes < 512 * MiB) return false;
    }
    return true;
  }), { numRuns: 200 });
  t.pass();
});
