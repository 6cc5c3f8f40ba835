import test from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { commandScript, gvisorPaths, ociConfig, parseExit, shQuote, spoolerScript } from './bundle.ts';
import { readPid } from './exec.ts';
import { parsePidFile, parseState } from './runsc.ts';
import { decideBackend } from '../open.ts';

test('a command script passes argv and environment verbatim (a real sh runs it)', (t) => {
  const script = commandScript({ argv: ['printf', '%s|', "it's", '$HOME', '`x`', ''], env: { A_1: "v'$" }, cwd: '/' });
  const out = execFileSync('/bin/sh', ['-c', `${script.replace(/^exec /m, '')}printf '%s' "$A_1"`], { encoding: 'utf8' });
  t.is(out, "it's|$HOME|`x`||v'$");
  t.throws(() => commandScript({ argv: ['x'], env: { 'A;rm': '1' } }), { message: /not valid/ });
  t.is(shQuote("a'b"), `'a'\\''b'`);
});

test('exit files: whole numbers only, 129-192 read as a signal', (t) => {
  t.deepEqual(parseExit('0\n'), { code: 0, signal: null });
  t.deepEqual(parseExit('3'), { code: 3, signal: null });
  t.deepEqual(parseExit('137\n'), { code: null, signal: 9 });
  t.is(parseExit(''), null);
  t.is(parseExit('12'.repeat(5)), null);
  t.is(parseExit('1\n2\n'), null);
  t.is(parseExit('999'), null);
});

test('the bundle: read-only root, writable /output, Lodger\'s command dir read-only, a network namespace of its own', (t) => {
  const paths = gvisorPaths('/run/l', 'sb1');
  const c = ociConfig({ rootfs: '/r', paths, hostname: 'sb1' }) as { root: { readonly: boolean }; mounts: { destination: string; options?: string[]; source: string; type: string }[]; linux: { namespaces: { type: string }[] } };
  t.true(c.root.readonly);
  const m = (d: string) => c.mounts.find((x) => x.destination === d)!;
  t.deepEqual(m('/output').options, ['rbind', 'rw']);
  t.is(m('/output').source, '/run/l/sb1/output');
  t.deepEqual(m('/.lodger/cmd').options, ['rbind', 'ro']);
  t.true(c.linux.namespaces.some((n) => n.type === 'network'));
  // The sandbox's own sysfs and cgroupfs (gVisor's, no host bind): where the job reads its memory limit.
  t.like(m('/sys/fs/cgroup'), { type: 'cgroup', source: 'cgroup' });
  t.like(m('/sys'), { type: 'sysfs', source: 'sysfs' });
});

test('runsc state is validated', (t) => {
  t.deepEqual(parseState('{"pid": 12, "status": "running", "id": "x"}'), { pid: 12, status: 'running' });
  t.throws(() => parseState('{"pid": "12"}'), { message: /no pid/ });
  t.throws(() => parseState('garbage'), { message: /not JSON/ });
});

test('auto: QEMU with KVM, else gVisor where runsc works, else QEMU under TCG; an explicit choice is kept', (t) => {
  const kvm = { accel: 'kvm' as const, reason: 'kvm_intel' };
  const tcg = { accel: 'tcg' as const, reason: 'kvm_pvm without a PVM kernel' };
  const ok = { ok: true, detail: 'runsc 0.0~20240729.0 runs' };
  const no = { ok: false, detail: 'runsc not installed' };
  t.is(decideBackend('auto', kvm, ok).backend, 'qemu');
  t.is(decideBackend('auto', tcg, ok).backend, 'gvisor');
  t.regex(decideBackend('auto', tcg, ok).reason, /kvm_pvm/);
  t.is(decideBackend('auto', tcg, no).backend, 'qemu');
  t.regex(decideBackend('auto', tcg, no).reason, /TCG.*runsc not installed/);
  t.is(decideBackend('gvisor', kvm, null).backend, 'gvisor');
  t.is(decideBackend('qemu', tcg, ok).backend, 'qemu');
});

