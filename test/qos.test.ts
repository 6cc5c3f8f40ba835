// The controller with real parts: nginx from Debian pinned to CPU 0 under hey at a fixed
// rate (hey on CPU 1 at a higher priority, standing in for remote clients), one real batch
// sandbox spinning on both its vCPUs, the monitor, controller and actuator running for
// real. Unmanaged and managed runs alternate three times each; the medians of nginx's p99
// are compared and reported (docs/BENCHMARKS.md).
//
// The pool keeps cpu.idle and cpu.weight applied (the defaults); the load here is high
// enough that the breach outlasts two windows with them, and the cpuset is escalated to.
import test from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { ControlLoop, ProcHostReader, ServiceMonitor, defaultPool, type OnlineServicePolicy } from '../control/index.ts';
import { runscInstalled, testGvisorRuntime, testRuntime, type TestRuntime } from './helpers.ts';
import { type Nginx, passableTmpDir, runHey, startNginx } from '../bench/index.ts';
import type { Sandbox } from '../sandbox-runtime/index.ts';

// The load: 70% of what nginx serves flat out on its one CPU, measured first. Below about
// half, CFS gives the sleeping nginx worker the CPU whenever it wakes and the spinning
// sandbox does not move its p99 beyond noise here (docs/BENCHMARKS.md); above, nginx
// needs more than its fair share of CPU 0, and only moving batch away gives it that.
const LOAD = 0.7;
const SECONDS = 5;

let rt: TestRuntime | undefined;
let gv: Awaited<ReturnType<typeof testGvisorRuntime>> | undefined;
let nginx: Nginx | undefined;

test.after.always(async () => {
  await nginx?.stop();
  await rt?.stopAll();
  await gv?.stopAll();
});

// The spinning sandbox, on each backend: a QEMU microVM and a gVisor sandbox.
const SPEC = { id: 'spinner', vcpus: 2, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 256 };
const backends: { name: string; skip?: string; boot: () => Promise<Sandbox & { cgroupDirs: ReadonlyMap<string, string> | null }> }[] = [
  { name: 'qemu', boot: async () => { rt = await testRuntime('qos'); return rt.boot(SPEC); } },
  { name: 'gvisor', skip: runscInstalled ? undefined : 'runsc is not installed (npm run setup installs it)', boot: async () => { gv = await testGvisorRuntime('qos'); return gv.boot(SPEC); } },
];

