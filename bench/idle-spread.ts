// Batch work on every CPU with nothing else to run: what cpu.idle (and cpu.weight) on its
// cgroups cost it, per backend. The colocation benchmark's two jobs in their sandboxes
// (bench/colocation/batch.ts), their cgroups set by hand between variants, interleaved
// over rounds: units of work per second and the CPU time each sandbox's cgroup used.
// A backend whose work falls under cpu.idle with the same CPU time does less when lodgerd
// spreads it over the service's CPUs than on the batch CPUs alone.
//   node --import tsx bench/idle-spread.ts [--backends gvisor,qemu] [--rounds 3] [--seconds 10]
// cgroup v1 only (these hosts): the knobs are written to cpu/ and read from cpuacct/.
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startDirect, type DirectBatch } from './colocation/index.ts';
import { median } from './services.ts';
import { passableTmpDir } from './tmp.ts';

const { values } = parseArgs({ options: { backends: { type: 'string', default: 'gvisor,qemu' }, rounds: { type: 'string', default: '3' }, seconds: { type: 'string', default: '10' } } });
const CPU = '/sys/fs/cgroup/cpu';
if (!existsSync(join(CPU, 'cpu.shares'))) throw new Error('bench/idle-spread.ts reads cgroup v1 (cpu/, cpuacct/): not mounted here');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const all = `0-${cpus().length - 1}`;
const batchCpus = cpus().length > 1 ? `1-${cpus().length - 1}` : '0';

/** parent cpu.idle, the sandboxes' cpu.idle, cpu.shares of both (where not idle), the sandboxes' cpuset. */
const VARIANTS: Record<string, { parentIdle: boolean; kidsIdle: boolean; shares: number; cpus: string }> = {
  plain: { parentIdle: false, kidsIdle: false, shares: 1024, cpus: all },
  'parent-idle': { parentIdle: true, kidsIdle: false, shares: 1024, cpus: all },
  'sandboxes-idle': { parentIdle: false, kidsIdle: true, shares: 1024, cpus: all },
  'idle-all': { parentIdle: true, kidsIdle: true, shares: 1024, cpus: all },
  'weight-1': { parentIdle: false, kidsIdle: false, shares: 2, cpus: all },
  'batch-cpus': { parentIdle: false, kidsIdle: false, shares: 1024, cpus: batchCpus },
};

const dir = passableTmpDir('lodger-idlespread-');
const parent = `lodger-coloc-${process.pid}`;
const rows: { backend: string; variant: string; round: number; cpuUnits: number; memUnits: number; cpuUse: number; memUse: number }[] = [];
let batch: DirectBatch | null = null;
try {
  for (const backend of values.backends.split(',') as ('gvisor' | 'qemu')[]) {
    batch = await startDirect(dir, backend, backend);
    const kids = readdirSync(join(CPU, parent), { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
    const kid = (job: string): string => kids.find((k) => k.endsWith(`-${job}`))!;
    const use = (): Record<string, number> => Object.fromEntries(kids.map((k) => [k, Number(readFileSync(join('/sys/fs/cgroup/cpuacct', parent, k, 'cpuacct.usage'), 'utf8')) / 1e9]));
    await sleep(8000); // the memory job fills its buffer first
    for (let round = 1; round <= Number(values.rounds); round++) {
      // Each round starts one variant later: none always follows the same one.
      const names = Object.keys(VARIANTS);
      for (const name of names.map((_, i) => names[(i + round - 1) % names.length]!)) {
        const v = VARIANTS[name]!;
        await batch.set({ cpus: v.cpus, cpuIdle: false });
        writeFileSync(join(CPU, parent, 'cpu.idle'), v.parentIdle ? '1' : '0');
        if (!v.parentIdle) writeFileSync(join(CPU, parent, 'cpu.shares'), String(v.shares));
        for (const k of kids) {
          writeFileSync(join(CPU, parent, k, 'cpu.idle'), v.kidsIdle ? '1' : '0');
          if (!v.kidsIdle) writeFileSync(join(CPU, parent, k, 'cpu.shares'), String(v.shares));
        }
        await sleep(2000);
        const u0 = use(); const t0 = Date.now();
        await sleep(Number(values.seconds) * 1000);
        const u1 = use(); const t1 = Date.now();
        const r = batch.units.rates(t0, t1);
        const s = (t1 - t0) / 1000;
        const row = { backend, variant: name, round, cpuUnits: r.cpu!, memUnits: r.mem!, cpuUse: (u1[kid('cpu')]! - u0[kid('cpu')]!) / s, memUse: (u1[kid('mem')]! - u0[kid('mem')]!) / s };
        rows.push(row);
        console.error(`${backend} round ${round} ${name.padEnd(14)}: cpu job ${row.cpuUnits.toFixed(2)} units/s on ${row.cpuUse.toFixed(2)} CPUs, mem job ${row.memUnits.toFixed(2)} units/s on ${row.memUse.toFixed(2)} CPUs`);
      }
    }
    writeFileSync(join(CPU, parent, 'cpu.idle'), '0');
    writeFileSync(join(CPU, parent, 'cpu.shares'), '1024');
    for (const k of kids) {
      writeFileSync(join(CPU, parent, k, 'cpu.idle'), '0');
      writeFileSync(join(CPU, parent, k, 'cpu.shares'), '1024');
    }
    await batch.stop();
    batch = null;
  }
} finally {
  await batch?.stop();
  rmSync(dir, { recursive: true, force: true });
}
console.log('| backend | variant | cpu job units/s | its CPUs | per CPU-second | mem job units/s | its CPUs |');
console.log('|---|---|---|---|---|---|---|');
for (const b of new Set(rows.map((r) => r.backend))) {
  for (const v of Object.keys(VARIANTS)) {
    const m = rows.filter((r) => r.backend === b && r.variant === v);
    const f = (k: 'cpuUnits' | 'memUnits' | 'cpuUse' | 'memUse'): number => median(m.map((r) => r[k]));
    console.log(`| ${b} | ${v} | ${f('cpuUnits').toFixed(2)} | ${f('cpuUse').toFixed(2)} | ${(f('cpuUnits') / f('cpuUse')).toFixed(2)} | ${f('memUnits').toFixed(2)} | ${f('memUse').toFixed(2)} |`);
  }
}
