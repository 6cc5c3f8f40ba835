// The sandbox runtime against real QEMU (TCG on these hosts), a real guest kernel and the
// real cgroups of this kernel. One sandbox is shared by the serial tests that allow it.
import test from 'ava';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { encodeFrame, FrameType, SandboxError, VmmExitedError, type HostedSandbox } from '../sandbox-runtime/index.ts';
import { collect, taskCgroups, testRuntime, type TestRuntime } from './helpers.ts';

let rt: TestRuntime;
let sb: HostedSandbox;
let outputDir: string;

test.before(async () => {
  rt = await testRuntime('sandbox');
  outputDir = join(rt.dir, 'out');
  mkdirSync(outputDir);
  sb = await rt.boot({
    id: 'shared', vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 768, outputDir,
    cgroup: { cpuWeight: 10, cpuIdle: true, pidsMax: 4096, memoryMaxBytes: 4 * 1024 ** 3 },
  });
});

test.after.always(async () => {
  await rt?.stopAll();
});

test.serial('a command\'s output and exit code come back', async (t) => {
  const r = await collect(await sb.exec({ argv: ['sh', '-c', 'echo "hello $NAME from $(pwd)"; echo oops >&2; exit 3'], env: { NAME: 'lodger' }, cwd: '/tmp' }));
  t.is(r.stdout, 'hello lodger from /tmp\n');
  t.is(r.stderr, 'oops\n');
  t.is(r.code, 3);
  t.is(r.signal, null);
});

test.serial('a missing command exits 127 with a message; a signal is delivered and reported', async (t) => {
  const missing = await collect(await sb.exec({ argv: ['no-such-command'] }));
  t.is(missing.code, 127);
  t.regex(missing.stderr, /no-such-command/);
  const h = await sb.exec({ argv: ['sleep', '30'] });
  await new Promise((r) => setTimeout(r, 300));
  await h.signal(15);
  t.deepEqual(await h.wait(), { code: null, signal: 15 });
});

test.serial('a large output stream arrives whole and in order', async (t) => {
  const r = await collect(await sb.exec({ argv: ['sh', '-c', 'seq 1 100000'] }));
  const lines = r.stdout.trim().split('\n');
  t.is(lines.length, 100000);
  t.is(lines[0], '1');
  t.is(lines[99999], '100000');
});

test.serial('vCPUs 1 -> 2 -> 1 -> 2 -> 1, the guest sees each count', async (t) => {
  for (let cycle = 0; cycle < 2; cycle++) {
    const up = await sb.update({ vcpus: 2 });
    t.is(up.vcpus, 2);
    t.is((await sb.guestStats()).cpusOnline, 2);
    t.is((await collect(await sb.exec({ argv: ['nproc'] }))).stdout.trim(), '2');
    const down = await sb.update({ vcpus: 1 });
    t.is(down.vcpus, 1);
    t.is((await sb.guestStats()).cpusOnline, 1);
    t.is((await collect(await sb.exec({ argv: ['nproc'] }))).stdout.trim(), '1');
    t.log(`cycle ${cycle}: ${[...up.steps, ...down.steps].map((s) => `${s.kind} ${s.ms.toFixed(0)} ms`).join(', ')}`);
  }
  t.is(sb.status().vcpus, 1);
});

test.serial('a vCPU taken away frees its host CPU: two spinners use about one core', async (t) => {
  const usage = async (): Promise<number> => (await sb.metrics()).cpuUsageUsec;
  const spin = await sb.exec({ argv: ['sh', '-c', '(while :; do :; done) & (while :; do :; done) & sleep 4; kill %1 %2'] });
  await new Promise((r) => setTimeout(r, 1000));
  const u0 = await usage();
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, 2000));
  const cores = (await usage() - u0) / ((performance.now() - t0) * 1000);
  await spin.wait();
  t.log(`VMM used ${cores.toFixed(2)} cores with 1 of 2 vCPUs online`);
  t.true(cores > 0.5, `the online vCPU spins (${cores.toFixed(2)} cores)`);
  t.true(cores < 1.4, `the taken-away vCPU does not (${cores.toFixed(2)} cores)`);
});

