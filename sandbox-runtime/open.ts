// Assembles a runtime for this host: QEMU (guest image, accelerator decision with the
// reason, cgroup manager) or gVisor (runsc, the default busybox root); and the backend
// choice `auto` makes, with its reason.
import { decideAccel, probeHost, type AccelChoice, type AccelRequest } from './accel.ts';
import { CgroupManager, detectCgroupVersion } from './cgroup/index.ts';
import { defaultHostPaths, type HostPaths } from './host.ts';
import { ensureGuestImage, type ImageOptions } from './image/index.ts';
import { DEFAULT_JAIL, QemuRuntime, type HostedRuntime, type JailOptions } from './qemu/index.ts';
import { ensureBusyboxRoot, GvisorRuntime, probeRunsc, type GvisorPlatform } from './gvisor/index.ts';
import type { Backend } from './contract.ts';

export interface OpenRuntimeOptions {
  host?: Partial<HostPaths>;
  accel?: AccelRequest;
  image?: ImageOptions;
  /** The configured guest kernel is PVM-enlightened (lets `auto` pick a kvm_pvm /dev/kvm). */
  pvmGuestKernel?: boolean;
  /** Parent cgroup below this process's own; default "lodger". */
  cgroupParent?: string;
  bootTimeoutMs?: number;
  /** VMMs outlive this process (the daemon takes them up again after a restart). */
  detachVmm?: boolean;
  /** Each VMM in a jail of its own (a uid from this range); default DEFAULT_JAIL where this process is root; false: none. */
  jail?: JailOptions | false;
  log?: (msg: string) => void;
}

const logTo = (log?: (msg: string) => void): ((msg: string) => void) => log ?? ((m: string) => console.error(`lodger: ${m}`));

/** The sandboxes' cgroup manager, or null (said why) where there is no writable cgroup tree: sandboxes then run unconfined. */
function openCgroups(host: HostPaths, parent: string | undefined, say: (msg: string) => void): CgroupManager | null {
  const cgroups = detectCgroupVersion(host.cgroupRoot) ? new CgroupManager({ host: { root: host.cgroupRoot, proc: host.proc }, parent }) : null;
  const why = cgroups ? cgroups.whyNotWritable() : `no cgroup filesystem at ${host.cgroupRoot}`;
  if (!why) return cgroups;
  say(`sandboxes get no cgroup of their own: ${why}`);
  return null;
}

export async function openRuntime(o: OpenRuntimeOptions = {}): Promise<{ runtime: HostedRuntime; accel: AccelChoice; host: HostPaths; cgroups: CgroupManager | null }> {
  const host = defaultHostPaths(o.host);
  const image = await ensureGuestImage(host, o.image ?? {}, o.log);
  const accel = decideAccel(o.accel ?? 'auto', probeHost(host), o.pvmGuestKernel ?? false);
  const say = logTo(o.log);
  const cgroups = openCgroups(host, o.cgroupParent, say);
  // Only root can give a VMM another uid, namespaces and a chroot.
  const root = process.getuid?.() === 0;
  const jail = o.jail === false || !root ? null : o.jail ?? DEFAULT_JAIL;
  if (!jail) say(`VMMs are not jailed: ${root ? 'jail disabled by configuration' : 'not running as root'}`);
  const runtime = new QemuRuntime({ host, image, accel, cgroups, bootTimeoutMs: o.bootTimeoutMs, detachVmm: o.detachVmm, log: o.log, jail });
  return { runtime, accel, host, cgroups };
}

export type RuntimeRequest = 'auto' | Backend;

export interface BackendChoice {
  backend: Backend;
  reason: string;
}

/**
 * auto: QEMU where KVM boots a stock guest; else gVisor where runsc runs a sandbox
 * (near-native compute on hosts without nested virtualization); else QEMU under TCG.
 * Pure over the two probes, so the rule is unit-tested.
 */
export function decideBackend(requested: RuntimeRequest, accel: AccelChoice, runscProbe: { ok: boolean; detail: string } | null): BackendChoice {
  if (requested === 'qemu') return { backend: 'qemu', reason: `QEMU requested (${accel.accel}: ${accel.reason})` };
  if (requested === 'gvisor') return { backend: 'gvisor', reason: `gVisor requested${runscProbe && !runscProbe.ok ? ` although ${runscProbe.detail}` : ''}` };
  if (accel.accel === 'kvm') return { backend: 'qemu', reason: `auto: QEMU with KVM (${accel.reason})` };
  if (runscProbe?.ok) return { backend: 'gvisor', reason: `auto: no KVM for a stock guest (${accel.reason}); ${runscProbe.detail}` };
  return { backend: 'qemu', reason: `auto: QEMU under TCG (${accel.reason}; gVisor unusable: ${runscProbe?.detail ?? 'not probed'})` };
}

export interface OpenGvisorOptions {
  host?: Partial<HostPaths>;
  runscBinary?: string;
  platform?: GvisorPlatform;
  busybox?: string;
  cgroupParent?: string;
  log?: (msg: string) => void;
  /** Each sandbox's runsc processes as a uid of this range (gvisor/jail.ts); default DEFAULT_JAIL where this process is root; false: none. */
  jail?: JailOptions | false;
}

/** A gVisor runtime for this host: the default busybox root and the cgroup manager. */
export async function openGvisorRuntime(o: OpenGvisorOptions = {}): Promise<{ runtime: GvisorRuntime; host: HostPaths; cgroups: CgroupManager | null }> {
  const host = defaultHostPaths(o.host);
  const busybox = o.busybox ?? '/bin/busybox';
  const defaultRoot = await ensureBusyboxRoot(host.cacheDir, busybox);
  const cgroups = openCgroups(host, o.cgroupParent, logTo(o.log));
  const root = process.getuid?.() === 0;
  const jail = o.jail === false || !root ? null : o.jail ?? DEFAULT_JAIL;
  if (!jail) logTo(o.log)(`gVisor sandboxes are not jailed: ${root ? 'jail disabled by configuration' : 'not running as root'}`);
  const runtime = new GvisorRuntime({
    host, runscBinary: o.runscBinary ?? process.env.LODGER_RUNSC ?? 'runsc', platform: o.platform ?? 'systrap', busybox, defaultRoot, cgroups, log: o.log, jail,
  });
  return { runtime, host, cgroups };
}

/** Which backend `requested` means on this host, with the reason (doctor, lodgerd, the colocation bench). */
export async function chooseBackend(requested: RuntimeRequest, o: { host?: Partial<HostPaths>; accel?: AccelRequest; pvmGuestKernel?: boolean; runscBinary?: string } = {}): Promise<BackendChoice> {
  const host = defaultHostPaths(o.host);
  const accel = decideAccel(o.accel ?? 'auto', probeHost(host), o.pvmGuestKernel ?? false);
  const probe = requested === 'qemu' || (requested === 'auto' && accel.accel === 'kvm') ? null
    : await probeRunsc(o.runscBinary ?? process.env.LODGER_RUNSC ?? 'runsc', host.cacheDir);
  return decideBackend(requested, accel, probe);
}
