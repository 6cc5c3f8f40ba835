// One call that assembles a QEMU runtime for this host: guest image, accelerator
// decision (with the reason), cgroup manager.
import { decideAccel, probeHost, type AccelChoice, type AccelRequest } from './accel.ts';
import { CgroupManager, detectCgroupVersion } from './cgroup/index.ts';
import { defaultHostPaths, type HostPaths } from './host.ts';
import { ensureGuestImage, type ImageOptions } from './image/index.ts';
import { DEFAULT_JAIL, QemuRuntime, type HostedRuntime, type JailOptions } from './qemu/index.ts';

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

export async function openRuntime(o: OpenRuntimeOptions = {}): Promise<{ runtime: HostedRuntime; accel: AccelChoice; host: HostPaths; cgroups: CgroupManager | null }> {
  const host = defaultHostPaths(o.host);
  const image = await ensureGuestImage(host, o.image ?? {}, o.log);
  const accel = decideAccel(o.accel ?? 'auto', probeHost(host), o.pvmGuestKernel ?? false);
  let cgroups = detectCgroupVersion(host.cgroupRoot)
    ? new CgroupManager({ host: { root: host.cgroupRoot, proc: host.proc }, parent: o.cgroupParent })
    : null;
  // Without a writable cgroup tree sandboxes still run, unconfined: say so.
  const why = cgroups ? cgroups.whyNotWritable() : `no cgroup filesystem at ${host.cgroupRoot}`;
  if (why) {
    (o.log ?? ((m: string) => console.error(`lodger: ${m}`)))(`sandboxes get no cgroup of their own: ${why}`);
    cgroups = null;
  }
  // Only root can give a VMM another uid, namespaces and a chroot.
  const root = process.getuid?.() === 0;
  const jail = o.jail === false || !root ? null : o.jail ?? DEFAULT_JAIL;
  if (!jail) (o.log ?? ((m: string) => console.error(`lodger: ${m}`)))(`VMMs are not jailed: ${root ? 'jail disabled by configuration' : 'not running as root'}`);
  const runtime = new QemuRuntime({ host, image, accel, cgroups, bootTimeoutMs: o.bootTimeoutMs, detachVmm: o.detachVmm, log: o.log, jail });
  return { runtime, accel, host, cgroups };
}
