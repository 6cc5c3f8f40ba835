// Memory pressure on real parts: a small memory budget cgroup (v1, the hosts here)
// holding this test process, two real QEMU sandboxes, and a filler; the real budget
// reader, controller and actuator (ControlLoop). Sandbox "a" has memory to spare (its job
// touched 256 MiB and let it go); sandbox "b" holds all it has. Under the filler's
// pressure the order must be: virtio-mem shrink of "a" first (read back: its size went
// down), then "b" suspended to disk (it cannot give back); when the filler is gone,
// "b" restored and its job completing with its output whole, then "a", short of memory
// once its job fills it, grown again; no OOM kill in the budget.
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ControlLoop, defaultPool, ProcHostReader, ServiceMonitor, type Decision, type OnlineServicePolicy } from '../control/index.ts';
import { testRuntime } from './helpers.ts';

const MEM = '/sys/fs/cgroup/memory';
const v1 = existsSync(join(MEM, 'memory.limit_in_bytes'));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ok: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

(v1 ? test.serial : test.serial.skip)('under real pressure: virtio-mem give-back first, suspend of the guest that cannot, restore and the job whole afterwards, then regrow', async (t) => {
  const own = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => /^\d+:memory:/.test(l))!.split(':')[2]!;
  const budget = join(own, `lodger-memtest-${process.pid}`);
  const dir = join(MEM, budget);
  mkdirSync(dir);
  const usage = (): number => Number(readFileSync(join(dir, 'memory.usage_in_bytes'), 'utf8')) / 1048576;
  const oomKills = (): number => Number(/oom_kill (\d+)/.exec(readFileSync(join(dir, 'memory.oom_control'), 'utf8'))?.[1] ?? 0);
  let filler: ChildProcess | null = null;
  const server = createServer((s) => s.end());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  let rt: Awaited<ReturnType<typeof testRuntime>> | null = null;
  let loop: ControlLoop | null = null;
  try {
    // This process joins the budget (only the memory hierarchy): the sandboxes it starts are born below it.
    writeFileSync(join(dir, 'memory.limit_in_bytes'), String(1536 * 1048576));
    writeFileSync(join(dir, 'cgroup.procs'), String(process.pid));
    rt = await testRuntime('memory');
    const a = await rt.boot({ id: 'mem-a', maxVcpus: 1, memoryMiB: 256, maxMemoryMiB: 512 });
    const b = await rt.boot({ id: 'mem-b', maxVcpus: 1, memoryMiB: 256, maxMemoryMiB: 512 });
    await a.update({ memoryMiB: 512 });
    await b.update({ memoryMiB: 512 });
    // a: touches 256 MiB and frees it (host RSS it can give back), then idles.
    const ja = await a.exec({ argv: ['sh', '-c', 'mkdir -p /tmp/h; mount -t tmpfs -o size=400m tmpfs /tmp/h; head -c 268435456 /dev/zero > /tmp/h/x; rm /tmp/h/x; echo freed; sleep 3600'] });
    let aOut = '';
    ja.onStdout((x) => { aOut += x.toString(); });
    // b: holds everything down to 40 MiB available, then 60 units over what it holds.
    const jb = await b.exec({ argv: ['sh', '-c', 'mkdir -p /tmp/h; mount -t tmpfs -o size=500m tmpfs /tmp/h; n=0; while [ $(awk \'/^MemAvailable/{print $2}\' /proc/meminfo) -gt 40960 ]; do head -c 4194304 /dev/zero > /tmp/h/c$n; n=$((n+1)); done; echo held $n; '
      + 'i=1; while [ $i -le 60 ]; do echo "$i $(cat /tmp/h/c$((i % n)) | sha256sum | cut -c1-16)"; i=$((i+1)); sleep 0.5; done; echo done'] });
    let bOut = '';
    jb.onStdout((x) => { bOut += x.toString(); });
    const bDone = jb.wait();
    await until('both jobs holding their memory', () => aOut.includes('freed') && bOut.includes('held'), 120_000);
    t.log(`budget usage with both guests: ${usage().toFixed(0)} MiB`);

    const service: OnlineServicePolicy = {
      name: 'svc', source: 't', slo: { percentile: 99, targetMs: 200, windowMs: 1000 }, prometheus: null, cpus: null,
      probe: { kind: 'tcp', host: '127.0.0.1', port: (server.address() as AddressInfo).port, intervalMs: 100, timeoutMs: 1000 },
    };
    const pool = defaultPool('reserve: { cpus: 0, memory: 200Mi }, sandbox: { maxVcpus: 1, minMemory: 256Mi, maxMemory: 512Mi }, knobs: [cpu.idle], keepApplied: [cpu.idle], growth: { cooldown: 1s, memoryStep: 64Mi }', 'p');
    const decisions: Decision[] = [];
    loop = new ControlLoop({ policy: { services: [service], pool }, monitors: [new ServiceMonitor(service)], host: new ProcHostReader('/proc', undefined, { cgroup: budget }), sandboxes: () => [a, b], tickMs: 100 });
    loop.on('decision', (d: Decision) => decisions.push(d));
    loop.start();
    await sleep(2000);
    const oomBefore = oomKills();
    // The filler grows at 20 MiB/s to leave 100 MiB (under the 200 MiB reserve) even
    // after "a" has given back all it can spare (256 MiB): only a suspend of "b" relieves
    // it. It stops there, so the budget itself never runs out (no OOM kill to provoke).
    const fillMiB = Math.max(64, Math.round(1536 - usage() - 100 + 256));
    const grow = 'import sys,time\nn=int(sys.argv[1]); held=[]\nwhile len(held)*4 < n:\n  held.append(bytearray(b"x"*(4<<20))); time.sleep(0.2)\nprint("filled", flush=True); time.sleep(600)';
    filler = spawn('/bin/sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec python3 -c "$1" "$2"', dir, grow, String(fillMiB)], { stdio: ['ignore', 'pipe', 'inherit'] });
    await until('b suspended to disk', () => b.status().state === 'suspended', 180_000);
    const steps = decisions.flatMap((d) => d.results.filter((r) => r.action.kind !== 'knobs' && r.action.kind !== 'pause' && r.action.kind !== 'resume').map((r) => `${r.action.kind} ${r.action.sandbox} ${r.ok ? 'ok' : 'failed'}`));
    t.log(steps.join(', '));
    // The reasons of every memory step, so a wrong order says why it was taken.
    for (const d of decisions) if (d.results.some((r) => r.action.kind === 'resize' || r.action.kind === 'suspend')) t.log(d.reason);
    t.regex(steps[0] ?? '', /^resize mem-a ok/, 'virtio-mem give-back of the guest with memory to spare comes first');
    t.true(a.status().memoryMiB < 512, `read back: a is at ${a.status().memoryMiB} MiB`);
    t.true(steps.indexOf('suspend mem-b ok') > 0, 'then b, which cannot give back, is suspended');
    t.false(steps.some((s) => s.startsWith('resize mem-b')), 'b, with nothing to spare, is not asked to shrink');
    // Pressure ends: b comes back from disk and its job runs to its end.
    const lowA = a.status().memoryMiB;
    filler.kill('SIGKILL');
    await until('b restored', () => b.status().state === 'running', 180_000);
    const r = await bDone;
    t.is(r.code, 0);
    const lines = bOut.trim().split('\n');
    const units = lines.filter((l) => /^\d+ /.test(l));
    t.deepEqual(units.map((l) => Number(l.split(' ')[0])), Array.from({ length: 60 }, (_, i) => i + 1), 'every unit exactly once, in order');
    const byChunk = new Map<string, Set<string>>();
    const n = Number(lines.find((l) => l.startsWith('held'))!.split(' ')[1]);
    for (const l of units) { const [i, h] = l.split(' '); const k = String(Number(i) % n); byChunk.set(k, (byChunk.get(k) ?? new Set()).add(h!)); }
    t.true([...byChunk.values()].every((s) => s.size === 1), 'what b held came back from disk unchanged (each chunk hashes the same)');
    t.is(lines.at(-1), 'done');
    // And memory is given back to a guest that needs it, once b is back and the pressure
    // stays away: a's job now fills its guest until less than a quarter of it is available.
    void a.exec({ argv: ['sh', '-c', 'n=0; while [ $(awk \'/^MemAvailable/{print $2}\' /proc/meminfo) -gt 51200 ]; do head -c 4194304 /dev/zero > /tmp/h/g$n; n=$((n+1)); done; echo short; sleep 3600'] });
    // Waits for the recorded decision, not a's status: the status changes as the resize
    // lands, the decision is recorded once the whole step is done.
    // A resize is a grow when it asks for more than the step before it (a started at 512 MiB).
    const memorySteps = (): string[] => {
      let size = 512;
      return decisions.flatMap((d) => d.results.filter((r) => r.action.kind === 'resize' || r.action.kind === 'restore').map((r) => {
        const to = r.action.kind === 'resize' ? r.action.memoryMiB : undefined;
        const grow = r.action.sandbox === 'mem-a' && to !== undefined && to > size;
        if (r.action.sandbox === 'mem-a' && to !== undefined) size = to;
        return `${r.action.kind} ${r.action.sandbox}${grow ? ' grow' : ''} ${r.ok ? 'ok' : 'failed'}`;
      }));
    };
    await until('a given memory back', () => memorySteps().includes('resize mem-a grow ok'), 120_000).catch((e: Error) => {
      throw new Error(`${e.message}: a at ${a.status().memoryMiB} MiB, budget usage ${usage().toFixed(0)} MiB; the controller: ${loop?.lastReason}`);
    });
    const after = memorySteps();
    t.log(`after the pressure: a ${lowA} -> ${a.status().memoryMiB} MiB; ${after.slice(-4).join(', ')}`);
    t.true(a.status().memoryMiB > lowA, `read back: a is at ${a.status().memoryMiB} MiB`);
    const restored = after.lastIndexOf('restore mem-b ok');
    t.true(restored >= 0 && restored < after.indexOf('resize mem-a grow ok'), 'restore first, then regrow');
    t.is(oomKills(), oomBefore, 'no OOM kill inside the budget');
  } finally {
    filler?.kill('SIGKILL');
    await loop?.stop();
    await rt?.stopAll();
    server.close();
    // Back to our own cgroup, then the budget goes.
    writeFileSync(join(MEM, own, 'cgroup.procs'), String(process.pid));
    for (let i = 0; i < 50; i++) {
      try { rmdirSync(dir); break; } catch { await sleep(100); }
    }
  }
});
