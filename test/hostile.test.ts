// Every batch job is hostile: the jail as /proc shows it, and what a hostile guest and a
// faulty host can do, each case asserting its outcome on real QEMU (TCG here), real
// cgroups and real small filesystems (tmpfs the test mounts, never the machine's disk).
// One sandbox is shared by the cases that leave it usable; those that wreck a guest boot
// their own. Longer variants (a 1 GiB log flood, repeated kills) are bench/hostile.ts.
import test from 'ava';
import fc from 'fast-check';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync } from 'node:fs';
import * as net from 'node:net';
import { join } from 'node:path';
import { parsePolicyText, PolicyError } from '../control/index.ts';
import { InvalidRequest, JobStore, Scheduler, toJobSpec, type JobSpec } from '../daemon/index.ts';
import { AgentClient, encodeFrame, FrameType, readJailStatus, SandboxError, VmmExitedError, type HostedSandbox } from '../sandbox-runtime/index.ts';
import { JOB_LINES, killOwnerMid } from '../bench/index.ts';
import { collect, testRuntime, type TestRuntime } from './helpers.ts';

const root = process.getuid?.() === 0;
const asRoot = root ? test.serial : test.serial.skip;

let rt: TestRuntime;
let sb: HostedSandbox;
let out: string;
const mounts: string[] = [];

/** A size-limited tmpfs the test mounts and always unmounts. */
function tmpfs(name: string, size: string): string {
  const dir = join(rt.dir, name);
  mkdirSync(dir, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'lodger-test', dir]);
  mounts.push(dir);
  return dir;
}

const jobSpec = (command: string[], extra: Partial<JobSpec> = {}): JobSpec => ({
  name: 'hostile', command, env: {}, rootfs: '', outputDir: '', vcpus: { min: 1, max: 1 }, memoryMiB: { min: 256, max: 256 },
  priority: 0, timeoutSeconds: 0, retries: 0, ...extra,
});

test.before(async () => {
  rt = await testRuntime('hostile');
  out = join(rt.dir, 'out');
  mkdirSync(out);
  sb = await rt.boot({ id: 'hostile', vcpus: 2, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 256, outputDir: out, outputDiskMiB: 32 });
});

test.after.always(async () => {
  await rt?.stopAll();
  for (const m of mounts.reverse()) spawnSync('umount', ['-l', m]);
  // Nothing of this suite runs on: no VMM from its run directory is left.
  const left = readdirSync('/proc').filter((p) => /^\d+$/.test(p) && (() => {
    try { return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(rt.dir); } catch { return false; }
  })());
  if (left.length) throw new Error(`VMMs left running: ${left.join(' ')}`);
});

asRoot('the jail: own uid/gid, Seccomp 2, NoNewPrivs 1, no capabilities, its own root and namespaces; it cannot open the job store', async (t) => {
  const pid = sb.pid!;
  const j = readJailStatus('/proc', pid);
  t.log(JSON.stringify(j));
  t.true(j.uid.every((u) => u === j.uid[0] && u !== 0), `uid ${j.uid}`);
  t.true(j.gid.every((g) => g === j.gid[0] && g !== 0), `gid ${j.gid}`);
  t.deepEqual(j.groups, [], 'no supplementary groups under TCG');
  t.is(j.seccomp, 2);
  t.is(j.noNewPrivs, 1);
  for (const c of [j.capEff, j.capPrm, j.capBnd]) t.regex(c, /^0+$/);
  t.not(j.root, '/');
  t.deepEqual(j.ownNamespaces.filter((n) => ['mnt', 'ipc', 'uts', 'net'].includes(n)).sort(), ['ipc', 'mnt', 'net', 'uts']);
  // What its root holds: /usr and this sandbox's files, nothing of another sandbox or of the state directory.
  const other = await rt.boot({ id: 'neighbour', vcpus: 1, maxVcpus: 1, memoryMiB: 256, maxMemoryMiB: 256 });
  const runDir = rt.runtime.opts.host.runDir;
  t.deepEqual(readdirSync(join(j.root, runDir)), ['hostile'], 'only its own run directory');
  t.deepEqual(readdirSync(join(j.root, runDir, 'hostile')).sort(), ['console.log', 'output.img', 's']);
  t.not(readJailStatus('/proc', other.pid!).uid[0], j.uid[0], 'each sandbox its own uid');
  // A job store as lodgerd keeps it (state directory 0700); tried from the VMM's uid, outside and inside its jail.
  const state = join(rt.dir, 'state');
  mkdirSync(state, { mode: 0o700 });
  new JobStore(join(state, 'jobs.db')).close();
  const asVmm = ['--reuid', String(j.uid[0]), '--regid', String(j.gid[0]), '--clear-groups', 'cat', join(state, 'jobs.db')];
  const outside = spawnSync('setpriv', asVmm, { encoding: 'utf8' });
  t.not(outside.status, 0);
  t.regex(outside.stderr, /Permission denied/);
  const inside = spawnSync('nsenter', ['--target', String(pid), '--mount', '--root', 'setpriv', ...asVmm], { encoding: 'utf8' });
  t.not(inside.status, 0);
  t.regex(inside.stderr, /No such file or directory/);
  await other.stop({ graceMs: 0 });
});

