import test from 'ava';
import { existsSync } from 'node:fs';
import { nativeAvailable, pinThread, probeKvm, threadAffinity } from './index.ts';

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
