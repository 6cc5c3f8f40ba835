// The sandbox contract on the real gVisor backend: real runsc, real cgroups (v1 here).
// Skips, saying why, where runsc is missing or cannot run a sandbox. Every sandbox a
// test starts is stopped in teardown, and its runsc sandbox process killed by its pid.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { JobStore, lockStateDir } from '../daemon/index.ts';
import { gvisorJailReport, gvisorJailViolation, openGvisorRuntime, readJailStatus, SANDBOX_RLIMITS, SandboxError, VMM_OOM_SCORE_ADJ, type GvisorRuntime, type GvisorSandbox } from '../sandbox-runtime/index.ts';
import { collect, runscInstalled } from './helpers.ts';
import { mountsUnder, passableTmpDir } from '../bench/index.ts';

const maybe = runscInstalled ? test.serial : test.skip;
if (!runscInstalled) console.error('gvisor.test: runsc is not installed (npm run setup installs it from backports): gVisor contract tests skipped');

const dir = passableTmpDir('lodger-gvisor-test-');
let rt: GvisorRuntime | null = null;
const started: GvisorSandbox[] = [];

test.before(async () => {
  if (!runscInstalled) return;
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

const knob = (sb: GvisorSandbox, hier: string, file: string): string => readFileSync(join(sb.cgroupDirs!.get(hier)!, file), 'utf8').trim();

const asRoot = runscInstalled && process.getuid?.() === 0 ? test.serial : test.skip;

asRoot('the jail: runsc\'s sandbox and gofer run as their own uid, Seccomp 2, NoNewPrivs 1, capabilities only in a one-uid user namespace, not in the host root; they cannot open the job store; an image root\'s root-only files still read', async (t) => {
  // An image root as the image cache keeps it: owned by host root, one file and one directory root's alone.
  const root = join(dir, 'image-root');
  cpSync(rt!.opts.defaultRoot, root, { recursive: true, verbatimSymlinks: true });
  // Mount points an unjailed runsc made in the shared root earlier (as root, it could): an image has none.
  for (const d of ['.lodger', 'output']) rmSync(join(root, d), { recursive: true, force: true });
  writeFileSync(join(root, 'etc', 'secret'), 's3cret\n', { mode: 0o600 });
  chmodSync(join(root, 'root'), 0o700);
  const sb = await boot('gv-jail', { rootfsDir: root });
  const other = await boot('gv-jail-2');
  const read = await collect(await sb.exec({ argv: ['sh', '-c', 'id -u; cat /etc/secret; ls -ld /root /'] }));
  t.is(read.code, 0, read.stderr);
  t.regex(read.stdout, /^0\ns3cret\n/, 'root inside, and root\'s files read as its own');
  t.notRegex(read.stdout, /65534/, 'nothing in the root shows as the overflow uid');
  const pids = await (sb as unknown as { cgroup: { pids(): Promise<number[]> } }).cgroup.pids();
  t.true(pids.length >= 2, `sandbox and gofer at least: ${pids}`);
  const uid = readJailStatus('/proc', sb.pid!).uid[0]!;
  t.true(uid >= 3_000_000, `uid ${uid} from the jail range`);
  const logged = new Set<string>();
  for (const pid of pids) {
    const j = readJailStatus('/proc', pid);
    const name = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0]!;
    if (!logged.has(name)) t.log(pid, name, JSON.stringify({ ...j, root: undefined }));
    logged.add(name);
    t.deepEqual([...new Set([...j.uid, ...j.gid])], [uid], 'one uid and gid, not root');
    t.is(j.seccomp, 2);
    t.is(j.noNewPrivs, 1);
    t.false(j.hostRoot);
    t.true(j.ownNamespaces.includes('user'));
    t.is(j.uidMap, `0 ${uid} 1`, 'its capabilities are over that one uid only');
    t.is(gvisorJailViolation(j, { uid, gid: uid }), null);
    const limits = readFileSync(`/proc/${pid}/limits`, 'utf8');
    t.regex(limits, /^Max core file size\s+0\s+0\s/m, 'no core dumps');
    // At most SANDBOX_RLIMITS.nofile, or the lower hard limit this process inherited (20000 here, not raisable).
    const nofile = /^Max open files\s+(\d+)\s+(\d+)\s/m.exec(limits);
    t.true(!!nofile && Number(nofile[2]) <= SANDBOX_RLIMITS.nofile, `open files bounded: ${nofile?.[0]}`);
  }
  t.not(readJailStatus('/proc', other.pid!).uid[0], uid, 'each sandbox its own uid');
  // What `lodger doctor` lists: this sandbox's runsc processes, each without a violation.
  const doctor = gvisorJailReport('/proc').filter((v) => pids.includes(v.pid));
  t.deepEqual([...new Set(doctor.map((v) => v.what))].sort(), ['runsc-gofer', 'runsc-sandbox']);
  t.true(doctor.every((v) => v.violation === null), JSON.stringify(doctor));
  // lodgerd's state directory (0711: the uid passes to its run directory) and its job store, tried from the uid.
  const state = join(dir, 'state');
  lockStateDir(state);
  new JobStore(join(state, 'jobs.db')).close();
  const asJail = (...argv: string[]): ReturnType<typeof spawnSync> => spawnSync('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', ...argv], { encoding: 'utf8' });
  const store = asJail('cat', join(state, 'jobs.db'));
  t.not(store.status, 0);
  t.regex(String(store.stderr), /Permission denied/);
  t.regex(String(asJail('ls', state).stderr), /Permission denied/, 'the state directory cannot be listed');
  t.regex(String(asJail('ls', join(rt!.opts.host.runDir, 'gv-jail-2', 'io')).stderr), /Permission denied/, 'nor another sandbox\'s files');
  const runDir = join(rt!.opts.host.runDir, 'gv-jail');
  t.is(mountsUnder(`${runDir}/`).length, 2, 'the idmapped root and the overlay over it');
  await sb.stop({ graceMs: 0 });
  t.deepEqual(mountsUnder(`${runDir}/`), [], 'its mounts are gone with it');
  t.false(existsSync(runDir));
  t.true(existsSync(join(root, 'etc', 'secret')) && !existsSync(join(root, '.lodger')), 'the image root is as it was: no mount points made in it');
});

