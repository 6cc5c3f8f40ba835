// The systemd unit: checked by systemd-analyze where systemd is installed.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const unit = join(import.meta.dirname, '..', 'config', 'lodgerd.service');
const analyze = spawnSync('sh', ['-c', 'command -v systemd-analyze']).status === 0;

test('the unit has readiness notification, restart on failure, a delegated cgroup and KVM access', (t) => {
  const text = readFileSync(unit, 'utf8');
  for (const line of ['Type=notify', 'Restart=on-failure', 'Delegate=yes', 'DeviceAllow=/dev/kvm rw', 'ExecReload=/bin/kill -HUP $MAINPID', 'KillMode=process']) {
    t.true(text.split('\n').includes(line), line);
  }
});

(analyze ? test : test.skip)('systemd-analyze verify accepts it', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lodger-unit-'));
  copyFileSync(unit, join(dir, 'lodgerd.service'));
  const r = spawnSync('systemd-analyze', ['verify', join(dir, 'lodgerd.service')], { encoding: 'utf8' });
  const complaints = `${r.stdout}${r.stderr}`.split('\n').filter((l) => l.includes('lodgerd.service'));
  t.is(r.status, 0, r.stderr);
  t.deepEqual(complaints, []);
});
