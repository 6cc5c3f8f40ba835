import test from 'ava';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { idmapMount, nativeAvailable, pinThread, probeKvm, threadAffinity } from './index.ts';

const t2 = nativeAvailable() ? test : test.skip;

t2('probe names the vendor module /sys/module shows, and the API version when usable', (t) => {
  const p = probeKvm('/dev/kvm', '/sys/module');
  const expected = (['kvm_pvm', 'kvm_intel', 'kvm_amd'] as const).find((m) => existsSync(`/sys/module/${m}`)) ?? null;
  t.is(p.vendor, expected);
  if (p.available) {
    t.is(p.apiVersion, 12);
    t.true((p.maxVcpus ?? 0) >= (p.recommendedVcpus ?? 0));
  } else {
    t.truthy(p.error);
  }
  const missing = probeKvm('/nonexistent/kvm', '/nonexistent');
  t.false(missing.available);
  t.is(missing.vendor, null);
  t.regex(missing.error!, /nonexistent/);
});

t2('pinThread sets and threadAffinity reads a thread\'s CPU mask', (t) => {
  const before = threadAffinity(0);
  try {
    pinThread(0, [before[0]!]);
    t.deepEqual(threadAffinity(0), [before[0]]);
  } finally {
    pinThread(0, before);
  }
  t.throws(() => pinThread(0, [-1]), { message: /out of range/ });
  t.throws(() => pinThread(2 ** 30, [0]), { message: /sched_setaffinity/ });
});

const asRoot = nativeAvailable() && process.getuid?.() === 0 ? test : test.skip;

asRoot('idmapMount shows root\'s files as the given uid, read-only, and names the step that failed', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lodger-idmap-'));
  chmodSync(dir, 0o711);
  const src = join(dir, 'src');
  const dst = join(dir, 'dst');
  mkdirSync(src);
  mkdirSync(dst);
  writeFileSync(join(src, 'secret'), 'x');
  chmodSync(join(src, 'secret'), 0o600);
  try {
    idmapMount(src, dst, 3_999_001, 3_999_002);
    const st = statSync(join(dst, 'secret'));
    t.is(st.uid, 3_999_001);
    t.is(st.gid, 3_999_002);
    // As that uid the file is its own to read; nothing can be written through the mount.
    const read = spawnSync('setpriv', ['--reuid=3999001', '--regid=3999002', '--clear-groups', 'cat', join(dst, 'secret')], { encoding: 'utf8' });
    t.is(read.stdout, 'x');
    t.throws(() => writeFileSync(join(dst, 'new'), 'y'), { code: 'EROFS' });
    t.throws(() => idmapMount(join(dir, 'missing'), dst, 3_999_001, 3_999_001), { message: /open_tree: No such file/ });
  } finally {
    spawnSync('umount', [dst]);
    rmSync(dir, { recursive: true, force: true });
  }
});
