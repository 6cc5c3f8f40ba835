// npm run bench:reaction -- [--json] [--steps N]
// How fast a breach becomes a clamp on a real sandbox's cgroup: a loopback HTTP
// service whose latency steps up on cue, the real monitor, controller and actuator, a
// real QEMU sandbox with its real cgroup. Reports, over N load steps, the time from
// the first violating observation to the clamp applied, and from the load step itself.
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, readFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ControlLoop, ProcHostReader, ServiceMonitor, defaultPool, type OnlineServicePolicy } from '../control/index.ts';
import { openRuntime } from '../sandbox-runtime/index.ts';
import { percentile as pct } from './services.ts';

const { values } = parseArgs({ options: { json: { type: 'boolean', default: false }, steps: { type: 'string', default: '20' } } });
const steps = Number(values.steps);
const say = (m: string): void => { if (!values.json) console.error(m); };

let delay = 0;
const server = http.createServer((_q, res) => { if (delay) setTimeout(() => res.end('ok'), delay); else res.end('ok'); });
await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;

const dir = mkdtempSync(join(tmpdir(), 'lodger-reaction-'));
const { runtime, accel, cgroups } = await openRuntime({ host: { runDir: join(dir, 'run') }, cgroupParent: `lodger-bench-${process.pid}` });
const sb = await runtime.create({ id: 'reaction', vcpus: 1, maxVcpus: 1, memoryMiB: 256, maxMemoryMiB: 256 });
await sb.start();
const idleFile = sb.cgroupDirs ? join(sb.cgroupDirs.get('cpu') ?? sb.cgroupDirs.get('')!, 'cpu.idle') : null;

const service: OnlineServicePolicy = {
  name: 'svc', source: 'bench', slo: { percentile: 99, targetMs: 20, windowMs: 300 }, prometheus: null, cpus: null,
  probe: { kind: 'http', url, method: 'GET', intervalMs: 10, timeoutMs: 200 },
};
const pool = defaultPool('reserve: { cpus: 1 }, sandbox: { maxVcpus: 1, maxMemory: 256Mi }, knobs: [cpu.idle], keepApplied: [], growth: { cooldown: 300ms, reverse: 300ms, backoff: 300ms, maxBackoff: 300ms }', 'p');
// maxBackoff too: every step here follows a release, and breach memory would otherwise
// double the back-off on each until the knob is no longer given back between steps.
const loop = new ControlLoop({ policy: { services: [service], pool }, monitors: [new ServiceMonitor(service)], host: new ProcHostReader(), sandboxes: () => [sb], tickMs: 100 });
const fromObservation: number[] = [];
const fromStep: number[] = [];
try {
  loop.start();
  await new Promise((r) => setTimeout(r, 1000));
  for (let i = 0; i < steps; i++) {
    const seen = loop.reactions.length;
    delay = 40; // the load step: the service's latency jumps over its 20 ms SLO
    // The loop's clock is the wall clock: its reactions are stamped with Date.now().
    const stepAt = Date.now();
    while (loop.reactions.length === seen && Date.now() - stepAt < 5000) await new Promise((r) => setTimeout(r, 1));
    const r = loop.reactions[seen];
    if (!r) throw new Error(`no reaction to load step ${i + 1}: ${loop.decisions.slice(-4).map((d) => d.reason).join(" | ")} / now: ${loop.lastReason}`);
    // Read the knob back from the kernel: the clamp really is on the sandbox's cgroup.
    if (idleFile && readFileSync(idleFile, 'utf8').trim() !== '1') throw new Error('cpu.idle not set in the cgroup after the reaction');
    fromObservation.push(r.ms);
    fromStep.push(r.observedAt - stepAt + r.ms);
    delay = 0;
    // Let the window drain and the knob be released before the next step.
    const calmAt = performance.now();
    // Released in the kernel too, not only decided: a step while the release is being
    // written finds nothing to write and makes no reaction.
    const released = (): boolean => loop.controllerState.level === 0 && (!idleFile || readFileSync(idleFile, 'utf8').trim() === '0');
    while (!released() && performance.now() - calmAt < 10_000) await new Promise((res) => setTimeout(res, 20));
    await new Promise((res) => setTimeout(res, 50));
    say(`step ${i + 1}/${steps}: violating observation -> clamp ${r.ms.toFixed(2)} ms, load step -> clamp ${fromStep.at(-1)!.toFixed(1)} ms`);
  }
} finally {
  await loop.stop();
  await sb.stop({ graceMs: 0 });
  await cgroups?.removeParents();
  server.close();
}

const result = {
  date: new Date().toISOString(),
  host: `${cpus()[0]?.model ?? 'unknown'} x${cpus().length}`,
  accel: accel.accel,
  steps,
  probeIntervalMs: service.probe!.intervalMs,
  serviceStepLatencyMs: 40,
  reactionMsP50: Math.round(pct(fromObservation, 50) * 100) / 100,
  reactionMsP99: Math.round(pct(fromObservation, 99) * 100) / 100,
  loadStepToClampMsP50: Math.round(pct(fromStep, 50) * 10) / 10,
  loadStepToClampMsP99: Math.round(pct(fromStep, 99) * 10) / 10,
};
console.log(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