test.serial('10,000 malformed agent frames (fast-check) on a real socket: the host parser stays bounded, nothing throws, valid frames still get through', async (t) => {
  const path = join(rt.dir, 'hostile-agent.sock');
  let guest!: net.Socket;
  const server = net.createServer((s) => { guest = s; s.on('error', () => {}); });
  await new Promise<void>((r) => server.listen(path, r));
  const client = new AgentClient(path);
  const errors: Error[] = [];
  const onError = (e: Error): void => { errors.push(e); };
  process.on('uncaughtException', onError);
  try {
    await client.connect(5000);
    while (!guest) await new Promise((r) => setTimeout(r, 5));
    // Commands in flight, so that lying output, exit and error frames reach an exec.
    const execs = await Promise.all([1, 2, 3].map((id) => client.resumeExec(id, [0, 0])));
    for (const x of execs) { x.onStdout(() => {}); x.onStderr(() => {}); x.done.catch(() => {}); }
    const types = Object.values(FrameType).filter((v): v is number => typeof v === 'number');
    const frame = fc.oneof(
      fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)), // garbage
      fc.tuple(fc.constantFrom(...types), fc.integer({ min: 0, max: 3 }), fc.uint8Array({ maxLength: 80 })) // real frames, lying payloads
        .map(([ty, id, p]) => encodeFrame(ty, id, Buffer.from(p))),
      fc.tuple(fc.constantFrom(...types), fc.uint8Array({ maxLength: 40 }), fc.nat(23)) // a real frame with a byte flipped
        .map(([ty, p, at]) => { const b = encodeFrame(ty, 0, Buffer.from(p)); b[at % b.length]! ^= 0xff; return b; }),
      fc.constant(Buffer.from([0x4c, 0x47, 1, 6, 0, 0, 0, 0, 0xff, 0xff, 0x0f, 0])), // a header claiming 1 MiB, never sent
    );
    const frames = fc.sample(frame, { numRuns: 10_000, seed: 14 });
    let maxPending = 0;
    for (let i = 0; i < frames.length; i += 500) {
      guest.write(Buffer.concat(frames.slice(i, i + 500)));
      await new Promise((r) => setTimeout(r, 5));
      maxPending = Math.max(maxPending, (client as unknown as { decoder: { pending: number } }).decoder.pending);
    }
    // A real guest's answer still gets through (after the stale-frame timer cleared any half frame).
    const pong = new Promise<void>((resolve) => client.once('ready', resolve));
    (client as unknown as { ready: boolean }).ready = false;
    guest.write(encodeFrame(FrameType.Pong, 0));
    await Promise.race([pong, new Promise((_, rej) => setTimeout(() => rej(new Error('no pong')), 10_000))]);
    t.deepEqual(errors, [], 'nothing thrown out of the socket handler');
    t.true(maxPending <= (1 << 20) + 20 + 64 * 500, `decoder held ${maxPending} bytes at most`);
    const s = client.stats;
    if (s) t.true(s.cpusOnline <= s.cpusPresent && s.memAvailableKiB <= s.memTotalKiB, 'no implausible stats believed');
  } finally {
    process.off('uncaughtException', onError);
    client.close();
    guest?.destroy();
    server.close();
  }
});

