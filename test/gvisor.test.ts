// The sandbox contract on the real gVisor backend: real runsc, real cgroups (v1 here).
// Skips, saying why, where runsc is missing or cannot run a sandbox. Every sandbox a
// test starts is stopped in teardown, and its runsc sandbox process killed by its pid.
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openGvisorRuntime, SandboxError, type ExecHandle, type GvisorRuntime, type GvisorSandbox } from '../sandbox-runtime/index.ts';

const runscOk = existsSync('/usr/bin/runsc') || !!process.env.LODGER_RUNSC;
const maybe = runscOk ? test.serial : test.skip;
if (!runscOk) console.error('gvisor.test: runsc is not installed (npm run setup installs it from backports): gVisor contract tests skipped');

const dir = mkdtempSync(join(tmpdir(), 'lodger-gvisor-test-'));
let rt: GvisorRuntime | null = null;
const started: GvisorSandbox[] = [];

test.before(async () => {
  if (!runscOk) return;
  rt = (await openGvisorRuntime({ host: { runDir: join(dir, 'run') }, cgroupParent: `lodger-gvtest-${process.pid}` })).runtime;
});

test.after.always(async () => {
  for (const sb of started) {
    const pid = sb.pid;
    await sb.stop({ graceMs: 0 }).catch(() => {});
    if (pid) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  }
  await rt?.opts.cgroups?.removeParents().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
});

async function boot(id: string, extra: Partial<Parameters<GvisorRuntime['create']>[0]> = {}): Promise<GvisorSandbox> {
  const sb = await rt!.create({ id, vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 512, ...extra });
  started.push(sb);
  await sb.start();
  return sb;
}

async function collect(h: ExecHandle): Promise<{ out: string; err: string; code: number | null; signal: number | null }> {
  let out = '';
  let err = '';
  h.onStdout((b) => { out += b.toString(); });
  h.onStderr((b) => { err += b.toString(); });
  const st = await h.wait();
  return { out, err, ...st };
}

const knob = (sb: GvisorSandbox, hier: string, file: string): string => readFileSync(join(sb.cgroupDirs!.get(hier)!, file), 'utf8').trim();

maybe('exit codes, stdout and stderr, argv passed as given, the busybox root by default', async (t) => {
  const sb = await boot('gv-exec');
  const r = await collect(await sb.exec({ argv: ['sh', '-c', 'echo out "$1"; echo err >&2; exit 3', 'sh', "it's $HOME"] }));
  t.deepEqual(r, { out: "out it's $HOME\n", err: 'err\n', code: 3, signal: null });
  const ls = await collect(await sb.exec({ argv: ['ls', '/'], env: { A: 'b' } }));
  t.is(ls.code, 0, ls.err);
  t.regex(ls.out, /^bin$/m);
  t.notRegex(ls.out, /lodger/, 'Lodger\'s own directories stay hidden');
  const ro = await collect(await sb.exec({ argv: ['touch', '/x'] }));
  t.not(ro.code, 0, 'the root is read-only');
  const sig = await sb.exec({ argv: ['sleep', '30'] });
  await new Promise((r) => setTimeout(r, 300));
  await sig.signal(9);
  t.like(await sig.wait(), { code: null, signal: 9 });
});

maybe('/output is writable and collected into the output directory; cleanup leaves no run files or cgroup', async (t) => {
  const out = join(dir, 'out');
  const sb = await boot('gv-out', { outputDir: out });
  const cg = sb.cgroupDirs!.get('cpu')!;
  const r = await collect(await sb.exec({ argv: ['sh', '-c', 'echo result > /output/r.txt && mkdir /output/d && echo 2 > /output/d/two'] }));
  t.is(r.code, 0, r.err);
  await sb.stop();
  t.is(readFileSync(join(out, 'r.txt'), 'utf8'), 'result\n');
  t.is(readFileSync(join(out, 'd', 'two'), 'utf8'), '2\n');
  t.false(existsSync(sb.paths.dir), 'run directory removed');
  t.false(existsSync(cg), 'cgroup removed');
  t.deepEqual((await rt!.list()).filter((x) => x.id === 'gv-out'), []);
});