// Exit codes, output, /output, pause, suspend and a killed sandbox are the shared
// contract suite's (test/contract.test.ts); here what only gVisor has.
maybe('the busybox root by default: read-only, Lodger\'s own directories hidden', async (t) => {
  const sb = await boot('gv-root');
  // A batch sandbox goes before the online service when the kernel must kill for memory.
  t.is(readFileSync(`/proc/${sb.pid}/oom_score_adj`, 'utf8').trim(), String(VMM_OOM_SCORE_ADJ));
  const ls = await collect(await sb.exec({ argv: ['ls', '/'], env: { A: 'b' } }));
  t.is(ls.code, 0, ls.stderr);
  t.regex(ls.stdout, /^bin$/m);
  t.notRegex(ls.stdout, /lodger/, 'Lodger\'s own directories stay hidden');
  const ro = await collect(await sb.exec({ argv: ['touch', '/x'] }));
  t.not(ro.code, 0, 'the root is read-only');
});

maybe('resize up and down is the host cgroup: cpu.max bandwidth and the memory limit, read back from the kernel', async (t) => {
  const sb = await boot('gv-resize');
  const v1 = sb.cgroupDirs!.has('cpu');
  const quota = (): string => (v1 ? knob(sb, 'cpu', 'cpu.cfs_quota_us') : knob(sb, '', 'cpu.max').split(' ')[0]!);
  const limit = (): number => Number(v1 ? knob(sb, 'memory', 'memory.limit_in_bytes') : knob(sb, '', 'memory.max'));
  t.is(quota(), '100000');
  const up = await sb.update({ vcpus: 2, memoryMiB: 512 });
  t.like(up, { vcpus: 2, memoryMiB: 512 });
  // Right after the boot: the spooler's "look now" must not end it before its trap is set.
  t.is(sb.status().state, 'running', sb.status().error ?? '');
  t.true(up.steps.some((s) => s.detail === 'the sandbox shows 2 CPUs, 512 MiB'), JSON.stringify(up.steps));
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

// PID 1 is Lodger's spooler (bundle.ts): it polls for command scripts, so what it costs
// idle and how soon a command starts are its two figures.
maybe('the spooler: idle, the sandbox uses little CPU; a command\'s first output comes within 300 ms; orphans are reaped', async (t) => {
  const sb = await boot('gv-spool');
  await collect(await sb.exec({ argv: ['true'] }));
  await new Promise((r) => setTimeout(r, 1000));
  const u0 = (await sb.metrics()).cpuUsageUsec;
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, 10_000));
  const idle = ((await sb.metrics()).cpuUsageUsec - u0) / ((performance.now() - t0) * 1000);
  const firsts: number[] = [];
  for (let i = 0; i < 5; i++) {
    const s = performance.now();
    const h = await sb.exec({ argv: ['echo', 'hi'] });
    const first = new Promise<number>((r) => h.onStdout(() => r(performance.now() - s)));
    firsts.push(await first);
    await h.wait();
  }
  firsts.sort((a, b) => a - b);
  // A command's orphans are the spooler's (PID 1) to reap: none stays a zombie.
  await collect(await sb.exec({ argv: ['sh', '-c', 'sleep 0.2 & sleep 0.2 & exit 0'] }));
  await new Promise((r) => setTimeout(r, 600));
  const zombies = await collect(await sb.exec({ argv: ['sh', '-c', 'cat /proc/[0-9]*/stat | grep -c ") Z " || true'] }));
  t.is(zombies.stdout, '0\n', 'no zombies left in the sandbox');
  t.log(`idle: ${(idle * 100).toFixed(2)}% of a CPU over 10 s (sentry, gofer and spooler); start to first output: median ${firsts[2]!.toFixed(0)} ms, max ${firsts[4]!.toFixed(0)} ms`);
  // The sentry alone idles at ~3.8% here (spooler napping 100 s); the spooler adds ~0.6 at 50 ms.
  t.true(idle < 0.08, `idle sandbox used ${(idle * 100).toFixed(2)}% of a CPU`);
  t.true(firsts[2]! <= 300, `start to first output: median ${firsts[2]!.toFixed(0)} ms`);
});

