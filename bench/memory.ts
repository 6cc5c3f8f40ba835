// npm run bench:memory -- [--json] [--budget-mib N] [--step-mib N] [--steps N] [--phase-s N] [--rate N] [--slo-ms N] [--units N] [--scenarios unmanaged,lodger]
// Memory pressure for real. Everything runs inside ONE memory cgroup that the benchmark
// creates below its own, with a hard limit standing in for the host's memory (as a
// Kubernetes node's allocatable is a cgroup limit): redis (Debian) under a fixed request
// rate whose dataset grows in steps (DEBUG POPULATE) until the budget is nearly gone and
// then shrinks (FLUSHALL), next to two batch sandboxes whose jobs hold memory in guest
// RAM and keep hashing it, writing one line per unit to /output. Scenarios, one after the
// other in the same run: unmanaged (the jobs under `lodger run` with the memory they
// want) and under lodgerd (memoryBudgetCgroup = the budget; jobs may grow from 256 MiB).
// Per phase: redis p99, OOM kills inside the budget (memory.oom_control and the kernel
// log's oom-kill lines naming the budget), batch units, sandbox sizes; per scenario:
// memory given back per sandbox and how fast, suspend and restore times, every job's
// exit and whether its output is whole (each unit exactly once, each chunk's hash the
// same every time). The load generator runs outside the budget (it is the client).
// Nothing runs on the machine's own memory beyond the budget: the budget is checked
// against MemAvailable first. Everything started is stopped by pid; the cgroup is removed.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { connect, type ApiClient } from '../daemon/index.ts';
import { freePort, percentile } from './services.ts';

const { values } = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    'budget-mib': { type: 'string', default: '2560' },
    'step-mib': { type: 'string', default: '256' },
    steps: { type: 'string', default: '6' },
    'phase-s': { type: 'string', default: '12' },
    rate: { type: 'string', default: '400' },
    'slo-ms': { type: 'string', default: '5' },
    units: { type: 'string', default: '300' },
    scenarios: { type: 'string', default: 'unmanaged,lodger' },
  },
});
const BUDGET_MIB = Number(values['budget-mib']);
const STEP_MIB = Number(values['step-mib']);
const STEPS = Number(values.steps);
const PHASE_MS = Number(values['phase-s']) * 1000;
const RATE = Number(values.rate);
const SLO_MS = Number(values['slo-ms']);
const UNITS = Number(values.units);
const SCENARIOS = values.scenarios.split(',') as ('unmanaged' | 'lodger')[];
/** What each job holds in guest RAM, in 8 MiB chunks. */
const HOLD_CHUNKS = 40;
/** After each dataset step, this long counts as the step itself (not in p99 "outside the steps"). */
const STEP_GRACE_MS = 2000;
const say = (m: string): void => { if (!values.json) console.error(`[${new Date().toISOString().slice(11, 19)}] ${m}`); };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const root = join(import.meta.dirname, '..');

// The job: fill HOLD_CHUNKS chunks of 8 MiB in guest RAM while the guest has more than
// 48 MiB available (waiting for more otherwise: lodgerd grows a guest short of memory),
// (in a tmpfs of its own: the guest's /tmp is small), then UNITS units, each hashing 1 MiB of one chunk (touching what it holds), one line
// per unit to /output and "m" on stdout.
const JOB = `set -u; H=/tmp/held; mkdir -p $H; mount -t tmpfs -o size=700m tmpfs $H; n=0; w=0
while [ $n -lt ${HOLD_CHUNKS} ]; do
  a=$(awk '/^MemAvailable/{print $2}' /proc/meminfo)
  if [ "$a" -gt 49152 ]; then { echo "chunk $n"; head -c 8388000 /dev/zero; } > $H/c$n; n=$((n+1)); w=0
  else w=$((w+1)); [ $w -gt 90 ] && break; sleep 1; fi
done
echo "held $n" >> /output/out.txt; echo "held $n"
i=1; while [ $i -le ${UNITS} ]; do
  k=$((i % n)); h=$(dd if=$H/c$k bs=1048576 count=1 skip=$((i % 8)) 2>/dev/null | sha256sum | cut -c1-16)
  echo "$i $k $((i % 8)) $h" >> /output/out.txt; echo m; i=$((i+1)); sleep 0.2
done
echo "done ${UNITS}" >> /output/out.txt; sync; echo finished`;