test.serial('10,000 malformed API requests (fast-check): each is refused with INVALID_ARGUMENT or accepted within bounds', (t) => {
  let refused = 0;
  // Requests as gRPC decodes them (typed fields), with hostile values.
  const u32 = fc.oneof(fc.constant(0), fc.nat(300), fc.constant(2 ** 32 - 1));
  const text = fc.oneof(fc.string({ maxLength: 40 }), fc.constantFrom('', '/', '\0', '../../etc', '/proc/self/root', 'a'.repeat(5000)));
  const request = fc.record({
    name: text, command: fc.array(text, { maxLength: 5 }), env: fc.dictionary(text, text, { maxKeys: 3 }), rootfs: text, outputDir: text,
    vcpus: fc.option(fc.record({ min: u32, max: u32 })), memoryMib: fc.option(fc.record({ min: u32, max: u32 })),
    priority: fc.integer(), timeoutSeconds: u32, retries: u32,
  }, { requiredKeys: [] });
  fc.assert(fc.property(request, (v) => {
    try {
      const spec = toJobSpec(v);
      // What is accepted is within the bounds the scheduler and the runtime rely on.
      if (spec.vcpus.max > 64 || spec.vcpus.min > spec.vcpus.max || spec.memoryMiB.min < 128 || spec.timeoutSeconds > 2_147_483) throw new Error(`accepted ${JSON.stringify(spec)}`);
      if (!spec.command[0] || [...spec.command, ...Object.values(spec.env)].some((c) => c.includes('\0'))) throw new Error('accepted a NUL byte');
    } catch (e) {
      if (!(e instanceof InvalidRequest)) throw e;
      refused++;
    }
  }), { numRuns: 10_000, seed: 14 });
  t.true(refused > 2000, `${refused} of 10000 API requests refused`);
  t.log(`${refused} of 10000 API requests refused`);
});

test('10,000 malformed policy files (fast-check): each is refused with a PolicyError at file:line:column', (t) => {
  const yamlish = fc.oneof(fc.string({ maxLength: 200 }),
    fc.record({ apiVersion: fc.constantFrom('lodger.dev/v1', 'x'), kind: fc.constantFrom('OnlineService', 'BatchPool', 'Nope'), metadata: fc.anything({ maxDepth: 2 }), spec: fc.anything({ maxDepth: 3 }) })
      .map((o) => JSON.stringify(o)));
  fc.assert(fc.property(yamlish, (text) => {
    try { parsePolicyText(text, 'fuzz.yaml'); } catch (e) { if (!(e instanceof PolicyError)) throw e; t.regex(e.message, /^fuzz\.yaml:\d+:\d+: /); }
  }), { numRuns: 10_000, seed: 14 });
  t.pass();
});

test.serial('in the guest, kill -9 and SIGSTOP of the agent (PID 1) do nothing: the kernel protects init, the agent answers', async (t) => {
  const r = await collect(await sb.exec({ argv: ['sh', '-c', 'kill -9 1; kill -STOP 1; echo sent'] }));
  t.is(r.stdout, 'sent\n');
  t.true((await sb.agentClient!.ping(5000)) < 5000);
});

test.serial('/output with links out, device nodes, a fifo, a 100 GiB sparse file, setuid bits and a host symlink planted in the output directory: only files and directories come back, nothing outside is touched', async (t) => {
  const victim = join(rt.dir, 'victim');
  mkdirSync(victim);
  symlinkSync(victim, join(out, 'planted')); // left by an earlier job: the guest writes /output/planted/x
  const r = await collect(await sb.exec({ argv: ['sh', '-c', [
    'cd $LODGER_OUTPUT', 'ln -s /etc etc', 'ln -s ../../../.. up', 'mknod null c 1 3', 'mknod disk b 8 0', 'mkfifo fifo',
    'truncate -s 100G huge', 'echo real > result.txt', 'echo x > suid && chmod 4755 suid', 'mkdir -p planted/deep && echo gotcha > planted/x',
    'mkdir d && echo nested > d/n.txt', 'sync', 'echo done',
  ].join(' && ')] }));
  t.is(r.stdout, 'done\n', r.stderr);
  const names = await sb.collectOutput();
  t.deepEqual(names.sort(), ['d', 'planted', 'result.txt', 'suid']);
  t.deepEqual(readdirSync(victim), [], 'nothing written through the planted link');
  t.true(lstatSync(join(out, 'planted')).isDirectory(), 'the planted link was replaced by a directory of ours');
  t.is(readFileSync(join(out, 'planted', 'x'), 'utf8'), 'gotcha\n');
  t.is(readFileSync(join(out, 'result.txt'), 'utf8'), 'real\n');
  t.is(readFileSync(join(out, 'd', 'n.txt'), 'utf8'), 'nested\n');
  t.is(statSync(join(out, 'suid')).mode & 0o7777, 0o644, 'no setuid bit');
  for (const gone of ['etc', 'up', 'null', 'disk', 'fifo', 'huge']) t.false(existsSync(join(out, gone)) || !!lstatSync(join(out, gone), { throwIfNoEntry: false }), gone);
  t.false(readdirSync(out).some((n) => n.startsWith('.lodger-copy-')), 'no temporary left');
  await collect(await sb.exec({ argv: ['sh', '-c', 'rm -rf $LODGER_OUTPUT/* && sync'] }));
});

