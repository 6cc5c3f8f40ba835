// One behaviour for every backend: the same cases run against real QEMU, real gVisor and
// the fake (test/contract.test.ts), so the backends cannot drift apart. A case a backend
// cannot pass yet is registered as an expected failure with the reason (ava turns it red
// the day it passes); the fake, which runs no real guest, skips what only a guest shows.
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { SandboxError, type Sandbox, type SandboxRuntime, type SandboxSpec } from '../sandbox-runtime/index.ts';
import { collect } from './helpers.ts';
import { passableTmpDir } from '../bench/index.ts';

export interface ContractBackend {
  name: string;
  /** Set when the backend cannot run here: every case is registered as skipped. */
  skip?: string;
  open(dir: string): Promise<SandboxRuntime>;
  close(): Promise<void>;
  /** A real guest runs the commands (the fake only echoes). */
  realGuest: boolean;
  /** Kills the sandbox's VMM or sentry process from outside, as a crash would. */
  kill(sb: Sandbox): void;
  /** Cases this backend is known not to pass, with why. */
  knownGaps?: Partial<Record<'guestSeesResize' | 'restore', string>>;
  /** Host paths a stopped sandbox must have left behind none of. */
  leftovers?(sb: Sandbox): string[];
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const counting = (n: number): string => `i=0; while [ $i -lt ${n} ]; do i=$((i+1)); echo $i; sleep 0.1; done`;
const lines = (n: number): string => Array.from({ length: n }, (_, i) => `${i + 1}\n`).join('');

export function contractSuite(b: ContractBackend): void {
  const dir = passableTmpDir(`lodger-contract-${b.name}-`);
  let rt: SandboxRuntime | null = null;
  let shared: Sandbox | null = null;
  const started: Sandbox[] = [];
  const boot = async (id: string, extra: Partial<SandboxSpec> = {}): Promise<Sandbox> => {
    const sb = await rt!.create({ id, vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 512, ...extra });
    started.push(sb);
    await sb.start();
    return sb;
  };

  test.before(async () => {
    if (b.skip) return;
    rt = await b.open(dir);
    shared = await boot(`${b.name}-shared`);
  });
  test.after.always(async () => {
    for (const sb of started) await sb.stop({ graceMs: 0 }).catch(() => {});
    await b.close();
    rmSync(dir, { recursive: true, force: true });
  });

  type Case = (t: ExecutionContext, rt: SandboxRuntime, sb: Sandbox) => Promise<void>;
  const def = (title: string, fn: Case, gap?: 'guestSeesResize' | 'restore'): void => {
    const why = gap ? b.knownGaps?.[gap] : undefined;
    const reg = b.skip ? test.serial.skip : why ? test.serial.failing : test.serial;
    reg(`${b.name}: ${title}${why ? ` (known gap: ${why})` : ''}`, (t) => fn(t, rt!, shared!));
  };

  def('exit codes, stdout and stderr apart, argv passed as given, a signal delivered and reported', async (t, _rt, sb) => {
    const r = await collect(await sb.exec({ argv: ['sh', '-c', 'echo out "$1"; echo err >&2; exit 3', 'sh', "it's $HOME"] }));
    if (b.realGuest) t.deepEqual(r, { stdout: "out it's $HOME\n", stderr: 'err\n', code: 3, signal: null });
    else t.is(r.code, 0);
    if (!b.realGuest) return;
    const h = await sb.exec({ argv: ['sleep', '30'] });
    await sleep(300);
    await h.signal(9);
    t.like(await h.wait(), { code: null, signal: 9 });
  });

  def('resize up and down: the status follows, out-of-range is refused with a typed error and changes nothing', async (t, _rt, sb) => {
    t.like(await sb.update({ vcpus: 2, memoryMiB: 512 }), { vcpus: 2, memoryMiB: 512 });
    t.like(sb.status(), { vcpus: 2, memoryMiB: 512 });
    t.like(await sb.update({ vcpus: 1, memoryMiB: 256 }), { vcpus: 1, memoryMiB: 256 });
    const e = await t.throwsAsync(sb.update({ vcpus: 3 }));
    t.is((e as SandboxError).code, 'SANDBOX_BAD_SPEC');
    t.like(sb.status(), { vcpus: 1, memoryMiB: 256 });
  });

  // What a resize is for, whatever the guest reports: the job's CPU follows it. Two
  // spinners use about one core at 1 vCPU and about two at 2 (CPU time of the sandbox's
  // cgroup, host-side; not a timing, a share).
  def('a resize changes what the job gets: two spinners use about one core at 1 vCPU, more than one at 2', async (t, _rt, sb) => {
    if (!b.realGuest) {
      t.pass('no guest');
      return;
    }
    const cores = async (): Promise<number> => {
      const spin = await sb.exec({ argv: ['sh', '-c', '(while :; do :; done) & (while :; do :; done) & sleep 3; kill %1 %2'] });
      await sleep(800);
      const u0 = (await sb.metrics()).cpuUsageUsec;
      const t0 = performance.now();
      await sleep(1500);
      const used = ((await sb.metrics()).cpuUsageUsec - u0) / ((performance.now() - t0) * 1000);
      await spin.wait();
      return used;
    };
    const one = await cores();
    await sb.update({ vcpus: 2 });
    const two = await cores();
    await sb.update({ vcpus: 1 });
    const back = await cores();
    t.log(`cores used: ${one.toFixed(2)} at 1 vCPU, ${two.toFixed(2)} at 2, ${back.toFixed(2)} back at 1`);
    t.true(one > 0.5 && one < 1.4, `at 1 vCPU: ${one.toFixed(2)} cores`);
    t.true(two > 1.4, `at 2 vCPUs: ${two.toFixed(2)} cores`);
    t.true(back > 0.5 && back < 1.4, `back at 1 vCPU: ${back.toFixed(2)} cores`);
  });

  // Where a job looks for its size: the CPU count (nproc: the online CPUs of a VM, the
  // affinity in a container) and the memory limit (MemTotal in a VM; a container's
  // MemTotal is not its limit, its memory cgroup's limit is, where one is mounted).
  def('the guest sees a resize: its CPU count and memory limit, read from inside', async (t, _rt, sb) => {
    if (!b.realGuest) {
      t.pass('no guest');
      return;
    }
    const seen = async (): Promise<{ cpus: number; memMiB: number }> => {
      const r = await collect(await sb.exec({ argv: ['sh', '-c', 'nproc; grep MemTotal /proc/meminfo; cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || true'] }));
      const [cpus, mem, limit] = r.stdout.trim().split('\n');
      const memTotal = Number(/(\d+) kB/.exec(mem ?? '')?.[1] ?? 0) / 1024;
      return { cpus: Number(cpus), memMiB: limit && /^\d+$/.test(limit) ? Math.min(memTotal, Number(limit) / 1048576) : memTotal };
    };
    const before = await seen();
    await sb.update({ vcpus: 2, memoryMiB: 512 });
    const up = await seen();
    await sb.update({ vcpus: 1, memoryMiB: 256 });
    const down = await seen();
    t.log(`before ${JSON.stringify(before)}, at 2 vCPUs / 512 MiB ${JSON.stringify(up)}, back ${JSON.stringify(down)}`);
    t.is(before.cpus, 1);
    t.is(up.cpus, 2);
    t.is(down.cpus, 1);
    t.true(Math.abs(up.memMiB - before.memMiB - 256) <= 8, `the memory limit grew by ${(up.memMiB - before.memMiB).toFixed(0)} MiB, not 256`);
    t.true(Math.abs(down.memMiB - before.memMiB) <= 8, `the memory limit back at ${down.memMiB.toFixed(0)} MiB from ${before.memMiB.toFixed(0)}`);
  }, 'guestSeesResize');

  def('pause stops the job, resume continues it, no output lost or repeated', async (t, _rt, sb) => {
    const h = await sb.exec({ argv: ['sh', '-c', counting(15)] });
    let out = '';
    h.onStdout((x) => { out += x.toString(); });
    await sleep(600);
    await sb.pause();
    t.is(sb.status().state, 'paused');
    if (b.realGuest) {
      await sleep(200);
      const frozen = out;
      await sleep(500);
      t.is(out, frozen, 'no output while paused');
    }
    await sb.resume();
    t.is(sb.status().state, 'running');
    t.like(await h.wait(), { code: 0 });
    if (b.realGuest) t.is(out, lines(15), 'every line, once, in order');
  });

  def('suspend to disk ends the VMM, resume restores it, the job loses no work', async (t) => {
    const sb = await boot(`${b.name}-suspend`);
    const h = await sb.exec({ argv: ['sh', '-c', counting(20)] });
    let out = '';
    h.onStdout((x) => { out += x.toString(); });
    await sleep(600);
    const rep = await sb.suspend();
    t.is(sb.status().state, 'suspended');
    t.is(sb.status().pid, null);
    t.true(rep.bytes >= 0);
    await sb.resume();
    t.is(sb.status().state, 'running');
    t.like(await h.wait(), { code: 0 });
    if (b.realGuest) t.is(out, lines(20), 'every line, once, in order');
    await sb.stop();
  }, 'restore');

  def('/output (named by $LODGER_OUTPUT, as HOME by $HOME) is collected into the output directory; stop leaves nothing: not listed, no run files or cgroup', async (t, rt) => {
    const out = join(dir, 'out');
    const sb = await boot(`${b.name}-out`, { outputDir: out });
    const paths = b.leftovers?.(sb) ?? [];
    const r = await collect(await sb.exec({ argv: ['sh', '-c', 'echo "$HOME" >&2; echo result > "$LODGER_OUTPUT/r.txt"'] }));
    if (b.realGuest) t.is(r.stderr, '/root\n');
    t.is(r.code, 0, r.stderr);
    await sb.stop();
    if (b.realGuest) t.is(readFileSync(join(out, 'r.txt'), 'utf8'), 'result\n');
    t.is(sb.status().state, 'stopped');
    t.deepEqual((await rt.list()).filter((x) => x.id === sb.id), []);
    t.true(paths.length > 0 || !b.realGuest, 'a real backend names what it leaves on the host');
    t.deepEqual(paths.filter((p) => existsSync(p)), [], 'nothing left on the host');
  });

  def('a killed VMM surfaces as SANDBOX_VMM_EXITED on the running command; shutdown(id) leaves nothing and may be repeated', async (t, rt) => {
    const sb = await boot(`${b.name}-kill`);
    const paths = b.leftovers?.(sb) ?? [];
    const h = await sb.exec({ argv: ['sh', '-c', 'sleep 60'] });
    await sleep(300);
    b.kill(sb);
    const e = await t.throwsAsync(h.wait());
    t.is((e as SandboxError).code, 'SANDBOX_VMM_EXITED');
    t.is((await sb.wait()).expected, false);
    t.is(sb.status().state, 'failed');
    await rt.shutdown(sb.id);
    await rt.shutdown(sb.id);
    t.deepEqual((await rt.list()).filter((x) => x.id === sb.id), []);
    t.deepEqual(paths.filter((p) => existsSync(p)), [], 'nothing left on the host');
  });

  // A lodgerd pinned to housekeeping CPUs must not pin its sandboxes there (since Linux 6.2
  // an affinity asked for is inherited and kept through cpuset changes): the sandbox's
  // processes may run on every online CPU, and its cgroup's cpuset alone places them.
  def('a sandbox booted by an owner pinned to one CPU may run on every online CPU: its cgroup places it, not its owner\'s affinity', async (t) => {
    const online = readFileSync('/sys/devices/system/cpu/online', 'utf8').trim();
    if (!b.realGuest || online === '0') { t.pass('no process, or one CPU'); return; }
    const pin = (cpus: string): void => { spawnSync('taskset', ['-a', '-p', '-c', cpus, String(process.pid)], { stdio: 'ignore' }); };
    let sb: Sandbox | null = null;
    pin('0');
    try {
      sb = await boot(`${b.name}-affinity`);
    } finally {
      pin(online);
    }
    const allowed = /^Cpus_allowed_list:\s*(\S+)$/m.exec(readFileSync(`/proc/${sb.status().pid!}/status`, 'utf8'))?.[1];
    t.is(allowed, online);
    await sb.stop();
  });
}
