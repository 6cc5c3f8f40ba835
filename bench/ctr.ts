// npm run bench:ctr -- [--json] [--rounds N]
// `ctr run` to first output and to exit, with runc against Lodger's shim, in the same run:
// a private containerd (Debian's) per Lodger backend, each with its own lodgerd (runtime
// qemu, and gvisor where runsc is installed), the same busybox-static image imported into
// each. Rounds are interleaved (runc, Lodger/QEMU, Lodger/gVisor, then again), since this
// host is noisy; medians over the rounds. The command is `echo hi`: what is measured is the
// runtime's start and end, not the work. Container jobs have a root of their own, so they
// never use lodgerd's warm pool (it holds sandboxes with the default root): every Lodger
// start here is cold, and lodgerd runs with no warm pool, wasting no CPU on one.
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cpus } from 'node:os';
import { buildBusyboxImage, haveContainerd, mountsUnder, PrivateContainerd, stopChild } from './containerd.ts';
import { percentile } from './services.ts';
import { connect } from '../daemon/index.ts';
import { TestDaemon } from './lodgerd.ts';
import { passableTmpDir } from './tmp.ts';

const { values } = parseArgs({ options: { json: { type: 'boolean', default: false }, rounds: { type: 'string', default: '5' } } });
const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds ${values.rounds}: a whole number of rounds, at least 1`);
const say = (m: string): void => { if (!values.json) console.error(m); };
if (!haveContainerd) throw new Error('containerd and ctr are needed: npm run setup installs Debian\'s containerd');
if (process.getuid?.() !== 0) throw new Error('run as root: containerd and the shim mount container roots');
const runsc = spawnSync('sh', ['-c', 'command -v runsc']).status === 0;

const IMAGE = 'docker.io/lodger/busybox:bench-ctr';
const NS = 'bench';
// Short: the sockets of containerd and the shims must fit in 108 bytes.
const dir = passableTmpDir('/tmp/lctr-');

interface Backend { name: string; lodgerd: TestDaemon; containerd: PrivateContainerd }
const backends: Backend[] = [];

async function backend(name: 'qemu' | 'gvisor'): Promise<Backend> {
  const base = join(dir, name[0]!);
  mkdirSync(join(base, 'policies'), { recursive: true });
  const socket = join(base, 'l.sock');
  const config = join(base, 'lodgerd.yaml');
  writeFileSync(config, `runtime: ${name}\nwarmPoolSize: 0\nmetricsAddress: ""\ncgroupParent: lodger-benchctr-${name}-${process.pid}\n`);
  const lodgerd = new TestDaemon(socket, ['--state-dir', join(base, 'state'), '--policy-dir', join(base, 'policies')]);
  const containerd = new PrivateContainerd({ dir: base, lodgerSocket: socket, sandboxImage: IMAGE });
  const b = { name, lodgerd, containerd };
  backends.push(b);
  await lodgerd.start(['-c', config], 60_000);
  await containerd.start();
  const imp = await containerd.ctr(NS, ['images', 'import', buildBusyboxImage(base, IMAGE)]);
  if (imp.code !== 0) throw new Error(`ctr images import: ${imp.stderr}`);
  return b;
}

/** One `ctr run --rm`: ms to its first stdout byte and to its exit; throws unless it printed hi and exited 0. */
function ctrRun(cd: PrivateContainerd, runtime: string | null, id: string): Promise<{ firstMs: number; exitMs: number }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let first = -1;
    let out = '';
    let err = '';
    const c = spawn('ctr', ['-a', cd.socket, '-n', NS, 'run', '--rm', ...(runtime ? ['--runtime', runtime] : []), IMAGE, id, 'echo', 'hi'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const timer = setTimeout(() => c.kill('SIGKILL'), 120_000);
    c.stdout.on('data', (b) => { if (first < 0) first = performance.now() - t0; out += b; });
    c.stderr.on('data', (b) => { err += b; });
    c.on('close', (code) => {
      clearTimeout(timer);
      const exitMs = performance.now() - t0;
      if (code !== 0 || out !== 'hi\n') return reject(new Error(`ctr run ${id} (${runtime ?? 'runc'}): exit ${code}, stdout ${JSON.stringify(out)}, stderr ${err.slice(-2000)}\n${cd.shimLog().slice(-3000)}`));
      resolve({ firstMs: first, exitMs });
    });
  });
}

const r1 = (x: number): number => Math.round(x * 10) / 10;
const median = (xs: number[]): number => percentile(xs, 50);

try {
  say(`bench:ctr: ${rounds} interleaved rounds on ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'})${runsc ? '' : '; runsc not installed, no gVisor column'}`);
  const q = await backend('qemu');
  const g = runsc ? await backend('gvisor') : null;
  const columns: { name: string; cd: PrivateContainerd; runtime: string | null }[] = [
    { name: 'runc', cd: q.containerd, runtime: null },
    { name: 'lodger-qemu', cd: q.containerd, runtime: 'io.containerd.lodger.v2' },
    ...(g ? [{ name: 'lodger-gvisor', cd: g.containerd, runtime: 'io.containerd.lodger.v2' }] : []),
  ];
  const first = new Map(columns.map((c) => [c.name, [] as number[]]));
  const exit = new Map(columns.map((c) => [c.name, [] as number[]]));
  const boot = new Map(columns.map((c) => [c.name, [] as number[]]));
  // One unmeasured run each: containerd's, runc's and the shim's first start load their binaries from disk.
  for (const c of columns) await ctrRun(c.cd, c.runtime, `warm-${c.name}`);
  for (let i = 0; i < rounds; i++) {
    // The order turns each round, so no column always follows the same one.
    for (let k = 0; k < columns.length; k++) {
      const c = columns[(i + k) % columns.length]!;
      const d = c.runtime ? (c.cd === q.containerd ? q : g!).lodgerd : null;
      const logFrom = d?.log.length ?? 0;
      const r = await ctrRun(c.cd, c.runtime, `r${i}-${c.name}`);
      first.get(c.name)!.push(r.firstMs);
      exit.get(c.name)!.push(r.exitMs);
      // Of the start, the sandbox's own boot (lodgerd logs "ready in N ms" for each).
      const ready = d ? /ready in (\d+) ms/.exec(d.log.slice(logFrom)) : null;
      if (ready) boot.get(c.name)!.push(Number(ready[1]));
      say(`round ${i + 1}: ${c.name.padEnd(13)} first output ${r.firstMs.toFixed(0)} ms, exit ${r.exitMs.toFixed(0)} ms${ready ? `, of which the sandbox's boot ${ready[1]} ms` : ''}`);
    }
  }
  const rows = Object.fromEntries(columns.map((c) => [c.name, {
    firstOutputMs: { median: r1(median(first.get(c.name)!)), min: r1(Math.min(...first.get(c.name)!)), max: r1(Math.max(...first.get(c.name)!)) },
    exitMs: { median: r1(median(exit.get(c.name)!)), min: r1(Math.min(...exit.get(c.name)!)), max: r1(Math.max(...exit.get(c.name)!)) },
    ...(boot.get(c.name)!.length ? { sandboxBootMs: { median: r1(median(boot.get(c.name)!)) } } : {}),
  }]));
  const runcFirst = rows.runc!.firstOutputMs.median;
  for (const c of columns) {
    const r = rows[c.name]!;
    say(`${c.name.padEnd(13)} first output median ${r.firstOutputMs.median} ms (${r.firstOutputMs.min}-${r.firstOutputMs.max}), exit median ${r.exitMs.median} ms, ${(r.firstOutputMs.median / runcFirst).toFixed(1)}x runc${r.sandboxBootMs ? `; sandbox boot median ${r.sandboxBootMs.median} ms` : ''}`);
  }
  const report = { bench: 'ctr', date: new Date().toISOString(), cpus: cpus().length, cpuModel: cpus()[0]?.model ?? '', rounds, command: 'echo hi', rows };
  console.log(JSON.stringify(report));
} finally {
  for (const b of backends) {
    await b.containerd.stop();
    if (b.lodgerd.running) {
      const api = connect(b.lodgerd.socket);
      await api.call('Shutdown', { drain: false }, 20_000).catch(() => {});
      api.close();
    }
    await stopChild(b.lodgerd.proc, null, 30_000);
    await b.lodgerd.end();
  }
  for (const m of mountsUnder(dir).reverse()) spawnSync('umount', ['-l', m]);
  rmSync(dir, { recursive: true, force: true });
}