test.serial('/output filled to the last block: the job sees ENOSPC, the copy stops at the disk\'s size, the sandbox works on', async (t) => {
  const r = await collect(await sb.exec({ argv: ['sh', '-c', 'dd if=/dev/zero of=$LODGER_OUTPUT/fill bs=1M 2>&1; echo rc=$?; sync'] }));
  t.regex(r.stdout, /No space left on device/);
  t.regex(r.stdout, /rc=1/);
  await sb.collectOutput();
  const size = statSync(join(out, 'fill')).size;
  t.true(size > 20 * 1048576 && size <= 32 * 1048576, `${size} bytes copied`);
  t.log(`filled /output with ${(size / 1048576).toFixed(1)} MiB`);
  await collect(await sb.exec({ argv: ['sh', '-c', 'rm -f $LODGER_OUTPUT/fill && sync'] }));
  t.is((await collect(await sb.exec({ argv: ['echo', 'ok'] }))).stdout, 'ok\n');
});

test.serial('memory ballooned past the guest\'s RAM: the guest OOM-kills the job, the VMM stays within guest RAM plus its overhead, the sandbox works on', async (t) => {
  // A string doubled until the guest's 256 MiB give out: malloc fails or the OOM killer ends it.
  const r = await collect(await sb.exec({ argv: ['sh', '-c', 'awk \'BEGIN { s = "x"; while (1) s = s s }\''] }));
  t.not(r.code, 0, `exit ${r.code} signal ${r.signal}`);
  const mem = await sb.vmmMemory();
  t.log(`VMM RSS ${(mem!.rssBytes / 1048576).toFixed(0)} MiB, of it guest RAM ${(mem!.guestRamRssBytes / 1048576).toFixed(0)} MiB`);
  t.true(mem!.rssBytes - mem!.guestRamRssBytes < 160 * 1048576, 'overhead bounded');
  t.true(mem!.guestRamRssBytes <= 257 * 1048576, 'guest RAM bounded by its size');
  t.is((await collect(await sb.exec({ argv: ['echo', 'alive'] }))).stdout, 'alive\n');
});

test.serial('a busy loop on every vCPU while it is shrunk: 2 -> 1 completes, the guest and QEMU agree', async (t) => {
  await sb.update({ vcpus: 2 });
  const spin = await sb.exec({ argv: ['sh', '-c', '(while :; do :; done) & (while :; do :; done) & sleep 6; kill %1 %2'] });
  await new Promise((r) => setTimeout(r, 1000));
  const t0 = performance.now();
  const rep = await sb.update({ vcpus: 1 });
  t.log(`shrunk under load in ${(performance.now() - t0).toFixed(0)} ms`);
  t.is(rep.vcpus, 1);
  t.is((await sb.guestStats()).cpusOnline, 1);
  t.deepEqual(await spin.wait(), { code: 0, signal: null });
});