maybe('resize up and down is the host cgroup: cpu.max bandwidth and the memory limit, read back from the kernel', async (t) => {
  const sb = await boot('gv-resize');
  const v1 = sb.cgroupDirs!.has('cpu');
  const quota = (): string => (v1 ? knob(sb, 'cpu', 'cpu.cfs_quota_us') : knob(sb, '', 'cpu.max').split(' ')[0]!);
  const limit = (): number => Number(v1 ? knob(sb, 'memory', 'memory.limit_in_bytes') : knob(sb, '', 'memory.max'));
  t.is(quota(), '100000');
  const up = await sb.update({ vcpus: 2, memoryMiB: 512 });
  t.like(up, { vcpus: 2, memoryMiB: 512 });
  t.true(up.totalMs < 100, `resize took ${up.totalMs} ms`);
  t.is(quota(), '200000');
  t.is(limit(), (512 + 64) * 1048576);
  const down = await sb.update({ vcpus: 1, memoryMiB: 256 });
  t.like(down, { vcpus: 1, memoryMiB: 256 });
  t.is(quota(), '100000');
  t.is(limit(), (256 + 64) * 1048576);
  const idle = await sb.update({ cgroup: { cpuIdle: true, cpuWeight: 50 } });
  t.true(idle.steps.some((s) => s.kind === 'cgroup'));
  t.is(v1 ? knob(sb, 'cpu', 'cpu.idle') : knob(sb, '', 'cpu.idle'), '1');
  const err = await t.throwsAsync(sb.update({ vcpus: 3 }));
  t.is((err as SandboxError).code, 'SANDBOX_BAD_SPEC');
});

maybe('pause stops the job and resume continues it, losing no output', async (t) => {
  const sb = await boot('gv-pause');
  const h = await sb.exec({ argv: ['sh', '-c', 'i=0; while [ $i -lt 20 ]; do i=$((i+1)); echo $i; sleep 0.1; done'] });
  let out = '';
  h.onStdout((b) => { out += b.toString(); });
  await new Promise((r) => setTimeout(r, 800));
  await sb.pause();
  t.is(sb.status().state, 'paused');
  await new Promise((r) => setTimeout(r, 200));
  const frozen = out;
  await new Promise((r) => setTimeout(r, 500));
  t.is(out, frozen, 'no output while paused');
  await sb.resume();
  t.like(await h.wait(), { code: 0 });
  t.is(out, Array.from({ length: 20 }, (_, i) => `${i + 1}\n`).join(''), 'every line, once, in order');
});

// Known broken: runsc 0.0~20240729 checkpoints, but its restore panics in its urpc handler
// on this host (plain restore and create-then-restore alike). ava counts this as an
// expected failure; it turns red the day restore works, so the marker cannot go stale.
const knownBroken = runscOk ? test.serial.failing : test.skip;
knownBroken('suspend to disk and restore lose no work', async (t) => {
  const sb = await boot('gv-suspend');
  const h = await sb.exec({ argv: ['sh', '-c', 'i=0; while [ $i -lt 30 ]; do i=$((i+1)); echo $i; sleep 0.1; done'] });
  let out = '';
  h.onStdout((b) => { out += b.toString(); });
  await new Promise((r) => setTimeout(r, 800));
  const rep = await sb.suspend();
  t.is(sb.status().state, 'suspended');
  t.is(sb.status().pid, null);
  t.true(rep.bytes > 0);
  await sb.resume();
  t.is(sb.status().state, 'running');
  t.like(await h.wait(), { code: 0 });
  t.is(out, Array.from({ length: 30 }, (_, i) => `${i + 1}\n`).join(''), 'every line, once, in order');
});

maybe('kill -9 of the runsc sandbox process surfaces as SANDBOX_VMM_EXITED; a new owner reattaches by the state dir', async (t) => {
  const sb = await boot('gv-kill');
  const h = await sb.exec({ argv: ['sh', '-c', 'echo a; sleep 1; echo b; sleep 30'] });
  await new Promise((r) => setTimeout(r, 1500));
  // A second owner takes it up from its record (what lodgerd does after a restart).
  sb.release();
  const again = await rt!.attach('gv-kill');
  started.push(again);
  const r = await again.resumeExec(h.id, [2, 0]);
  let out = '';
  r.onStdout((b) => { out += b.toString(); });
  process.kill(again.pid!, 'SIGKILL');
  const err = await t.throwsAsync(r.wait());
  t.is((err as SandboxError).code, 'SANDBOX_VMM_EXITED');
  t.is(out, 'b\n', 'output after the stored offset only');
  t.is((await again.wait()).expected, false);
  await rt!.shutdown('gv-kill');
  t.false(existsSync(again.paths.dir));
});
