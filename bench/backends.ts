// One row per sandbox backend, measured in the same run: start to first output, resize
// latency, host memory per idle sandbox beyond the job's, and a CPU-bound loop's speed
// relative to the same loop (the same busybox) on the host. Run by bench/sandbox.ts, or
// alone: node --import tsx bench/backends.ts [--json].
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openGvisorRuntime, openRuntime, type HostedSandbox, type Sandbox, type SandboxRuntime } from '../sandbox-runtime/index.ts';
import { passableTmpDir } from './tmp.ts';

export interface BackendRow {
  backend: string;
  accel: string;
  startToFirstOutputMs: number;
  resizeUpMs: number;
  resizeDownMs: number;
  /** Host memory of an idle sandbox: the VMM's RSS beyond guest RAM (QEMU), the sentry's and gofer's cgroup charge (gVisor). */
  hostOverheadMiB: number;
  /** CPU an idle sandbox uses (its cgroup's, over IDLE_S), percent of one CPU: what a RuntimeClass overhead must count. */
  idleCpuPct: number;
  loopSeconds: number;
  /** Host time / sandbox time for the same loop. */
  cpuThroughputVsHost: number;
}

const LOOP = (n: number): string => `i=0; while [ $i -lt ${n} ]; do i=$((i+1)); done; echo done`;
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const r1 = (x: number): number => Math.round(x * 10) / 10;
const IDLE_S = 5;

async function run(sb: Sandbox, argv: string[]): Promise<{ firstMs: number; totalMs: number }> {
  const t0 = performance.now();
  let first = -1;
  const h = await sb.exec({ argv });
  h.onStdout(() => { if (first < 0) first = performance.now() - t0; });
  const st = await h.wait();
  if (st.code !== 0) throw new Error(`${argv.join(' ')} exited ${st.code ?? `by signal ${st.signal}`}`);
  return { firstMs: first, totalMs: performance.now() - t0 };
}

async function measure(name: string, rt: SandboxRuntime, n: number, hostLoopS: number, runs: number, overhead: (sb: Sandbox) => Promise<number>): Promise<BackendRow> {
  const first: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    const sb = await rt.create({ id: `bench-${name}-${i}`, vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 512 });
    try {
      await sb.start();
      const r = await run(sb, ['echo', 'hi']);
      first.push(performance.now() - t0 - (r.totalMs - r.firstMs));
    } finally {
      await sb.stop({ graceMs: 0 });
    }
  }
  const sb = await rt.create({ id: `bench-${name}`, vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 512 });
  try {
    await sb.start();
    await new Promise((r) => setTimeout(r, 1000));
    const overheadMiB = await overhead(sb);
    const c0 = (await sb.metrics()).cpuUsageUsec;
    await new Promise((r) => setTimeout(r, IDLE_S * 1000));
    const idleCpuPct = ((await sb.metrics()).cpuUsageUsec - c0) / (IDLE_S * 1e6) * 100;
    const up = (await sb.update({ vcpus: 2 })).totalMs;
    const down = (await sb.update({ vcpus: 1 })).totalMs;
    const loop = await run(sb, ['sh', '-c', LOOP(n)]);
    return {
      backend: name, accel: rt.accel, startToFirstOutputMs: r1(median(first)), resizeUpMs: r1(up), resizeDownMs: r1(down),
      hostOverheadMiB: r1(overheadMiB), idleCpuPct: r1(idleCpuPct), loopSeconds: Math.round(loop.totalMs / 10) / 100, cpuThroughputVsHost: Math.round((hostLoopS / (loop.totalMs / 1000)) * 100) / 100,
    };
  } finally {
    await sb.stop({ graceMs: 0 });
  }
}

export async function benchBackends(o: { runs?: number; loop?: number; log?: (m: string) => void } = {}): Promise<{ hostLoopSeconds: number; rows: BackendRow[] }> {
  const n = o.loop ?? 3_000_000;
  const runs = o.runs ?? 3;
  const t0 = performance.now();
  execFileSync('/bin/busybox', ['sh', '-c', LOOP(n)]);
  const hostLoopS = (performance.now() - t0) / 1000;
  o.log?.(`host loop: ${hostLoopS.toFixed(2)} s`);
  const dir = passableTmpDir('lodger-bench-backends-');
  const rows: BackendRow[] = [];
  try {
    const gv = await openGvisorRuntime({ host: { runDir: join(dir, 'gvisor') }, cgroupParent: `lodger-bench-gv-${process.pid}` });
    rows.push(await measure('gvisor', gv.runtime, n, hostLoopS, runs, async (sb) => (await sb.metrics()).memoryBytes / 1048576));
    o.log?.(`gvisor: ${JSON.stringify(rows.at(-1))}`);
    await gv.cgroups?.removeParents();
    const q = await openRuntime({ host: { runDir: join(dir, 'qemu') }, cgroupParent: `lodger-bench-q-${process.pid}` });
    rows.push(await measure('qemu', q.runtime, n, hostLoopS, runs, async (sb) => {
      const mem = await (sb as HostedSandbox).vmmMemory();
      return mem ? (mem.rssBytes - mem.guestRamRssBytes) / 1048576 : 0;
    }));
    o.log?.(`qemu: ${JSON.stringify(rows.at(-1))}`);
    await q.cgroups?.removeParents();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return { hostLoopSeconds: Math.round(hostLoopS * 100) / 100, rows };
}

export function backendTable(rows: BackendRow[]): string {
  const head = '| backend | accel | start to first output | vCPU resize up / down | host memory per sandbox | idle CPU | CPU loop vs host |\n|---|---|---|---|---|---|---|';
  return [head, ...rows.map((r) => `| ${r.backend} | ${r.accel} | ${r.startToFirstOutputMs} ms | ${r.resizeUpMs} / ${r.resizeDownMs} ms | ${r.hostOverheadMiB} MiB | ${r.idleCpuPct}% | ${Math.round(r.cpuThroughputVsHost * 100)}% (${r.loopSeconds} s) |`)].join('\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const json = process.argv.includes('--json');
  const res = await benchBackends({ log: json ? undefined : (m) => console.error(m) });
  console.log(json ? JSON.stringify(res) : `${backendTable(res.rows)}\nhost loop ${res.hostLoopSeconds.toFixed(2)} s`);
}