test.serial('a log flood past the per-job limit: the store keeps the limit and a marker, the job gets the reason, this process stays small', async (t) => {
  const store = new JobStore(join(rt.dir, 'flood.db'));
  const s = new Scheduler({ store, runtime: rt.runtime, maxRunning: () => 1, logLimitBytes: 1 << 20 });
  const rss0 = process.memoryUsage().rss;
  store.submit('flood', jobSpec(['sh', '-c', 'head -c 16777216 /dev/zero; echo tail-marker >&2; exit 0']));
  s.start();
  const job = await s.waitFinal('flood');
  await s.stop(true);
  const stdout = store.logs('flood').filter((l) => l.stream === 'stdout').reduce((n, l) => n + l.data.length, 0);
  const stderr = store.logs('flood').filter((l) => l.stream === 'stderr').map((l) => l.data.toString()).join('');
  t.is(stdout, 1 << 20);
  t.regex(stderr, /output limit of 1048576 bytes reached/);
  t.is(job.state, 'succeeded');
  // Everything past the limit is counted: 16 MiB of stdout and 12 bytes of stderr, less the 1 MiB stored.
  t.regex(job.transitions.at(-1)!.reason, new RegExp(`SANDBOX_OUTPUT_LIMIT: output past 1048576 bytes dropped \\(${16 * 1048576 + 12 - 1048576} bytes\\)`));
  t.log(`rss grew ${((process.memoryUsage().rss - rss0) / 1048576).toFixed(0)} MiB over a 16 MiB flood`);
  t.true(process.memoryUsage().rss - rss0 < 64 * 1048576);
  store.close();
});

asRoot('the job store\'s disk full (ENOSPC, a 1 MiB tmpfs) during output storage: the job fails naming SQLITE_FULL, the scheduler serves on', async (t) => {
  const dir = tmpfs('full-store', '1m');
  const store = new JobStore(join(dir, 'jobs.db'));
  const logs: string[] = [];
  const s = new Scheduler({ store, runtime: rt.runtime, maxRunning: () => 1, log: (m) => logs.push(m) });
  store.submit('big', jobSpec(['sh', '-c', 'head -c 4194304 /dev/zero; sleep 30']));
  s.start();
  for (let i = 0; i < 600 && !logs.some((l) => /output not stored/.test(l)); i++) await new Promise((r) => setTimeout(r, 100));
  t.true(logs.some((l) => /job big: output not stored: SQLITE_FULL/.test(l)), logs.join('\n'));
  await new Promise((r) => setTimeout(r, 4000)); // cancel: SIGTERM, then the sandbox
  t.deepEqual(s.sandboxes(), [], 'its sandbox was stopped');
  await s.stop(true);
  t.notThrows(() => store.list(['running', 'failed'], 10), 'the store still answers');
  store.close();
});

test.serial('the job store locked by another process: refused at open with STORE_LOCKED naming the file; once open it is lodgerd\'s alone, another process\'s write is refused and the store serves on', async (t) => {
  const file = join(rt.dir, 'locked.db');
  // Another process's connection, as sqlite3(1) or a backup tool would hold one.
  const other = (mode: 'hold' | 'write') => spawn(process.execPath, ['-e', `
    const db = new (require('better-sqlite3'))(process.env.DB);
    db.pragma('busy_timeout = 300');
    try { db.exec(process.env.MODE === 'hold' ? 'BEGIN EXCLUSIVE' : 'BEGIN IMMEDIATE; COMMIT'); console.log(process.env.MODE === 'hold' ? 'held' : 'wrote'); }
    catch (e) { console.log('refused ' + e.code); }
    if (process.env.MODE === 'hold') setInterval(() => {}, 1e9);`], { cwd: join(import.meta.dirname, '..'), env: { ...process.env, DB: file, MODE: mode }, stdio: ['ignore', 'pipe', 'inherit'] });
  const firstLine = (c: ReturnType<typeof other>): Promise<string> => new Promise((r) => c.stdout!.once('data', (b) => r(String(b).trim())));
  const holder = other('hold');
  try {
    t.is(await firstLine(holder), 'held');
    const e = t.throws(() => new JobStore(file));
    t.is((e as { code?: string }).code, 'STORE_LOCKED');
    t.regex(e!.message, /locked\.db is locked by another process/);
  } finally {
    holder.kill('SIGKILL');
    await new Promise((r) => holder.once('exit', r));
  }
  const store = new JobStore(file);
  try {
    store.submit('mine', jobSpec(['true']));
    const w = other('write');
    t.is(await firstLine(w), 'refused SQLITE_BUSY');
    store.appendLog('mine', 'stdout', Buffer.from('still mine\n'));
    t.is(store.logs('mine')[0]!.data.toString(), 'still mine\n');
  } finally {
    store.close();
  }
});

