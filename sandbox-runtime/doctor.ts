// What this host offers a sandbox runtime, each item with what to do when it is missing.
// Reads only injected paths and runs only version queries, so it is safe anywhere.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { decideAccel, probeHost, type AccelRequest } from './accel.ts';
import { CgroupManager, detectCgroupVersion, V1_CONTROLLERS } from './cgroup/index.ts';
import type { HostPaths } from './host.ts';
import { imageHash, resolveInputs, type ImageOptions } from './image/index.ts';
import { DEFAULT_JAIL, jailReport, type JailOptions } from './qemu/index.ts';
import { nativeAvailable } from '../native/index.ts';
import { leaseReport } from './jail.ts';
import { gvisorJailReport } from './gvisor/index.ts';

const run = promisify(execFile);

export interface Check {
  name: string;
  ok: boolean;
  /** A missing optional item is reported but does not fail the doctor. */
  required: boolean;
  detail: string;
  fix?: string;
}

export async function runDoctor(host: HostPaths, o: { accel?: AccelRequest; image?: ImageOptions; pvmGuestKernel?: boolean; jail?: JailOptions | false } = {}): Promise<Check[]> {
  const checks: Check[] = [];

  const probe = probeHost(host);
  const choice = decideAccel(o.accel ?? 'auto', probe, o.pvmGuestKernel ?? false);
  checks.push({
    name: 'accelerator', ok: true, required: true,
    detail: `${choice.accel.toUpperCase()}: ${choice.reason}`,
    ...(choice.accel === 'tcg' ? { fix: probe.vendor === 'kvm_pvm'
      ? 'configure a PVM-enlightened guest kernel (LODGER_GUEST_KERNEL) to use KVM here'
      : 'load kvm_intel or kvm_amd and give this user access to /dev/kvm for KVM speed' } : {}),
  });
  checks.push({
    name: 'native addon', ok: nativeAvailable(), required: false,
    detail: nativeAvailable() ? 'native/kvm built' : 'native/kvm not built (KVM probe falls back to /sys/module)',
    fix: 'npm run setup',
  });

  const version = detectCgroupVersion(host.cgroupRoot);
  if (!version) {
    checks.push({ name: 'cgroups', ok: false, required: true, detail: `no cgroup filesystem at ${host.cgroupRoot}`, fix: 'mount cgroup2 at /sys/fs/cgroup' });
  } else {
    const controllers = version === 2
      ? readFileSync(join(host.cgroupRoot, 'cgroup.controllers'), 'utf8').trim().split(/\s+/)
      : V1_CONTROLLERS.filter((c) => existsSync(join(host.cgroupRoot, c)));
    const need = version === 2 ? ['cpu', 'cpuset', 'memory', 'pids'] : ['cpu', 'cpuset', 'memory'];
    const missing = need.filter((c) => !controllers.includes(c));
    const why = new CgroupManager({ host: { root: host.cgroupRoot, proc: host.proc } }).whyNotWritable();
    const writable = why === null;
    checks.push({
      name: 'cgroups', ok: missing.length === 0 && writable, required: true,
      detail: `v${version}${version === 1 ? ' (production hosts should run v2)' : ''}; controllers: ${controllers.join(' ')}${writable ? '' : '; not writable by this user'}`,
      ...(missing.length || !writable ? { fix: missing.length ? `enable controllers: ${missing.join(' ')}` : 'run as root or under systemd with Delegate=yes' } : {}),
    });
    if (version === 1) {
      const idle = existsSync(join(host.cgroupRoot, 'cpu', 'cpu.idle'));
      checks.push({ name: 'cpu.idle', ok: idle, required: false, detail: idle ? 'available' : 'missing (kernel < 5.15)', fix: 'use a kernel >= 5.15 for SCHED_IDLE groups' });
    }
  }

  try {
    const { stdout } = await run(host.qemuBinary, ['--version']);
    checks.push({ name: 'qemu', ok: true, required: true, detail: stdout.split('\n')[0]!.trim() });
  } catch {
    checks.push({ name: 'qemu', ok: false, required: true, detail: `${host.qemuBinary} not found`, fix: 'apt-get install qemu-system-x86' });
  }
  for (const [tool, pkg] of [['mkfs.ext4', 'e2fsprogs'], ['debugfs', 'e2fsprogs'], ['gcc', 'gcc libc6-dev']] as const) {
    const found = await run('sh', ['-c', `command -v ${tool}`]).then(() => true, () => false);
    checks.push({ name: tool, ok: found, required: true, detail: found ? 'found' : 'missing', fix: `apt-get install ${pkg}` });
  }

  try {
    const inputs = resolveInputs(host, o.image ?? {});
    const hash = imageHash(inputs);
    const built = existsSync(join(host.cacheDir, 'images', hash, 'manifest.json'));
    checks.push({
      name: 'guest image', ok: built, required: true,
      detail: `${built ? 'built' : 'not built'} (${hash}): kernel ${inputs.kernel}, ${inputs.modulesDir ? `modules ${inputs.modulesDir}` : 'no module tree'}`,
      fix: 'npm run setup',
    });
  } catch (e) {
    checks.push({ name: 'guest image', ok: false, required: true, detail: (e as Error).message, fix: 'apt-get install linux-image-cloud-amd64 busybox-static' });
  }

  const tools = await Promise.all(['unshare', 'setpriv', 'prlimit', 'chroot', 'mount'].map(async (t) => [t, await run('sh', ['-c', `command -v ${t}`]).then(() => true, () => false)] as const));
  const missingTools = tools.filter(([, ok]) => !ok).map(([t]) => t);
  const root = process.getuid?.() === 0;
  const jail = o.jail === false ? null : o.jail ?? DEFAULT_JAIL;
  const leases = jail ? leaseReport(jail) : null;
  checks.push({
    name: 'jail', ok: !!jail && root && missingTools.length === 0, required: false,
    detail: !jail ? 'disabled by configuration: VMMs run as lodgerd\'s user in its namespaces'
      : `uids ${jail.uidBase}-${jail.uidBase + jail.uidCount - 1}; ${root ? 'root' : 'not root: VMMs cannot be jailed'}; ${missingTools.length ? `missing ${missingTools.join(' ')}` : 'unshare, setpriv, prlimit, chroot, mount found'}; leases in ${leases!.dir}: ${leases!.error ? `unreadable (${leases!.error})` : `${leases!.live} held, ${leases!.stale} stale (taken over when needed)`}`,
    fix: missingTools.length ? 'apt-get install util-linux mount coreutils' : 'run lodgerd as root (it gives each VMM its own uid)',
  });
  // Every Lodger VMM running now, as /proc shows it.
  for (const v of jailReport(host.proc)) checks.push({ name: `vmm ${v.pid}`, ok: v.violation === null, required: false, detail: `${v.id}: ${v.summary}`, fix: v.violation ?? undefined });
  for (const v of gvisorJailReport(host.proc)) checks.push({ name: `${v.what} ${v.pid}`, ok: v.violation === null, required: false, detail: v.summary, fix: v.violation ?? undefined });

  const psi = ['cpu', 'memory', 'io'].filter((r) => existsSync(join(host.proc, 'pressure', r)));
  checks.push({
    name: 'PSI', ok: psi.length === 3, required: false,
    detail: psi.length ? `/proc/pressure: ${psi.join(' ')}` : 'absent',
    fix: 'boot the host with psi=1 (CONFIG_PSI) for pressure signals',
  });
  const resctrl = existsSync(join(host.sys, 'fs', 'resctrl', 'schemata'));
  checks.push({
    name: 'resctrl', ok: resctrl, required: false,
    detail: resctrl ? 'mounted' : 'absent: no cache or memory-bandwidth partitioning',
    fix: 'on Intel RDT / AMD PQoS hardware: mount -t resctrl resctrl /sys/fs/resctrl',
  });
  const vsock = existsSync(join(host.dev, 'vhost-vsock'));
  checks.push({ name: 'vhost-vsock', ok: true, required: false, detail: vsock ? 'present (unused: the agent uses virtio-serial)' : 'absent (fine: the agent uses virtio-serial)' });
  return checks;
}
