import test from 'ava';
import { execFileSync } from 'node:child_process';
import { commandScript, gvisorPaths, ociConfig, parseExit, shQuote } from './bundle.ts';
import { parseState } from './runsc.ts';
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
  const c = ociConfig({ rootfs: '/r', paths, hostname: 'sb1' }) as { root: { readonly: boolean }; mounts: { destination: string; options?: string[]; source: string }[]; linux: { namespaces: { type: string }[] } };
  t.true(c.root.readonly);
  const m = (d: string) => c.mounts.find((x) => x.destination === d)!;
  t.deepEqual(m('/output').options, ['rbind', 'rw']);
  t.is(m('/output').source, '/run/l/sb1/output');
  t.deepEqual(m('/.lodger/cmd').options, ['rbind', 'ro']);
  t.true(c.linux.namespaces.some((n) => n.type === 'network'));
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
