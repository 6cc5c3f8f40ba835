// bench/hostile.ts's "lodgerd killed mid-suspend" and "mid-restore", with the whole daemon:
// a real lodgerd and its VMMs in a small memory budget cgroup (cgroup v1, as
// test/memory.test.ts makes for the control loop alone), two jobs (one whose guest holds all
// it has), and a filler that grows until lodgerd's controller suspends a guest to disk.
// Mid-suspend: when the guest's saved state starts being written (its `.part` file), lodgerd
// is killed (SIGKILL) a random 0-KILL_SUSPEND_MS later and started again in the budget; the filler
// then goes. Mid-restore: the save is let finish, the filler goes, and lodgerd is killed a
// random 0-KILL_RESTORE_MS after the restoring QEMU appears, then started again. Either way
// the suspended job must be restored and go on: one attempt, its output once, in order (the
// holding job to its end; the other, which counts on after giving memory back, running again).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { connect, type ApiClient } from '../daemon/index.ts';
import { processesNaming } from './containerd.ts';
import { storedStdout, TestDaemon } from './lodgerd.ts';

const MEM = '/sys/fs/cgroup/memory';
const UNITS = 240;
/** The restore of a 512 MiB guest from its saved state took about 450 ms here (TCG), as lodgerd logged it. */
const KILL_RESTORE_MS = 600;
/** The save of such a guest took about 300 ms here: kills land inside it and a little past it. */
const KILL_SUSPEND_MS = 450;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The numbered lines of a job's output, and whether they are 1..n, each once, in order. */
function counted(out: string): { n: number; inOrder: boolean } {
  const units = out.split('\n').filter((l) => /^\d+$/.test(l));
  return { n: units.length, inOrder: units.every((u, i) => u === String(i + 1)) };
}

export interface LodgerdSuspendKill {
  ran: boolean;
  why?: string;
  mode?: 'suspend' | 'restore';
  /** ms from the save's start (mid-suspend) or the restoring QEMU's start (mid-restore) to the kill. */
  killMs?: number;
  /** mid-restore: whether lodgerd had the job running again (its restore done) just before the kill, and the restore's time if it had logged it. */
  restoredAtKill?: boolean;
  restoreMs?: number;
  /** mid-restore: the save's time, as lodgerd logged it. */
  saveMs?: number;
  /** From the kill to the restarted lodgerd listening, and to its job running again. */
  backMs?: number;
  runningAgainMs?: number;
  suspended?: string;
  foundState?: string;
  final?: string;
  attempts?: number;
  whole?: boolean;
  /** The job's states as lodgerd stored them, in order. */
  states?: string[];
}