/** Each unit exactly once, in order, and every (chunk, slice) hashing the same each time. */
function outputWhole(file: string): { whole: boolean; units: number; why: string } {
  let text = '';
  try { text = readFileSync(file, 'utf8'); } catch { return { whole: false, units: 0, why: 'no output' }; }
  const lines = text.split('\n').filter(Boolean);
  const seen = new Map<string, string>();
  let next = 1;
  for (const l of lines) {
    const f = l.split(' ');
    if (f[0] === 'held' || f[0] === 'done') continue;
    if (Number(f[0]) !== next) return { whole: false, units: next - 1, why: `unit ${f[0]} where ${next} was due` };
    const key = `${f[1]}/${f[2]}`;
    if (seen.has(key) && seen.get(key) !== f[3]) return { whole: false, units: next - 1, why: `chunk ${key} hashed differently` };
    seen.set(key, f[3]!);
    next++;
  }
  const done = lines.at(-1) === `done ${UNITS}`;
  return { whole: done && next - 1 === UNITS, units: next - 1, why: done ? '' : 'no final line' };
}

// ---- the budget cgroup ----
const memMount = '/sys/fs/cgroup/memory';
if (!existsSync(join(memMount, 'memory.limit_in_bytes'))) throw new Error('this benchmark needs the cgroup v1 memory hierarchy (the hosts it was written on); v2 is not done yet');
const own = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => /^\d+:memory:/.test(l))!.split(':')[2]!;
const BUDGET = join(own, `lodger-membench-${process.pid}`);
/** lodgerd's sandbox parent: below the budget in the memory hierarchy, below our own cgroup in the others. */
const DAEMON_PARENT = `lodger-membench-${process.pid}-d`;
const budgetDir = join(memMount, BUDGET);
const memAvailMiB = Number(/^MemAvailable:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))![1]) / 1024;
if (BUDGET_MIB > memAvailMiB / 3) throw new Error(`budget ${BUDGET_MIB} MiB is more than a third of the machine's ${memAvailMiB.toFixed(0)} MiB available: refusing`);
const readNum = (f: string): number => Number(readFileSync(join(budgetDir, f), 'utf8').trim());
const oomCount = (): number => Number(/oom_kill (\d+)/.exec(readFileSync(join(budgetDir, 'memory.oom_control'), 'utf8'))?.[1] ?? 0);
const kernelOomLines = (): string[] => {
  try {
    return execFileSync('dmesg', [], { encoding: 'utf8', maxBuffer: 64 << 20 }).split('\n').filter((l) => l.includes('oom-kill') && l.includes(`lodger-membench-${process.pid}`));
  } catch { return []; }
};

/** Spawns a process that joins the budget before it execs (every child it makes stays inside). */
function spawnIn(cmd: string, args: string[], opts: { stdout?: boolean; env?: NodeJS.ProcessEnv } = {}): ChildProcess {
  return spawn('/bin/sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', budgetDir, cmd, ...args], { stdio: ['ignore', opts.stdout ? 'pipe' : 'ignore', 'pipe'], env: opts.env ?? process.env });
}
const started: ChildProcess[] = [];
async function stopProc(c: ChildProcess, sig: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const gone = new Promise((r) => c.once('exit', r));
  c.kill(sig);
  await Promise.race([gone, sleep(graceMs)]);
  if (c.exitCode === null && c.signalCode === null) { c.kill('SIGKILL'); await Promise.race([gone, sleep(2000)]); }
}
/** Every pid left below the budget (what a killed parent left), by pid. */
function budgetPids(): number[] {
  const out: number[] = [];
  const walk = (d: string): void => {
    for (const p of readFileSync(join(d, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) out.push(Number(p));
    for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(join(d, e.name));
  };
  if (existsSync(budgetDir)) walk(budgetDir);
  return out;
}
/** lodgerd's sandbox parent in the other v1 hierarchies, if it left it (rmdir: only when empty). */
function removeDaemonParents(): void {
  for (const line of readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
    const m = /^\d+:([^:]+):(.*)$/.exec(line);
    if (!m || m[1] === 'memory') continue;
    const d = join('/sys/fs/cgroup', m[1]!.replace(/^name=/, ''), m[2]!, DAEMON_PARENT);
    try { if (existsSync(d)) rmdirSync(d); } catch (e) { console.error(`could not remove ${d}: ${(e as Error).message}`); }
  }
}
function removeBudget(): void {
  const rm = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) rm(join(d, e.name));
    rmdirSync(d);
  };
  if (existsSync(budgetDir)) rm(budgetDir);
}

