// bench/hostile.ts's "lodgerd killed mid-suspend", with the whole daemon: a real lodgerd
// and its VMMs in a small memory budget cgroup (cgroup v1, as test/memory.test.ts makes
// for the control loop alone), two jobs (one whose guest holds all it has), and a filler
// that grows until lodgerd's controller suspends a guest to disk. When the guest's saved
// state starts being written (its `.part` file), lodgerd is killed
// (SIGKILL) a random 0-300 ms later and started again in the budget; the filler then goes,
// and the suspended job must be restored and go on: one attempt, its output once, in order
// (the holding job to its end; the other, which sleeps after one line, running again).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { connect, type ApiClient } from '../daemon/index.ts';
import { storedStdout, TestDaemon } from './lodgerd.ts';

const MEM = '/sys/fs/cgroup/memory';
const UNITS = 240;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface LodgerdSuspendKill {
  ran: boolean;
  why?: string;
  /** ms from the suspend decision to the kill; what the restarted lodgerd found the job as. */
  killMs?: number;
  suspended?: string;
  foundState?: string;
  final?: string;
  attempts?: number;
  whole?: boolean;
  /** The job's states as lodgerd stored them, in order. */
  states?: string[];
}

export async function lodgerdKillMidSuspend(dir: string, say: (m: string) => void): Promise<LodgerdSuspendKill> {
  if (!existsSync(join(MEM, 'memory.limit_in_bytes'))) return { ran: false, why: 'no cgroup v1 memory hierarchy' };
  const own = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => /^\d+:memory:/.test(l))!.split(':')[2]!;
  const budget = join(own, `lodger-hostile-budget-${process.pid}`);
  const bdir = join(MEM, budget);
  mkdirSync(bdir);
  writeFileSync(join(bdir, 'memory.limit_in_bytes'), String(1536 * 1048576));
  const usage = (): number => Number(readFileSync(join(bdir, 'memory.usage_in_bytes'), 'utf8')) / 1048576;
  const server = createServer((s) => s.end());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = join(dir, 'lodgerd-suspend');
  const policyDir = join(base, 'policies');
  mkdirSync(policyDir, { recursive: true });
  writeFileSync(join(base, 'lodgerd.yaml'), `warmPoolSize: 0\nmaxRunningJobs: 2\nonSigterm: stop-sandboxes\nmetricsAddress: ""\ncgroupParent: lodger-hostile-${process.pid}-s\nruntime: qemu\nmemoryBudgetCgroup: ${budget}\n`);
  writeFileSync(join(policyDir, 'svc.yaml'), `apiVersion: lodger.dev/v1
kind: OnlineService
metadata: { name: svc }
spec:
  slo: { percentile: 99, target: 200ms, window: 1s }
  probe: { tcp: { address: "127.0.0.1:${(server.address() as AddressInfo).port}" }, interval: 100ms, timeout: 1s }
---
apiVersion: lodger.dev/v1
kind: BatchPool
metadata: { name: default }
spec:
  reserve: { cpus: 0, memory: 200Mi }
  sandbox: { maxVcpus: 1, minMemory: 256Mi, maxMemory: 512Mi }
  knobs: [cpu.idle]
  keepApplied: [cpu.idle]
  growth: { cooldown: 1s, memoryStep: 64Mi }
`);
  const daemon = new TestDaemon(join(base, 'lodgerd.sock'), ['--config', join(base, 'lodgerd.yaml'), '--state-dir', join(base, 'state'), '--policy-dir', policyDir], null, join(bdir, 'cgroup.procs'));
  let filler: ChildProcess | null = null;
  let api: ApiClient | null = null;
  try {
    await daemon.start();
    api = connect(daemon.socket);
    let suspendAt: number | null = null;
    let suspended = '';
    const events = api.stream('WatchEvents', {});
    const reasons: string[] = [];
    events.on('data', (e: { kind?: string; reason?: string }) => {
      if (e.kind !== 'decision') return;
      reasons.push(e.reason ?? '');
      if (reasons.length > 5) reasons.shift();
    });
    events.on('error', () => {});
    const mem = { min: 512, max: 512 };
    await api.call('SubmitJob', { id: 'spare', spec: { name: 'spare', command: ['sh', '-c', 'mkdir -p /tmp/h; mount -t tmpfs -o size=400m tmpfs /tmp/h; head -c 268435456 /dev/zero > /tmp/h/x; rm /tmp/h/x; echo freed; sleep 3600'], memoryMib: mem } });
    await api.call('SubmitJob', { id: 'hold', spec: { name: 'hold', command: ['sh', '-c', 'mkdir -p /tmp/h; mount -t tmpfs -o size=500m tmpfs /tmp/h; n=0; while [ $(awk \'/^MemAvailable/{print $2}\' /proc/meminfo) -gt 40960 ]; do head -c 4194304 /dev/zero > /tmp/h/c$n; n=$((n+1)); done; echo held $n; '
      + `i=1; while [ $i -le ${UNITS} ]; do echo "$i"; i=$((i+1)); sleep 0.5; done; echo done`], memoryMib: mem } });
    const logs = (id: string): Promise<string> => storedStdout(api!, id);
    const until = Date.now() + 180_000;
    while (!((await logs('spare')).includes('freed') && (await logs('hold')).includes('held'))) {
      if (Date.now() > until) return { ran: false, why: 'the jobs did not take their memory in 180 s' };
      await sleep(500);
    }
    // The filler grows 20 MiB/s until the budget is 64 MiB from its limit (never to an OOM
    // kill): whatever lodgerd gives back, the pressure comes back until it suspends a guest.
    const grow = 'import sys,time\nf=sys.argv[1]; lim=int(sys.argv[2]); held=[]\nwhile True:\n  if int(open(f).read()) < lim - (64<<20): held.append(bytearray(b"x"*(4<<20)))\n  time.sleep(0.2)';
    filler = spawn('/bin/sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec python3 -c "$1" "$2" "$3"', bdir, grow, join(bdir, 'memory.usage_in_bytes'), String(1536 * 1048576)], { stdio: ['ignore', 'ignore', 'inherit'] });
    say(`lodgerd-suspend: budget usage ${usage().toFixed(0)} MiB with both jobs; the filler grows`);
    // Mid-suspend: the saved state is being written (`suspended.state.part`, renamed only when whole).
    const part = (sb: string): string => join(base, 'state', 'run', sb, 'suspended.state.part');
    const deadline = Date.now() + 180_000;
    let next = Date.now() + 10_000;
    while (suspendAt === null && Date.now() < deadline) {
      await sleep(5);
      for (const sb of ['job-spare-1', 'job-hold-1']) if (suspendAt === null && existsSync(part(sb))) { suspendAt = performance.now(); suspended = sb; }
      if (Date.now() > next) { next += 10_000; say(`lodgerd-suspend: budget usage ${usage().toFixed(0)} MiB, filler ${filler.exitCode === null ? 'running' : `exited ${filler.exitCode ?? filler.signalCode}`}; ${reasons.at(-1)}`); }
    }
    if (suspendAt === null) return { ran: false, why: `lodgerd started no suspend in 180 s (budget usage ${usage().toFixed(0)} MiB); its latest decisions: ${reasons.join(' | ')}` };
    // A random point of the save (a 512 MiB guest takes a second or more under TCG).
    const killMs = Math.round(Math.random() * 300);
    await sleep(Math.max(0, suspendAt + killMs - performance.now()));
    events.cancel();
    api.close();
    api = null;
    await daemon.stop('SIGKILL');
    filler.kill('SIGKILL');
    filler = null;
    await daemon.start();
    api = connect(daemon.socket);
    const job = suspended.startsWith('job-hold') ? 'hold' : 'spare';
    const found = (await api.call<{ state: string }>('GetJob', { id: job })).state;
    const saved = existsSync(join(base, 'state', 'run', suspended, 'suspended.state'));
    say(`lodgerd killed ${killMs} ms into the save of ${suspended} (${saved ? 'the save was whole by then' : 'the save not whole'}); restarted, it found job ${job} ${found}`);
    // The pressure is gone: lodgerd restores the guest once calm, and its job goes on.
    const back = Date.now() + 180_000;
    let now = found;
    while (now !== 'running' && Date.now() < back) { await sleep(500); now = (await api.call<{ state: string }>('GetJob', { id: job })).state; }
    let whole: boolean;
    let final = now;
    let attempts: number | undefined;
    let states: string[] = [];
    if (job === 'hold') {
      const j = await api.call<{ state: string; attempts?: number; transitions?: { state: string }[] }>('WaitJob', { id: 'hold' });
      const out = await logs('hold');
      const units = out.split('\n').filter((l) => /^\d+$/.test(l));
      whole = units.join(' ') === Array.from({ length: UNITS }, (_, i) => String(i + 1)).join(' ') && out.trim().endsWith('done');
      final = j.state;
      attempts = j.attempts;
      states = (j.transitions ?? []).map((x) => x.state);
    } else {
      // Its job sleeps on after printing once: alive again after the restore, its output once.
      await sleep(2000);
      const j = await api.call<{ state: string; attempts?: number; transitions?: { state: string }[] }>('GetJob', { id: 'spare' });
      whole = j.state === 'running' && (await logs('spare')).split('\n').filter((l) => l === 'freed').length === 1;
      final = j.state;
      attempts = j.attempts;
      states = (j.transitions ?? []).map((x) => x.state);
    }
    await api.call('CancelJob', { id: 'spare' }).catch(() => {});
    await api.call('CancelJob', { id: 'hold' }).catch(() => {});
    return { ran: true, killMs, suspended, foundState: found, final, attempts, whole, states };
  } finally {
    filler?.kill('SIGKILL');
    api?.close();
    await daemon.stop('SIGTERM').catch(() => {});
    daemon.end();
    server.close();
    for (let i = 0; i < 50; i++) {
      try { rmdirSync(bdir); break; } catch { await sleep(100); }
    }
  }
}