for (const backend of backends) (backend.skip ? test.serial.skip : test.serial)(`${backend.name}: nginx's p99 next to a spinning batch sandbox is lower with the controller than without; the clamp reaches the kernel${backend.skip ? ` (${backend.skip})` : ''}`, async (t) => {
  if (cpus().length < 2) {
    t.pass('needs two CPUs: one for nginx, one for batch and load');
    return;
  }
  const dir = passableTmpDir('lodger-qos-');
  nginx ??= await startNginx(dir, 4, 0); // a 4 KiB page gzip-compressed per request: real CPU per request
  const sb = await backend.boot();
  const spin = await sb.exec({ argv: ['sh', '-c', '(while :; do :; done) & (while :; do :; done) & wait'] });
  spin.wait().catch(() => {});
  // Flat out, with the sandbox paused: what nginx can serve on CPU 0.
  await sb.pause();
  const ceiling = (await runHey(nginx.url, 3, 1e6, 16, 1)).rps;
  const rate = Math.round(ceiling * LOAD);
  t.log(`nginx flat out on CPU 0: ${ceiling.toFixed(0)} req/s; load ${rate} req/s`);
  const hey = (): ReturnType<typeof runHey> => runHey(nginx!.url, SECONDS, rate, 16, 1);
  const probeSpec = { kind: 'http' as const, url: nginx.url, method: 'GET' as const, intervalMs: 50, timeoutMs: 500 };

  // Alone: the sandbox is stopped (QMP stop), so it takes no CPU. A first run warms
  // nginx, hey and the page cache and is thrown away.
  await runHey(nginx.url, 2, rate, 16, 1);
  // The SLO: twice the probe's median with the sandbox stopped (nginx alone). A 1 s
  // window holds ~20 probes, so its p99 is about their maximum: next to a spinning
  // sandbox it is over that nearly always, and the controller must act. (The median
  // next to the unmanaged sandbox was used before; where batch starves nginx, as a
  // gVisor spinner did in 1 CI run of 5, that median is the probe's 500 ms timeout and
  // no managed run breaches it.)
  const m = new ServiceMonitor({ name: 'web', source: 't', slo: { percentile: 99, targetMs: 1, windowMs: SECONDS * 1000 }, probe: probeSpec, prometheus: null, cpus: null });
  m.start();
  const solo = await hey();
  const targetMs = 2 * (m.observe().p50Ms ?? 0.5);
  m.stop();
  await sb.resume();
  const first = await hey();
  const service: OnlineServicePolicy = { name: 'web', source: 't', slo: { percentile: 99, targetMs, windowMs: 1000 }, probe: probeSpec, prometheus: null, cpus: '0' };
  const pool = defaultPool('reserve: { cpus: 1 }, sandbox: { maxVcpus: 2, maxMemory: 256Mi }, knobs: [cpuset, cpu.idle, cpu.weight], growth: { cooldown: 60s }');
  const cpusetFile = join(sb.cgroupDirs?.get('cpuset') ?? sb.cgroupDirs?.get('') ?? '/nonexistent', 'cpuset.cpus');
  const unmanaged = [first];
  const managed: typeof unmanaged = [];
  const reactions: number[] = [];
  let kernelCpus = '';
  let firstReason = '';
  for (let round = 0; round < 3; round++) {
    if (round > 0) {
      // Undo what the controller did: knobs, and the vCPU it may have taken away.
      await sb.update({ vcpus: 2, cgroup: { cpus: '', cpuIdle: false, cpuWeight: 100 } });
      unmanaged.push(await hey());
    }
    const loop = new ControlLoop({ policy: { services: [service], pool }, monitors: [new ServiceMonitor(service)], host: new ProcHostReader(), sandboxes: () => [sb] });
    loop.on('decision', () => { kernelCpus = existsSync(cpusetFile) ? readFileSync(cpusetFile, 'utf8').trim() : kernelCpus; });
    try {
      loop.start();
      managed.push(await hey());
    } finally {
      await loop.stop();
    }
    reactions.push(...loop.reactions.map((r) => r.ms));
    firstReason ||= loop.decisions.find((d) => /^breach.*: (clamp|escalate)/.test(d.reason))?.reason ?? '';
    const failed = loop.decisions.flatMap((d) => d.results.filter((r) => !r.ok).map((r) => `${r.action.kind}: ${r.detail}`));
    t.deepEqual(failed, [], 'every action applied without error');
  }
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const fmt = (r: { p50Ms: number; p99Ms: number; rps: number }): string => `p50 ${r.p50Ms.toFixed(2)} ms, p99 ${r.p99Ms.toFixed(2)} ms, ${r.rps.toFixed(0)} req/s`;
  t.log(`alone:     ${fmt(solo)}`);
  for (let i = 0; i < 3; i++) t.log(`round ${i + 1}: unmanaged ${fmt(unmanaged[i]!)} | managed ${fmt(managed[i]!)}`);
  const u = median(unmanaged.map((r) => r.p99Ms));
  const g = median(managed.map((r) => r.p99Ms));
  t.log(`median p99: alone ${solo.p99Ms.toFixed(2)} ms, unmanaged ${u.toFixed(2)} ms, managed ${g.toFixed(2)} ms (SLO ${targetMs.toFixed(2)} ms on the probe's p99)`);
  t.log(`reactions (violating observation -> clamp applied): ${reactions.map((x) => `${x.toFixed(1)} ms`).join(', ') || 'none'}`);
  t.true(reactions.length >= 3, 'the controller clamped the sandbox in every managed run');
  // cpu.idle and cpu.weight are kept applied from the first round (the defaults); the
  // cpuset is escalated to once the breach outlasts two windows.
  t.regex(firstReason, /^breach: web p99 .* with (cpu\.idle, cpu\.weight|cpu\.weight, cpu\.idle) applied: escalate to cpuset$/, firstReason);
  if (process.getuid?.() === 0) t.is(kernelCpus, '1', 'the sandbox cgroup was moved off nginx\'s CPU in the kernel');
  t.true(g < u, `managed p99 ${g.toFixed(2)} ms is below unmanaged ${u.toFixed(2)} ms`);
});