test.serial('a guest that reboots itself (the exit a kernel panic with panic=-1 causes): typed error, state failed, synced output copied after its death', async (t) => {
  const o = join(rt.dir, 'panic-out');
  mkdirSync(o);
  const p = await rt.boot({ id: 'panics', vcpus: 1, maxVcpus: 1, memoryMiB: 256, maxMemoryMiB: 256, outputDir: o });
  const h = await p.exec({ argv: ['sh', '-c', 'echo before > $LODGER_OUTPUT/r && sync && reboot -f'] });
  const e = await t.throwsAsync(h.wait(), { instanceOf: VmmExitedError });
  t.regex(e!.message, /QEMU exited \(code 0\): the guest shut down, rebooted or panicked/);
  t.is((await p.wait()).expected, false);
  t.is(p.status().state, 'failed');
  await p.stop();
  t.is(readFileSync(join(o, 'r'), 'utf8'), 'before\n');
});

test.serial('a fork bomb in the guest: its VMM stays in its vCPUs and cgroup, stop() still ends it, the other sandbox is untouched', async (t) => {
  const b = await rt.boot({ id: 'bomb', vcpus: 1, maxVcpus: 1, memoryMiB: 256, maxMemoryMiB: 256 });
  const dirs = [...(b.cgroupDirs?.values() ?? [])];
  void b.exec({ argv: ['sh', '-c', 'bomb() { bomb | bomb & }; bomb'] }).then((h) => h.wait()).catch(() => {});
  await new Promise((r) => setTimeout(r, 5000));
  const t0 = performance.now();
  await b.stop({ graceMs: 1000 });
  t.log(`stopped in ${(performance.now() - t0).toFixed(0)} ms`);
  t.is(b.status().state, 'stopped');
  t.deepEqual(dirs.filter((d) => existsSync(d)), [], 'cgroup removed');
  t.is((await collect(await sb.exec({ argv: ['echo', 'neighbour ok'] }))).stdout, 'neighbour ok\n');
});

test.serial('QEMU killed mid-resize: the resize fails with a typed error naming the exit; cgroup and run files are removed', async (t) => {
  const v = await rt.boot({ id: 'kill-resize', vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 1024 });
  const dirs = [...(v.cgroupDirs?.values() ?? [])];
  const resizing = v.update({ vcpus: 2, memoryMiB: 1024 });
  await new Promise((r) => setTimeout(r, 30));
  process.kill(v.pid!, 'SIGKILL');
  const e = await t.throwsAsync(resizing, { instanceOf: SandboxError });
  t.true(['SANDBOX_VMM_EXITED', 'SANDBOX_RESIZE_FAILED'].includes(e!.code), e!.code);
  t.regex(e!.message, /SIGKILL|exited/);
  await v.stop();
  t.deepEqual(dirs.filter((d) => existsSync(d)), [], 'cgroup removed');
  t.false(existsSync(join(rt.runtime.opts.host.runDir, 'kill-resize')), 'run files removed');
});