// ---- redis ----
async function redisCmd(port: number, args: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1');
    let buf = '';
    const t = setTimeout(() => { c.destroy(); reject(new Error(`redis ${args[0]} timed out`)); }, timeoutMs);
    c.once('connect', () => c.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`));
    c.on('data', (b) => {
      buf += b.toString();
      const m = /^\$(\d+)\r\n/.exec(buf);
      if ((buf.startsWith('+') || buf.startsWith('-') || buf.startsWith(':')) && buf.endsWith('\r\n')) { clearTimeout(t); c.destroy(); resolve(buf.trim()); }
      else if (m && buf.length >= m[0].length + Number(m[1]) + 2) { clearTimeout(t); c.destroy(); resolve(buf.slice(m[0].length, m[0].length + Number(m[1]))); }
    });
    c.once('error', (e) => { clearTimeout(t); reject(e); });
  });
}
const redisRssMiB = async (port: number): Promise<number> => Number(/used_memory_rss:(\d+)/.exec(await redisCmd(port, ['INFO', 'memory']))?.[1] ?? 0) / 1048576;

// ---- one scenario ----
interface Phase { name: string; from: number; to: number; stepMs: number | null }
interface Sample { at: number; usageMiB: number; availMiB: number; redisMiB: number; oom: number; sandboxes: { id: string; state: string; memoryMiB: number }[] }

async function scenario(name: 'unmanaged' | 'lodger', dir: string): Promise<Record<string, unknown>> {
  say(`${name}: start`);
  const t0 = Date.now();
  const oomBefore = oomCount();
  // The budget's name is the same in both scenarios: only the kernel's lines from this one.
  const kernelBefore = kernelOomLines().length;
  const port = await freePort();
  const redis = spawnIn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--enable-debug-command', 'local']);
  started.push(redis);
  let redisExit: string | null = null;
  redis.once('exit', (code, sig) => { redisExit = `code ${code} signal ${sig}`; });
  for (let i = 0; i < 200; i++) { if ((await redisCmd(port, ['PING']).catch(() => '')) === '+PONG') break; await sleep(50); }
  const pidFile = join(dir, 'redis.pid');
  writeFileSync(pidFile, `${redis.pid}\n`);
  const units: Record<string, number[]> = { a: [], b: [] };
  const jobs: Record<string, { exit: string | null; output: string }> = {};
  let api: ApiClient | null = null;
  let daemon: ChildProcess | null = null;
  let daemonLog = '';
  const runs: ChildProcess[] = [];
  const decisions: { at: number; reason: string }[] = [];
  try {
    if (name === 'unmanaged') {
      for (const j of ['a', 'b']) {
        const out = join(dir, `out-${j}`);
        mkdirSync(out);
        jobs[j] = { exit: null, output: join(out, 'out.txt') };
        const c = spawnIn(process.execPath, [join(root, 'bin', 'lodger.js'), 'run', '--memory', '768M', '--max-memory', '768M', '--output', out, '--', 'sh', '-c', JOB], { stdout: true });
        started.push(c);
        runs.push(c);
        c.stdout!.setEncoding('utf8').on('data', (s: string) => { for (const l of s.split('\n')) if (l === 'm') units[j]!.push(Date.now()); });
        c.stderr!.on('data', () => {});
        c.once('exit', (code, sig) => { jobs[j]!.exit = sig ? `signal ${sig}` : `exit ${code}`; });
      }
    } else {
      const base = join(dir, 'lodgerd');
      const policyDir = join(base, 'policies');
      mkdirSync(policyDir, { recursive: true });
      writeFileSync(join(policyDir, 'redis.yaml'), `apiVersion: lodger.dev/v1\nkind: OnlineService\nmetadata: { name: redis }\nspec:\n  slo: { percentile: 99, target: ${SLO_MS}ms, window: 2s }\n  probe: { redis: { address: "127.0.0.1:${port}" }, interval: 100ms, timeout: 500ms }\n  process: { pidFile: ${pidFile} }\n`);
      writeFileSync(join(policyDir, 'pool.yaml'), 'apiVersion: lodger.dev/v1\nkind: BatchPool\nmetadata: { name: batch }\nspec:\n  reserve: { cpus: 0, memory: 256Mi }\n  sandbox: { minVcpus: 1, maxVcpus: 1, minMemory: 256Mi, maxMemory: 768Mi }\n  growth: { cooldown: 3s, memoryStep: 128Mi }\n');
      const config = join(base, 'lodgerd.yaml');
      writeFileSync(config, `warmPoolSize: 0\nmaxRunningJobs: 2\nonSigterm: stop-sandboxes\nmetricsAddress: ""\ncgroupParent: ${DAEMON_PARENT}\nmemoryBudgetCgroup: ${BUDGET}\n`);
      const socket = join(base, 'lodgerd.sock');
      daemon = spawnIn(process.execPath, [join(root, 'bin', 'lodgerd.js'), '--config', config, '--state-dir', join(base, 'state'), '--socket', socket, '--policy-dir', policyDir]);
      started.push(daemon);
      daemon.stderr!.setEncoding('utf8').on('data', (s: string) => { daemonLog += s; });
      const deadline = Date.now() + 60_000;
      while (!daemonLog.includes(`listening on ${socket}`)) {
        if (daemon.exitCode !== null || Date.now() > deadline) throw new Error(`lodgerd did not start:\n${daemonLog}`);
        await sleep(50);
      }
      api = connect(socket);
      const events = api.stream('WatchEvents', {});
      events.on('data', (e: { kind?: string; atMs?: string | number; reason?: string }) => { if (e.kind === 'decision') decisions.push({ at: Number(e.atMs), reason: e.reason ?? '' }); });
      events.on('error', () => {});
      for (const j of ['a', 'b']) {
        const out = join(dir, `out-${j}`);
        mkdirSync(out);
        jobs[j] = { exit: null, output: join(out, 'out.txt') };
        await api.call('SubmitJob', { id: `mem-${j}`, spec: { name: j, command: ['sh', '-c', JOB], outputDir: out, vcpus: { min: 1, max: 1 }, memoryMib: { min: 256, max: 768 } } });
        const logs = api.stream('StreamLogs', { id: `mem-${j}`, follow: true });
        logs.on('data', (c: { stream?: string; data?: Buffer }) => { if (c.stream === 'stdout' && c.data) for (const l of c.data.toString().split('\n')) if (l === 'm') units[j]!.push(Date.now()); });
        logs.on('error', () => {});
      }
    }
    // The jobs hold their memory before the dataset grows (under lodgerd the guests grow into it).
    const heldBy = Date.now() + 240_000;
    while (!(units.a!.length > 0 && units.b!.length > 0) && Date.now() < heldBy) await sleep(500);
    say(`${name}: jobs hold their memory after ${((Date.now() - t0) / 1000).toFixed(0)} s; budget usage ${(readNum('memory.usage_in_bytes') / 1048576).toFixed(0)} MiB`);

    const samples: Sample[] = [];
    const client = api;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        let sbs: Sample['sandboxes'] = [];
        if (client) {
          const st = await client.call<{ sandboxes?: { id: string; state: string; memoryMib?: number }[] }>('GetStatus', {}).catch(() => null);
          sbs = (st?.sandboxes ?? []).map((s) => ({ id: s.id, state: s.state, memoryMiB: s.memoryMib ?? 0 }));
        }
        const usage = readNum('memory.usage_in_bytes') / 1048576;
        const stat = readFileSync(join(budgetDir, 'memory.stat'), 'utf8');
        const inactive = Number(/total_inactive_file (\d+)/.exec(stat)?.[1] ?? 0) / 1048576;
        samples.push({ at: Date.now(), usageMiB: usage, availMiB: BUDGET_MIB - usage + inactive, redisMiB: await redisRssMiB(port).catch(() => -1), oom: oomCount(), sandboxes: sbs });
        await sleep(250);
      }
    })();

    // The load, for the whole run of phases (outside the budget: it is the client).
    const totalMs = PHASE_MS * (STEPS + 4);
    const load = spawn(process.execPath, ['--import', 'tsx', join(root, 'bench', 'colocation', 'redis-load.ts'), '--port', String(port), '--rate', String(RATE), '--seconds', String(totalMs / 1000)], { stdio: ['ignore', 'pipe', 'ignore'] });
    started.push(load);
    let loadOut = '';
    load.stdout!.setEncoding('utf8').on('data', (s: string) => { loadOut += s; });
    const loadDone = new Promise((r) => load.once('exit', r));
    await sleep(500);
    const phases: Phase[] = [];
    const phase = async (pname: string, step: (() => Promise<void>) | null): Promise<void> => {
      const from = Date.now();
      let stepMs: number | null = null;
      if (step) { await step().catch((e: Error) => say(`${name}: ${pname}: ${e.message}`)); stepMs = Date.now() - from; }
      const until = from + PHASE_MS;
      while (Date.now() < until) await sleep(100);
      phases.push({ name: pname, from, to: Date.now(), stepMs });
      const s = samples.at(-1);
      say(`${name}: ${pname}: redis ${s?.redisMiB.toFixed(0)} MiB, budget available ${s?.availMiB.toFixed(0)} MiB, OOM kills ${oomCount() - oomBefore}${s?.sandboxes.length ? `, sandboxes ${s.sandboxes.map((x) => `${x.id.slice(0, 8)} ${x.state} ${x.memoryMiB}`).join('; ')}` : ''}`);
    };
    await phase('base', null);
    const valueBytes = 4096;
    const keysPerStep = Math.round((STEP_MIB * 1048576) / (valueBytes + 200));
    for (let k = 1; k <= STEPS; k++) {
      await phase(`grow ${k}`, async () => {
        // One connection: SELECT the step's own database, then DEBUG POPULATE into it.
        await new Promise<void>((resolve, reject) => {
          const c = net.connect(port, '127.0.0.1');
          const cmd = (a: string[]): string => `*${a.length}\r\n${a.map((x) => `$${x.length}\r\n${x}\r\n`).join('')}`;
          let got = '';
          c.once('connect', () => c.write(cmd(['SELECT', String(k)]) + cmd(['DEBUG', 'POPULATE', String(keysPerStep), `s${k}`, String(valueBytes)])));
          c.on('data', (b) => { got += b.toString(); if (got.split('\r\n').length > 2) { c.destroy(); if (got.includes('-ERR')) reject(new Error(got.trim())); else resolve(); } });
          c.once('error', reject);
          c.once('close', () => resolve());
        });
      });
    }
    // The steps' own databases only: the load's key lives in db 0 (its replies are counted by length).
    await phase('shrink', async () => {
      await new Promise<void>((resolve, reject) => {
        const c = net.connect(port, '127.0.0.1');
        const cmd = (a: string[]): string => `*${a.length}\r\n${a.map((x) => `$${x.length}\r\n${x}\r\n`).join('')}`;
        let got = '';
        c.once('connect', () => c.write(Array.from({ length: STEPS }, (_, i) => cmd(['SELECT', String(i + 1)]) + cmd(['FLUSHDB'])).join('')));
        c.on('data', (b) => { got += b.toString(); if (got.split('\r\n').length > 2 * STEPS) { c.destroy(); resolve(); } });
        c.once('error', reject);
        c.once('close', () => resolve());
      });
      await redisCmd(port, ['MEMORY', 'PURGE']).catch(() => '');
    });
    await phase('after 1', null);
    await phase('after 2', null);
    await phase('after 3', null);
    await loadDone;
    sampling = false;
    await sampler;

    // Jobs: every one to its end (under lodgerd a suspended one comes back first).
    const endBy = Date.now() + 300_000;
    const jobState = async (j: string): Promise<string> => (await api!.call<{ state: string; exitCode?: number }>('GetJob', { id: `mem-${j}` })).state;
    for (;;) {
      if (name === 'unmanaged') { if (Object.values(jobs).every((x) => x.exit !== null)) break; }
      else {
        const states = await Promise.all(['a', 'b'].map(jobState));
        if (states.every((s) => ['succeeded', 'failed', 'cancelled'].includes(s))) { for (const [i, j] of ['a', 'b'].entries()) jobs[j]!.exit = states[i]!; break; }
      }
      if (Date.now() > endBy) { for (const j of ['a', 'b']) jobs[j]!.exit ??= 'did not end in 300 s'; break; }
      await sleep(1000);
    }

    // ---- figures ----
    const lines = loadOut.split('\n');
    const loadStart = Number(lines.find((l) => l.startsWith('# start'))?.split(' ')[2] ?? t0);
    const lat = lines.filter((l) => /^\d/.test(l)).map((l) => { const [o, ms] = l.split(',').map(Number); return { at: loadStart + o!, ms: ms! }; });
    const sent = Number(/# sent (\d+) received (\d+)/.exec(loadOut)?.[1] ?? 0);
    const received = Number(/# sent (\d+) received (\d+)/.exec(loadOut)?.[2] ?? 0);
    const inStep = (at: number): boolean => phases.some((p) => p.stepMs !== null && at >= p.from && at <= p.from + p.stepMs + STEP_GRACE_MS);
    const p99 = (xs: number[]): number | null => (xs.length ? Number(percentile(xs, 99).toFixed(2)) : null);
    const perPhase = phases.map((p) => {
      const xs = lat.filter((x) => x.at >= p.from && x.at < p.to);
      const s = samples.filter((x) => x.at >= p.from && x.at < p.to);
      return {
        name: p.name, stepMs: p.stepMs, p99Ms: p99(xs.map((x) => x.ms)), p99OutsideStepMs: p99(xs.filter((x) => !inStep(x.at)).map((x) => x.ms)),
        redisMiB: Math.round(Math.max(0, ...s.map((x) => x.redisMiB))), minAvailableMiB: Math.round(Math.min(...s.map((x) => x.availMiB))),
        oomKills: (s.at(-1)?.oom ?? oomBefore) - oomBefore, batchUnits: Object.values(units).reduce((n, u) => n + u.filter((t) => t >= p.from && t < p.to).length, 0),
        sandboxes: s.at(-1)?.sandboxes.map((x) => `${x.id} ${x.state} ${x.memoryMiB} MiB`) ?? [],
      };
    });
    // Give-back, suspend and restore, per sandbox, from lodgerd's status every 250 ms.
    const moves: { sandbox: string; kind: string; fromMiB: number; toMiB: number; ms: number | null }[] = [];
    for (const id of new Set(samples.flatMap((s) => s.sandboxes.map((x) => x.id)))) {
      let prev: Sample['sandboxes'][number] | null = null;
      let stateSince = 0;
      for (const s of samples) {
        const x = s.sandboxes.find((y) => y.id === id);
        if (!x) continue;
        if (prev && x.memoryMiB < prev.memoryMiB && x.state === 'running') {
          const asked = [...decisions].reverse().find((d) => d.at <= s.at && d.reason.includes(`of ${id} (${prev!.memoryMiB} ->`));
          moves.push({ sandbox: id, kind: 'give-back', fromMiB: prev.memoryMiB, toMiB: x.memoryMiB, ms: asked ? s.at - asked.at : null });
        }
        if (prev && x.memoryMiB > prev.memoryMiB && x.state === 'running') moves.push({ sandbox: id, kind: 'grow', fromMiB: prev.memoryMiB, toMiB: x.memoryMiB, ms: null });
        if (prev && prev.state !== x.state) {
          if (prev.state === 'suspending' && x.state === 'suspended') moves.push({ sandbox: id, kind: 'suspend', fromMiB: x.memoryMiB, toMiB: 0, ms: s.at - stateSince });
          if (prev.state === 'resuming' && x.state === 'running') moves.push({ sandbox: id, kind: 'restore', fromMiB: 0, toMiB: x.memoryMiB, ms: s.at - stateSince });
          stateSince = s.at;
        }
        prev = x;
      }
    }
    const kernel = kernelOomLines().slice(kernelBefore);
    const outputs = Object.fromEntries(Object.entries(jobs).map(([j, x]) => [j, { exit: x.exit, ...outputWhole(x.output) }]));
    const completed = Object.values(outputs).filter((o) => o.exit === 'exit 0' || o.exit === 'succeeded').length;
    const outside = lat.filter((x) => !inStep(x.at) && phases.some((p) => x.at >= p.from && x.at < p.to)).map((x) => x.ms);
    return {
      // v1 counts a kill in the victim's own cgroup (a sandbox's, gone with it): the kernel's lines name the budget.
      oomKills: Math.max(oomCount() - oomBefore, kernel.length),
      onlineOomKilled: redisExit !== null && /SIGKILL/.test(String(redisExit)),
      redisExit, p99Ms: p99(outside), p99WithStepsMs: p99(lat.map((x) => x.ms)), sloMs: SLO_MS, requests: { sent, received },
      batchJobsCompleted: completed, batchJobsTotal: 2, outputsWhole: Object.values(outputs).every((o) => o.whole),
      batchUnits: Object.values(units).reduce((n, u) => n + u.length, 0),
      jobs: outputs, phases: perPhase, memoryMoves: moves, kernelOomLines: kernel.slice(-6),
      memoryDecisions: decisions.filter((d) => /memory|suspend|restore|gave back/.test(d.reason)).slice(-30).map((d) => `${new Date(d.at).toISOString().slice(11, 19)} ${d.reason.slice(0, 300)}`),
      seconds: Math.round((Date.now() - t0) / 1000),
    };
  } finally {
    if (api) {
      for (const j of ['a', 'b']) await api.call('CancelJob', { id: `mem-${j}` }).catch(() => {});
      api.close();
    }
    if (daemon) await stopProc(daemon, 'SIGTERM', 20_000);
    for (const c of runs) await stopProc(c, 'SIGTERM', 10_000);
    await stopProc(redis);
    // Whatever a killed parent left inside the budget (a VMM), by pid.
    for (let i = 0; i < 50 && budgetPids().length; i++) {
      for (const p of budgetPids()) { try { process.kill(p, 'SIGKILL'); } catch { /* gone */ } }
      await sleep(100);
    }
    say(`${name}: stopped (${budgetPids().length} processes left in the budget)`);
  }
}

// ---- main ----
mkdirSync(budgetDir);
const dir = mkdtempSync(join(tmpdir(), 'lodger-membench-'));
const result: Record<string, unknown> = {};
try {
  writeFileSync(join(budgetDir, 'memory.limit_in_bytes'), String(BUDGET_MIB * 1048576));
  say(`budget ${BUDGET} limit ${BUDGET_MIB} MiB (machine MemAvailable ${memAvailMiB.toFixed(0)} MiB); redis +${STEP_MIB} MiB x ${STEPS} at ${RATE} req/s, ${PHASE_MS / 1000} s phases`);
  const scenarios: Record<string, unknown> = {};
  for (const s of SCENARIOS) {
    const d = join(dir, s);
    mkdirSync(d);
    scenarios[s] = await scenario(s, d);
  }
  Object.assign(result, {
    date: new Date().toISOString(), accelerator: 'tcg', budgetMiB: BUDGET_MIB, stepMiB: STEP_MIB, steps: STEPS, phaseSeconds: PHASE_MS / 1000, rate: RATE, units: UNITS, scenarios,
  });
} finally {
  for (const c of started) await stopProc(c, 'SIGKILL', 1000);
  removeDaemonParents();
  try { removeBudget(); } catch (e) { console.error(`could not remove ${budgetDir}: ${(e as Error).message}`); }
  rmSync(dir, { recursive: true, force: true });
}
if (values.json) console.log(JSON.stringify(result));
else console.log(JSON.stringify(result, null, 2));