const busybox = ['/bin/busybox', '/usr/bin/busybox'].find((p) => existsSync(p));
const until = async (what: string, ok: () => boolean, ms = 5000): Promise<void> => {
  const t0 = Date.now();
  while (!ok()) {
    if (Date.now() - t0 > ms) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

// The spooler as PID 1 runs it, here on the host's busybox with its directories in a temp dir.
(busybox ? test : test.skip)('the spooler runs each script once it is renamed into place, in order, with output, pid and exit files; a killed command reads as its signal; it reaps', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lodger-spool-'));
  const cmd = join(dir, 'cmd');
  const io = join(dir, 'io');
  mkdirSync(cmd);
  mkdirSync(io);
  const spooler = spawn(busybox!, ['sh', '-c', spoolerScript({ cmd, io, sh: busybox! })], { stdio: 'ignore' });
  const put = (n: number, script: string): void => {
    writeFileSync(join(cmd, `.${n}.sh.tmp`), script);
    renameSync(join(cmd, `.${n}.sh.tmp`), join(cmd, `${n}.sh`));
  };
  const ioText = (f: string): string => readFileSync(join(io, f), 'latin1');
  try {
    put(1, 'echo out; echo err >&2; exit 3\n');
    await until('command 1 ends', () => existsSync(join(io, '1.exit')));
    t.is(ioText('1.exit'), '3\n');
    t.is(ioText('1.out'), 'out\n');
    t.is(ioText('1.err'), 'err\n');
    t.true(((await readPid(io, 1)) ?? 0) > 1);

    // Half a script under the temp name is not run; once renamed it is.
    writeFileSync(join(cmd, '.2.sh.tmp'), 'sleep 30\n');
    await new Promise((r) => setTimeout(r, 200));
    t.false(existsSync(join(io, '2.pid')), 'a temp name is not a command');
    renameSync(join(cmd, '.2.sh.tmp'), join(cmd, '2.sh'));
    const t0 = performance.now();
    await until('command 2 starts', () => existsSync(join(io, '2.pid')));
    t.log(`command 2 started ${(performance.now() - t0).toFixed(0)} ms after its rename`);
    put(3, 'echo three\n');
    await until('command 3 ends while 2 runs', () => existsSync(join(io, '3.exit')));
    t.is(ioText('3.out'), 'three\n');
    process.kill((await readPid(io, 2))!, 'SIGKILL');
    await until('command 2 ends', () => existsSync(join(io, '2.exit')));
    t.deepEqual(parseExit(ioText('2.exit')), { code: null, signal: 9 });
    t.deepEqual(readdirSync(io).filter((f) => f.endsWith('.tmp')), []);
    // Finished runners are reaped: the spooler keeps no zombie children.
    const children = (): string => readFileSync(`/proc/${spooler.pid}/task/${spooler.pid}/children`, 'latin1').trim();
    await until('runners reaped', () => children() === '');
    t.is(spooler.exitCode, null, 'the spooler runs on');
  } finally {
    spooler.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

test('runsc --pid-file: the sandbox process\'s pid, digits only', (t) => {
  t.is(parsePidFile('4242'), 4242);
  t.is(parsePidFile('4242\n'), 4242);
  for (const bad of ['', '1', 'x', '42 43', '-5', '12345678']) t.throws(() => parsePidFile(bad), { message: /not a pid/ }, JSON.stringify(bad));
});

test('pid files: digits and a newline only, 2 and up; missing or empty is none yet; a link is refused', async (t) => {
  const io = mkdtempSync(join(tmpdir(), 'lodger-pid-'));
  try {
    t.is(await readPid(io, 1), null);
    writeFileSync(join(io, '1.pid'), '');
    t.is(await readPid(io, 1), null);
    writeFileSync(join(io, '1.pid'), '42\n');
    t.is(await readPid(io, 1), 42);
    for (const bad of ['1\n', '42', ' 42\n', '42\n43\n', '12345678\n', 'x\n']) {
      writeFileSync(join(io, '1.pid'), bad);
      await t.throwsAsync(readPid(io, 1), { message: /unreadable pid/ }, JSON.stringify(bad));
    }
    symlinkSync('/etc/hostname', join(io, '2.pid'));
    await t.throwsAsync(readPid(io, 2));
  } finally {
    rmSync(io, { recursive: true, force: true });
  }
});