maybe('through a checkpoint and restore the spooler keeps its place: the running command goes on, a new one runs, a signal reaches it', async (t) => {
  const sb = await boot('gv-cr');
  const before = await collect(await sb.exec({ argv: ['echo', 'one'] }));
  t.is(before.stdout, 'one\n');
  const long = await sb.exec({ argv: ['sh', '-c', 'echo a; sleep 1; echo b'] });
  let out = '';
  long.onStdout((b) => { out += b.toString(); });
  await new Promise((r) => setTimeout(r, 300));
  await sb.suspend();
  await t.throwsAsync(long.signal(15), { instanceOf: SandboxError }, 'no signal while suspended');
  await sb.resume();
  t.like(await long.wait(), { code: 0 });
  t.is(out, 'a\nb\n');
  const after = await collect(await sb.exec({ argv: ['echo', 'two'] }));
  t.is(after.stdout, 'two\n');
  const sleeper = await sb.exec({ argv: ['sleep', '30'] });
  await sleeper.signal(9);
  t.like(await sleeper.wait(), { code: null, signal: 9 });
  t.deepEqual(readdirSync(sb.paths.cmd).filter((f) => /^\d+\.sh$/.test(f)).sort(), ['1.sh', '2.sh', '3.sh', '4.sh']);
});