export async function lodgerdKillMidSuspend(dir: string, mode: 'suspend' | 'restore', say: (m: string) => void): Promise<LodgerdSuspendKill> {
  if (!existsSync(join(MEM, 'memory.limit_in_bytes'))) return { ran: false, why: 'no cgroup v1 memory hierarchy' };
  const own = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => /^\d+:memory:/.test(l))!.split(':')[2]!;
  const budget = join(own, `lodger-hostile-budget-${process.pid}`);
  const bdir = join(MEM, budget);
  mkdirSync(bdir);
  writeFileSync(join(bdir, 'memory.limit_in_bytes'), String(1536 * 1048576));
  const usage = (): number => Number(readFileSync(join(bdir, 'memory.usage_in_bytes'), 'utf8')) / 1048576;
  const server = createServer((s) => s.end());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = join(dir, `lodgerd-${mode}`);
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
    await api.call('SubmitJob', { id: 'spare', spec: { name: 'spare', command: ['sh', '-c', 'mkdir -p /tmp/h; mount -t tmpfs -o size=400m tmpfs /tmp/h; head -c 268435456 /dev/zero > /tmp/h/x; rm /tmp/h/x; echo freed; '
      + 'i=1; while :; do echo "$i"; i=$((i+1)); sleep 0.5; done'], memoryMib: mem } });
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
    say(`lodgerd-${mode}: budget usage ${usage().toFixed(0)} MiB with both jobs; the filler grows`);
    // Mid-suspend: the saved state is being written (`suspended.state.part`, renamed only when whole).
    const part = (sb: string): string => join(base, 'state', 'run', sb, 'suspended.state.part');
    const deadline = Date.now() + 180_000;
    let next = Date.now() + 10_000;
    while (suspendAt === null && Date.now() < deadline) {
      await sleep(5);
      for (const sb of ['job-spare-1', 'job-hold-1']) if (suspendAt === null && existsSync(part(sb))) { suspendAt = performance.now(); suspended = sb; }
      if (Date.now() > next) { next += 10_000; say(`lodgerd-${mode}: budget usage ${usage().toFixed(0)} MiB, filler ${filler.exitCode === null ? 'running' : `exited ${filler.exitCode ?? filler.signalCode}`}; ${reasons.at(-1)}`); }
    }
    if (suspendAt === null) return { ran: false, why: `lodgerd started no suspend in 180 s (budget usage ${usage().toFixed(0)} MiB); its latest decisions: ${reasons.join(' | ')}` };
    const job = suspended.startsWith('job-hold') ? 'hold' : 'spare';
    let killMs: number;
    let restoredAtKill: boolean | undefined;
    let restoreMs: number | undefined;
    let saveMs: number | undefined;
    if (mode === 'suspend') {
      // A random point of the save, or just past it (the record written, QEMU quit).
      killMs = Math.round(Math.random() * KILL_SUSPEND_MS);
      await sleep(Math.max(0, suspendAt + killMs - performance.now()));
    } else {
      // The save let finish: the job on disk, then the pressure gone, then lodgerd restores it.
      const onDisk = Date.now() + 120_000;
      while ((await api.call<{ state: string }>('GetJob', { id: job })).state !== 'suspended') {
        if (Date.now() > onDisk) return { ran: false, why: `${suspended}'s save started but its job was not suspended in 120 s` };
        await sleep(50);
      }
      filler.kill('SIGKILL');
      filler = null;
      say(`lodgerd-restore: ${suspended} on disk, the filler gone (budget usage ${usage().toFixed(0)} MiB); waiting for lodgerd to restore it`);
      // The restoring QEMU is the one started with -incoming (the saving one is gone by now).
      const restoring = (): number[] => processesNaming(`lodger-${suspended},`).filter((p) => {
        try { return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('-incoming'); } catch { return false; }
      });
      const restoreBy = Date.now() + 180_000;
      while (!restoring().length) {
        if (Date.now() > restoreBy) return { ran: false, why: `lodgerd did not restore ${suspended} in 180 s; its latest decisions: ${reasons.join(' | ')}` };
        await sleep(5);
      }
      const startedAt = performance.now();
      killMs = Math.round(Math.random() * KILL_RESTORE_MS);
      await sleep(killMs);
      // Whether the kill fell inside the restore: lodgerd records the job running once the restore is done.
      restoredAtKill = (await api.call<{ state: string }>('GetJob', { id: job })).state !== 'suspended';
      killMs = Math.round(performance.now() - startedAt);
      const logged = (what: string): number | undefined => {
        const m = new RegExp(`\\[sandbox ${suspended}\\] ${what}[^\\n]* in (\\d+) ms`).exec(daemon.log);
        return m ? Number(m[1]) : undefined;
      };
      restoreMs = logged('resumed from disk');
      saveMs = logged('suspended to disk');
    }
    events.cancel();
    api.close();
    api = null;
    await daemon.stop('SIGKILL');
    const killedAt = performance.now();
    filler?.kill('SIGKILL');
    filler = null;
    await daemon.start();
    const backMs = Math.round(performance.now() - killedAt);
    api = connect(daemon.socket);
    const found = (await api.call<{ state: string }>('GetJob', { id: job })).state;
    const saved = existsSync(join(base, 'state', 'run', suspended, 'suspended.state'));
    say(mode === 'suspend'
      ? `lodgerd killed ${killMs} ms into the save of ${suspended} (${saved ? 'the save was whole by then' : 'the save not whole'}); restarted, it found job ${job} ${found}`
      : `lodgerd killed ${killMs} ms after ${suspended}'s restoring QEMU started (its job ${restoredAtKill ? 'running again' : 'still suspended'} then); restarted, it found job ${job} ${found}`);
    // The pressure is gone: lodgerd restores the guest once calm, and its job goes on.
    const back = Date.now() + 180_000;
    let now = found;
    while (now !== 'running' && Date.now() < back) { await sleep(100); now = (await api.call<{ state: string }>('GetJob', { id: job })).state; }
    const runningAgainMs = now === 'running' ? Math.round(performance.now() - killedAt) : undefined;
    let whole: boolean;
    let final = now;
    let attempts: number | undefined;
    let states: string[] = [];
    if (job === 'hold') {
      const j = await api.call<{ state: string; attempts?: number; transitions?: { state: string }[] }>('WaitJob', { id: 'hold' });
      const out = await logs('hold');
      const c = counted(out);
      whole = c.inOrder && c.n === UNITS && out.trim().endsWith('done');
      final = j.state;
      attempts = j.attempts;
      states = (j.transitions ?? []).map((x) => x.state);
    } else {
      // Its job counts on without end: counting again after the restore, each line once.
      const before = counted(await logs('spare')).n;
      await sleep(3000);
      const j = await api.call<{ state: string; attempts?: number; transitions?: { state: string }[] }>('GetJob', { id: 'spare' });
      const out = await logs('spare');
      const c = counted(out);
      whole = j.state === 'running' && out.split('\n').filter((l) => l === 'freed').length === 1 && c.inOrder && c.n > before;
      final = j.state;
      attempts = j.attempts;
      states = (j.transitions ?? []).map((x) => x.state);
    }
    await api.call('CancelJob', { id: 'spare' }).catch(() => {});
    await api.call('CancelJob', { id: 'hold' }).catch(() => {});
    return { ran: true, mode, killMs, ...(restoredAtKill === undefined ? {} : { restoredAtKill, restoreMs, saveMs }), backMs, runningAgainMs, suspended, foundState: found, final, attempts, whole, states };
  } finally {
    filler?.kill('SIGKILL');
    api?.close();
    await daemon.stop('SIGTERM').catch(() => {});
    await daemon.end();
    server.close();
    for (let i = 0; i < 50; i++) {
      try { rmdirSync(bdir); break; } catch { await sleep(100); }
    }
  }
}