test.serial('memory 256 -> 768 -> 256 MiB, the guest\'s MemTotal follows', async (t) => {
  const base = (await sb.guestStats()).memTotalKiB;
  const up = await sb.update({ memoryMiB: 768 });
  t.is(up.memoryMiB, 768);
  const grown = (await sb.guestStats()).memTotalKiB;
  t.true(Math.abs(grown - base - 512 * 1024) <= 4096, `MemTotal grew by ${(grown - base) / 1024} MiB`);
  const down = await sb.update({ memoryMiB: 256 });
  t.is(down.memoryMiB, 256);
  const shrunk = (await sb.guestStats()).memTotalKiB;
  t.true(Math.abs(shrunk - base) <= 4096, `MemTotal back to ${shrunk / 1024} MiB from ${base / 1024}`);
  t.log(`+512 MiB ${up.totalMs.toFixed(0)} ms, -512 MiB ${down.totalMs.toFixed(0)} ms`);
});

test.serial('out-of-range resizes are refused with a typed error and change nothing', async (t) => {
  const e = await t.throwsAsync(sb.update({ vcpus: 3 }), { instanceOf: SandboxError });
  t.is(e?.code, 'SANDBOX_BAD_SPEC');
  await t.throwsAsync(sb.update({ memoryMiB: 1024 }), { message: /memoryMiB must be in \[256, 768\]/ });
  t.is(sb.status().vcpus, 1);
  t.is(sb.status().memoryMiB, 256);
});

const asRoot = process.getuid?.() === 0 ? test.serial : test.serial.skip;

asRoot('the VMM and all its threads sit in the sandbox cgroup, with the requested knobs', async (t) => {
  const dirs = sb.cgroupDirs!;
  t.truthy(dirs, 'a root run must get a sandbox cgroup');
  const tasks = taskCgroups(sb.pid!);
  t.true(tasks.length > 3, `QEMU has ${tasks.length} threads`);
  for (const [hierarchy, dir] of dirs) {
    const rel = dir.slice(dir.indexOf(`/${hierarchy}/`) + hierarchy.length + 1);
    for (const { tid, lines } of tasks) {
      const line = lines.find((l) => l.split(':')[1]!.split(',').includes(hierarchy));
      t.is(line?.split(':')[2], rel, `thread ${tid} in ${hierarchy}`);
    }
  }
  t.is(readFileSync(join(dirs.get('cpu')!, 'cpu.idle'), 'utf8').trim(), '1');
  // An idle group carries the kernel's idle weight (3); ours returns when idle is cleared.
  t.is(readFileSync(join(dirs.get('cpu')!, 'cpu.shares'), 'utf8').trim(), '3');
  t.is(readFileSync(join(dirs.get('pids')!, 'pids.max'), 'utf8').trim(), '4096');
  const r = await sb.update({ cgroup: { cpus: '1', cpuIdle: false } });
  t.is(readFileSync(join(dirs.get('cpuset')!, 'cpuset.cpus'), 'utf8').trim(), '1');
  t.is(readFileSync(join(dirs.get('cpu')!, 'cpu.idle'), 'utf8').trim(), '0');
  t.is(readFileSync(join(dirs.get('cpu')!, 'cpu.shares'), 'utf8').trim(), '102');
  t.deepEqual(r.steps.map((s) => s.kind), ['cgroup']);
  // A weight asked for while idle is held back, then applied when idle is cleared.
  await sb.update({ cgroup: { cpuIdle: true } });
  await sb.update({ cgroup: { cpuWeight: 20 } });
  t.is(readFileSync(join(dirs.get('cpu')!, 'cpu.shares'), 'utf8').trim(), '3');
  await sb.update({ cgroup: { cpuIdle: false } });
  t.is(readFileSync(join(dirs.get('cpu')!, 'cpu.shares'), 'utf8').trim(), '205');
  const again = await sb.update({ cgroup: { cpus: '1', cpuIdle: false } });
  t.is(again.steps[0]!.detail, 'no change');
  await sb.update({ cgroup: { cpus: '0-1', cpuIdle: true } });
});

test.serial('pause stops the guest and resume brings it back', async (t) => {
  await sb.pause();
  t.is(sb.status().state, 'paused');
  await t.throwsAsync(sb.exec({ argv: ['true'] }), { message: /paused/ });
  await sb.resume();
  t.is(sb.status().state, 'running');
  t.is((await collect(await sb.exec({ argv: ['true'] }))).code, 0);
});

