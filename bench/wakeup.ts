// npm run bench:wakeup -- [--json] [--seconds N] [--rounds N] [--spinners N]
// What each CPU setting for batch costs a service's wake-ups, without the service: a
// task on CPU 0 that sleeps 1 ms between "requests" (bench/wakeup/meter.c) next to
// CPU-bound batch threads in a real cgroup of this kernel, placed as each fixed setting
// and lodgerd's knobs would place them. Explains the colocation benchmark's finding that
// cpu.idle on every CPU held the tail better than the static cpuset split: a CPU left
// idle between requests has to wake up (on a VM host, through the hypervisor), a CPU
// running idle-class batch only has to preempt it. Scenarios interleave in rounds with a
// rotating order; figures are medians over the rounds.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { CgroupManager } from '../sandbox-runtime/index.ts';
import { percentile } from './services.ts';

const { values } = parseArgs({ options: {
  json: { type: 'boolean', default: false }, seconds: { type: 'string', default: '5' },
  rounds: { type: 'string', default: '3' }, spinners: { type: 'string', default: '3' },
} });
const say = (m: string): void => { if (!values.json) console.error(m); };
const n = cpus().length;
if (n < 2) throw new Error('needs two CPUs or more: the service on CPU 0, batch on the rest');
const ALL = `0-${n - 1}`;
const REST = n === 2 ? '1' : `1-${n - 1}`;

type Scenario = 'solo' | 'static' | 'static-idle' | 'idle-all' | 'unmanaged' | 'cpuset-moves';
const SETTINGS: Record<Exclude<Scenario, 'solo' | 'cpuset-moves'>, { cpus: string; cpuIdle: boolean }> = {
  static: { cpus: REST, cpuIdle: false }, 'static-idle': { cpus: REST, cpuIdle: true },
  'idle-all': { cpus: ALL, cpuIdle: true }, unmanaged: { cpus: ALL, cpuIdle: false },
};
const scenarios: Scenario[] = ['solo', 'static', 'static-idle', 'idle-all', 'unmanaged', 'cpuset-moves'];

const dir = mkdtempSync(join(tmpdir(), 'lodger-wakeup-'));
const src = new URL('./wakeup/', import.meta.url).pathname;
for (const p of ['meter', 'spin']) execFileSync('gcc', ['-O2', '-o', join(dir, p), join(src, `${p}.c`)]);

const mgr = new CgroupManager({ host: { root: '/sys/fs/cgroup', proc: '/proc' }, parent: `lodger-wakeup-${process.pid}` });
const parent = await mgr.openParent();
const batch = await mgr.create('batch');
const spinners: ChildProcess[] = [];

async function measure(): Promise<number[]> {
  const meter = spawn('taskset', ['-c', '0', join(dir, 'meter'), values.seconds], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  meter.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  await new Promise<void>((resolve, reject) => meter.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`meter exited ${code}`)))));
  return out.split('\n').filter(Boolean).map(Number).sort((a, b) => a - b);
}

const results: Record<Scenario, { p50: number; p99: number; p999: number; max: number }[]> = Object.fromEntries(scenarios.map((s) => [s, []])) as never;
try {
  for (let i = 0; i < Number(values.spinners); i++) {
    const p = spawn(join(dir, 'spin'), [], { stdio: 'ignore' });
    spinners.push(p);
    await new Promise((r) => p.once('spawn', r));
    for (const f of batch.procsFiles) await writeFile(f, String(p.pid));
  }
  const signal = (sig: NodeJS.Signals): void => { for (const p of spinners) p.kill(sig); };
  const rounds = Number(values.rounds);
  for (let round = 0; round < rounds; round++) {
    const order = scenarios.map((_, i) => scenarios[(i + round) % scenarios.length]!);
    for (const sc of order) {
      let mover: NodeJS.Timeout | null = null;
      if (sc === 'solo') signal('SIGSTOP');
      else {
        signal('SIGCONT');
        const s = sc === 'cpuset-moves' ? { cpus: ALL, cpuIdle: true } : SETTINGS[sc];
        // cpu.idle on the parent too, as lodgerd sets it: on the child alone it only ranks siblings.
        await parent.apply({ cpus: ALL, cpuIdle: s.cpuIdle });
        await batch.apply(s);
        if (sc === 'cpuset-moves') {
          // cpu.idle throughout, the cpuset moved every 250 ms: a controller that clamps and releases it.
          let off = false;
          mover = setInterval(() => { off = !off; void batch.apply({ cpus: off ? REST : ALL }); }, 250);
        }
      }
      const l = await measure();
      if (mover) clearInterval(mover);
      const r = { p50: percentile(l, 50), p99: percentile(l, 99), p999: percentile(l, 99.9), max: l.at(-1)! };
      results[sc].push(r);
      say(`round ${round + 1} ${sc.padEnd(12)} p50 ${r.p50} us, p99 ${r.p99} us, p99.9 ${r.p999} us, max ${r.max} us`);
    }
  }
} finally {
  for (const p of spinners) { p.kill('SIGCONT'); p.kill('SIGKILL'); }
  await Promise.all(spinners.map((p) => (p.exitCode === null && p.signalCode === null ? new Promise((r) => p.once('exit', r)) : null)));
  await batch.destroy().catch(() => {});
  await mgr.removeParents().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
}

const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const rows = scenarios.map((s) => ({
  scenario: s, p50Us: med(results[s].map((r) => r.p50)), p99Us: med(results[s].map((r) => r.p99)),
  p999Us: med(results[s].map((r) => r.p999)), maxUs: med(results[s].map((r) => r.max)),
}));
if (values.json) console.log(JSON.stringify({ cpus: n, spinners: Number(values.spinners), seconds: Number(values.seconds), rounds: Number(values.rounds), rows }, null, 2));
else {
  console.log(`| batch placement (${values.spinners} spinning threads) | p50 us | p99 us | p99.9 us | max us |\n|---|---|---|---|---|`);
  for (const r of rows) console.log(`| ${r.scenario} | ${r.p50Us} | ${r.p99Us} | ${r.p999Us} | ${r.maxUs} |`);
}