test.serial('QEMU killed mid-suspend, and the new QEMU killed mid-restore: typed errors; a sandbox whose state was saved resumes on a second try and its job finishes', async (t) => {
  const a = await rt.boot({ id: 'kill-suspend', vcpus: 1, maxVcpus: 1, memoryMiB: 256, maxMemoryMiB: 256 });
  void a.exec({ argv: ['sleep', '60'] });
  const suspending = a.suspend();
  await new Promise((r) => setTimeout(r, 100));
  process.kill(a.pid!, 'SIGKILL');
  const e = await t.throwsAsync(suspending, { instanceOf: SandboxError });
  t.true(['SANDBOX_SUSPEND_FAILED', 'SANDBOX_VMM_EXITED'].includes(e!.code), `${e!.code}: ${e!.message}`);
  await a.stop();
  t.false(existsSync(join(rt.runtime.opts.host.runDir, 'kill-suspend')), 'nothing left of it');

  const b = await rt.boot({ id: 'kill-restore', vcpus: 1, maxVcpus: 1, memoryMiB: 256, maxMemoryMiB: 256 });
  const h = await b.exec({ argv: ['sh', '-c', 'sleep 2; echo survived'] });
  let text = '';
  h.onStdout((x) => { text += x.toString(); });
  const old = b.pid;
  await b.suspend();
  const restoring = b.resume();
  // The restoring QEMU, told by its pid and its name (never a stale pid).
  const isNew = (): boolean => !!b.pid && b.pid !== old && (() => {
    try { return readFileSync(`/proc/${b.pid}/cmdline`, 'utf8').includes('lodger-kill-restore,'); } catch { return false; }
  })();
  for (let i = 0; i < 400 && !isNew(); i++) await new Promise((r) => setTimeout(r, 5));
  await new Promise((r) => setTimeout(r, 50));
  if (isNew()) process.kill(b.pid!, 'SIGKILL');
  const r = await t.throwsAsync(restoring, { instanceOf: SandboxError });
  t.is(r!.code, 'SANDBOX_RESUME_FAILED');
  t.is(b.status().state, 'suspended', 'the saved state stays');
  await b.resume();
  t.deepEqual(await h.wait(), { code: 0, signal: null });
  t.is(text, 'survived\n');
  await b.stop();
});

// The owner (lodgerd, in production) killed mid-operation (bench/owner-kill.ts), this long
// after the operation starts: early enough that each one is under way.
const OWNER_KILL_MS = { resize: 40, suspend: 120, restore: 150 } as const;
for (const op of ['resize', 'suspend', 'restore'] as const) {
  test.serial(`the owner (as lodgerd) killed mid-${op}: a new owner takes the sandbox up, the job goes on to its end, every line once; nothing is left`, async (t) => {
    const id = `owner-${op}`;
    const a = await rt.boot({ id, vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 768 });
    const k = await killOwnerMid(rt.runtime, `lodger-test-${process.pid}`, a, op, OWNER_KILL_MS[op]);
    t.log(`after the owner was killed ${OWNER_KILL_MS[op]} ms into the ${op}: ${k.state}, ${k.vcpus} vCPUs, ${k.memoryMiB} MiB; taken up in ${k.takeoverMs.toFixed(0)} ms`);
    t.regex(k.said, /^go (running|suspended)$/m, k.said);
    t.notRegex(k.said, /^done$/m, 'killed while the operation was under way');
    t.true(k.state === 'running' || k.state === 'suspended', k.state);
    t.deepEqual(k.exit, { code: 0, signal: null });
    t.deepEqual(k.lines, Array.from({ length: JOB_LINES }, (_, i) => String(i + 1)), 'every line once, in order');
    // Still a working sandbox: the operation can be done now.
    if (op === 'resize') t.deepEqual(k.resized, { vcpus: 2, memoryMiB: 768 });
    t.false((await rt.runtime.list()).some((x) => x.id === id), 'no VMM, record or run files of it left');
    t.false(readdirSync('/proc').some((p) => /^\d+$/.test(p) && (() => {
      try { return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(`lodger-${id},`); } catch { return false; }
    })()), 'no QEMU of it left');
  });
}

asRoot('the state directory\'s disk full (ENOSPC, a 16 MiB tmpfs) during suspend: SANDBOX_SUSPEND_FAILED names it, the sandbox runs on, no partial state is left', async (t) => {
  const small = tmpfs('full-run', '16m');
  const s = await rt.boot({ id: 'enospc', vcpus: 1, maxVcpus: 1, memoryMiB: 256, maxMemoryMiB: 256 }, { host: { ...rt.runtime.opts.host, runDir: small } });
  const h = await s.exec({ argv: ['sh', '-c', 'sleep 1; echo after'] });
  let text = '';
  h.onStdout((x) => { text += x.toString(); });
  const e = await t.throwsAsync(s.suspend(), { instanceOf: SandboxError });
  t.is(e!.code, 'SANDBOX_SUSPEND_FAILED');
  t.regex(e!.message, /ENOSPC|no space/i);
  t.is(s.status().state, 'running');
  t.false(existsSync(join(small, 'enospc', 'suspended.state')), 'no partial saved state');
  t.deepEqual(await h.wait(), { code: 0, signal: null });
  t.is(text, 'after\n');
  await s.stop();
});