test.serial('the agent survives garbage and a truncated frame on its channel', async (t) => {
  const agent = sb.agentClient!;
  agent.sendRaw(Buffer.from('LG this is not a frame \x00\xff LGLGLG'));
  agent.sendRaw(encodeFrame(FrameType.Exec, 5, Buffer.alloc(2000, 0x41)).subarray(0, 60));
  // The truncated frame stalls the guest's parser until it expires (500 ms), then this goes through.
  const ms = await agent.ping(10_000);
  t.log(`ping after garbage: ${ms.toFixed(0)} ms`);
  const r = await collect(await sb.exec({ argv: ['echo', 'still here'] }));
  t.is(r.stdout, 'still here\n');
});

test.serial('the output directory comes back when the job fails', async (t) => {
  const r = await collect(await sb.exec({ argv: ['sh', '-c', 'mkdir -p $LODGER_OUTPUT/logs && echo partial > $LODGER_OUTPUT/logs/result.txt && exit 9'] }));
  t.is(r.code, 9);
  const names = await sb.collectOutput();
  t.true(names.includes('logs'));
  t.is(readFileSync(join(outputDir, 'logs', 'result.txt'), 'utf8'), 'partial\n');
});

test.serial('suspend to disk ends the VMM; resume carries the running job on, losing and repeating nothing', async (t) => {
  const h = await sb.exec({ argv: ['sh', '-c', 'i=0; while [ $i -lt 30 ]; do i=$((i+1)); echo $i; sleep 0.1; done; echo finished > $LODGER_OUTPUT/after-resume.txt'] });
  let out = '';
  h.onStdout((b) => { out += b.toString(); });
  while (!out.includes('5\n')) await new Promise((r) => setTimeout(r, 20));
  const before = sb.pid!;
  const rep = await sb.suspend();
  t.is(sb.status().state, 'suspended');
  t.true(rep.bytes > 1 << 20, `saved ${rep.bytes} bytes`);
  t.false(existsSync(`/proc/${before}`), 'the VMM is gone and its memory with it');
  const atSuspend = out;
  await new Promise((r) => setTimeout(r, 1000));
  t.is(out, atSuspend, 'nothing runs while suspended');
  await t.throwsAsync(sb.exec({ argv: ['true'] }), { message: /suspended/ });
  await sb.resume();
  t.is(sb.status().state, 'running');
  t.not(sb.pid, before);
  t.deepEqual(await h.wait(), { code: 0, signal: null });
  t.deepEqual(out.trim().split('\n'), Array.from({ length: 30 }, (_, i) => String(i + 1)));
  t.log(`suspended ${(rep.bytes / 1048576).toFixed(0)} MiB in ${rep.ms.toFixed(0)} ms`);
  await sb.collectOutput();
  t.is(readFileSync(join(outputDir, 'after-resume.txt'), 'utf8'), 'finished\n');
  if (sb.cgroupDirs) {
    for (const { lines } of taskCgroups(sb.pid!)) t.true(lines.some((l) => l.includes('/sb-shared')), 'the new VMM is in the same cgroup');
  }
});

test.serial('a new owner (a restarted daemon) takes up a paused sandbox, then a suspended one; the job goes on from the stored output, nothing repeated', async (t) => {
  const a = await rt.boot({ id: 'adopt', vcpus: 1, maxVcpus: 1, memoryMiB: 256, maxMemoryMiB: 256 });
  const h = await a.exec({ argv: ['sh', '-c', 'i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo $i; sleep 0.1; done; exit 4'] });
  let stored = '';
  h.onStdout((b) => { stored += b.toString(); });
  while (!stored.includes('5\n')) await new Promise((r) => setTimeout(r, 20));
  await a.pause();
  a.release(); // the first owner dies: its sockets close, the VMM stays
  const owners: HostedSandbox[] = [];
  try {
    const b = await rt.runtime.with({}).attach('adopt');
    owners.push(b);
    t.is(b.status().state, 'paused');
    t.is(b.pid, a.pid, 'the same VMM');
    const hb = await b.resumeExec(h.id, [Buffer.byteLength(stored), 0]);
    hb.onStdout((x) => { stored += x.toString(); });
    await b.resume();
    while (!stored.includes('15\n')) await new Promise((r) => setTimeout(r, 20));
    await b.suspend();
    b.release(); // the second owner dies while the sandbox is on disk
    const c = await rt.runtime.with({}).attach('adopt');
    owners.push(c);
    t.is(c.status().state, 'suspended');
    const hc = await c.resumeExec(h.id, [Buffer.byteLength(stored), 0]);
    hc.onStdout((x) => { stored += x.toString(); });
    await c.resume();
    t.deepEqual(await hc.wait(), { code: 4, signal: null });
    t.deepEqual(stored.trim().split('\n'), Array.from({ length: 40 }, (_, i) => String(i + 1)), 'every line once, in order');
  } finally {
    for (const o of owners.reverse()) {
      await o.stop({ graceMs: 0 }).catch(() => {});
      if (o.pid) { try { process.kill(o.pid, 'SIGKILL'); } catch { /* gone */ } }
    }
  }
});

