import test from 'ava';
import { qemuArgs, vmmMemory } from './args.ts';
import { sandboxPaths } from './record.ts';
import { isOstEjectFailure } from './vcpus.ts';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const image = { kernel: '/k', kernelSource: '/k', pvh: false, initramfs: '/i', hash: 'h', kernelVersion: null, modules: [], bytes: 0 };
const base = { id: 'a', vcpus: 3, maxVcpus: 4, memoryMiB: 256, maxMemoryMiB: 1280 };
const opts = { accel: 'tcg' as const, seccomp: true, tbSizeMiB: 32, firmware: null };
const value = (args: string[], flag: string): string[] => args.flatMap((a, i) => (args[i - 1] === flag ? [a] : []));

test('vCPUs: boot one, cold-plug the rest with ids so they can be unplugged', (t) => {
  const args = qemuArgs(base, sandboxPaths('/run', 'a'), image, opts);
  t.deepEqual(value(args, '-smp'), ['1,sockets=4,cores=1,threads=1,maxcpus=4']);
  t.deepEqual(value(args, '-device').filter((d) => d.includes('x86_64-cpu')), [
    'qemu64-x86_64-cpu,id=vcpu-s1,socket-id=1,core-id=0,thread-id=0',
    'qemu64-x86_64-cpu,id=vcpu-s2,socket-id=2,core-id=0,thread-id=0',
  ]);
});

test('coldPlugAll (TCG): every vCPU exists at boot, the guest starts with only `vcpus` online', (t) => {
  const args = qemuArgs({ ...base, vcpus: 2 }, sandboxPaths('/run', 'a'), image, { ...opts, coldPlugAll: true });
  t.is(value(args, '-device').filter((d) => d.includes('x86_64-cpu')).length, 3);
  t.regex(value(args, '-append')[0]!, / maxcpus=2 lodger\.vcpus=2/);
});

test('memory: virtio-mem covers max - boot; guests boot with online_movable; seccomp on; no NIC', (t) => {
  const args = qemuArgs(base, sandboxPaths('/run', 'a'), image, opts);
  t.deepEqual(value(args, '-m'), ['256M,slots=1,maxmem=1280M']);
  t.true(value(args, '-object').includes('memory-backend-ram,id=vmem-ram,size=1024M'));
  t.regex(value(args, '-append')[0]!, /memhp_default_state=online_movable/);
  t.regex(value(args, '-sandbox')[0]!, /^on,/);
  t.false(args.some((a) => /virtio-net|-netdev|-nic/.test(a)));
  t.deepEqual(value(args, '-accel'), ['tcg,thread=multi,tb-size=32']);
  const fixed = qemuArgs({ ...base, maxMemoryMiB: 256 }, sandboxPaths('/run', 'a'), image, { ...opts, accel: 'kvm' });
  t.deepEqual(value(fixed, '-m'), ['256M']);
  t.deepEqual(value(fixed, '-cpu'), ['host']);
});

test('job disks appear only when asked for, the root read-only', (t) => {
  const args = qemuArgs({ ...base, rootfsDir: '/r', outputDir: '/o' }, sandboxPaths('/run', 'a'), image, opts);
  const drives = value(args, '-drive');
  t.is(drives.length, 2);
  t.regex(drives[1]!, /readonly=on/);
  t.is(value(qemuArgs(base, sandboxPaths('/run', 'a'), image, opts), '-drive').length, 0);
});

test('an ACPI eject _OST status 0x80-0x83 for the device is a refusal; 0x84 (in progress) is not', (t) => {
  t.true(isOstEjectFailure({ info: { device: 'v', source: 3, status: 0x82 } }, 'v'));
  t.false(isOstEjectFailure({ info: { device: 'v', source: 3, status: 0x84 } }, 'v'));
  t.false(isOstEjectFailure({ info: { device: 'w', source: 3, status: 0x82 } }, 'v'));
});

test('VMM memory splits guest RAM mappings from the rest', async (t) => {
  const proc = mkdtempSync(join(tmpdir(), 'lodger-proc-'));
  mkdirSync(join(proc, '7'));
  writeFileSync(join(proc, '7', 'smaps'), [
    '7f0000000000-7f0010000000 rw-p 00000000 00:00 0', 'Size:             262144 kB', 'Rss:               40000 kB', 'Pss:               40000 kB',
    '5600000000-5600100000 r-xp 00000000 08:01 1 /usr/bin/qemu', 'Size:               1024 kB', 'Rss:                 900 kB', 'Pss:                 300 kB',
    '7f1000000000-7f1040000000 rw-p 00000000 00:00 0', 'Size:            1048576 kB', 'Rss:                   0 kB', 'Pss:                   0 kB',
  ].join('\n'));
  t.deepEqual(await vmmMemory(proc, 7, [256, 1024]), { rssBytes: 40900 * 1024, guestRamRssBytes: 40000 * 1024, pssBytes: 40300 * 1024, guestRamPssBytes: 40000 * 1024 });
  t.is(await vmmMemory(proc, 8, [256]), null);
});