test.serial('list() sees a sandbox whose owner died; shutdown(id) removes its VMM, cgroup and files, and may be repeated', async (t) => {
  const left = await rt.boot({ id: 'left-behind', vcpus: 1, maxVcpus: 1, memoryMiB: 256, maxMemoryMiB: 256 });
  const pid = left.pid!;
  const dirs = [...(left.cgroupDirs?.values() ?? [])];
  left.release(); // the owner dies
  const found = (await rt.runtime.list()).find((s) => s.id === 'left-behind');
  t.deepEqual(found, { id: 'left-behind', pid, state: 'running', alive: true });
  await rt.runtime.shutdown('left-behind');
  t.false(existsSync(`/proc/${pid}/cmdline`) && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('lodger-left-behind'), 'the VMM is gone');
  t.deepEqual(dirs.filter((d) => existsSync(d)), [], 'its cgroup is gone');
  t.false(existsSync(join(rt.runtime.opts.host.runDir, 'left-behind')), 'its run files are gone');
  t.false((await rt.runtime.list()).some((s) => s.id === 'left-behind'));
  await rt.runtime.shutdown('left-behind');
  await rt.runtime.shutdown('never-existed');
});

test.serial('kill -9 of QEMU surfaces as a typed error, its cgroup is removed, synced output survives', async (t) => {
  const out = join(rt.dir, 'crash-out');
  mkdirSync(out);
  const victim = await rt.boot({ id: 'victim', outputDir: out }, { vcpuUnplug: 'acpi' });
  const dirs = [...(victim.cgroupDirs?.values() ?? [])];
  // The ACPI path first: device_add, then device_del confirmed by QEMU and the guest.
  t.is((await victim.update({ vcpus: 2 })).steps[0]!.kind, 'vcpu-plug');
  const del = await victim.update({ vcpus: 1 });
  t.is(del.steps[0]!.kind, 'vcpu-unplug');
  t.is((await victim.guestStats()).cpusOnline, 1);
  t.log(`ACPI unplug ${del.steps[0]!.ms.toFixed(0)} ms`);
  if (victim.accel === 'tcg') {
    // QEMU aborts on a re-plug after an unplug under TCG: refused, and QEMU lives on.
    const refused = await t.throwsAsync(victim.update({ vcpus: 2 }), { instanceOf: SandboxError });
    t.regex(refused!.message, /refusing to plug/);
    // A failed step reports the state it left, re-read from QEMU and the guest.
    t.deepEqual((refused as unknown as { actual: unknown }).actual, { vcpus: 1, memoryMiB: 256 });
    t.is(victim.status().vcpus, 1);
    t.is((await victim.guestStats()).cpusOnline, 1);
  }
  t.true(dirs.every((d) => existsSync(d)));
  const job = await victim.exec({ argv: ['sh', '-c', 'echo before-crash > $LODGER_OUTPUT/progress && sync && echo synced && sleep 60'] });
  const seen = new Promise<void>((resolve) => job.onStdout((b) => { if (b.toString().includes('synced')) resolve(); }));
  await seen;
  process.kill(victim.pid!, 'SIGKILL');
  const err = await t.throwsAsync(job.wait(), { instanceOf: VmmExitedError });
  t.is(err?.code, 'SANDBOX_VMM_EXITED');
  t.regex(err!.message, /SIGKILL/);
  const exit = await victim.wait();
  t.is(exit.signal, 'SIGKILL');
  t.false(exit.expected);
  t.is(victim.status().state, 'failed');
  await t.throwsAsync(victim.update({ vcpus: 2 }), { instanceOf: VmmExitedError });
  for (let i = 0; i < 100 && dirs.some((d) => existsSync(d)); i++) await new Promise((r) => setTimeout(r, 50));
  t.deepEqual(dirs.filter((d) => existsSync(d)), [], 'cgroup directories removed');
  await victim.stop();
  t.is(readFileSync(join(out, 'progress'), 'utf8'), 'before-crash\n');
});
