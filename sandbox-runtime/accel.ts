// Which accelerator a sandbox uses, and why. Pure decision over a probe of the host so
// the rule is testable; the probe comes from native/kvm (or /sys/module without it).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { nativeAvailable, probeKvm, type KvmProbe } from '../native/index.ts';
import type { HostPaths } from './host.ts';

/** QEMU's accelerators (gVisor's platform is its own choice). */
export type QemuAccel = 'kvm' | 'tcg';
export type AccelRequest = 'auto' | QemuAccel;

export interface AccelChoice {
  accel: QemuAccel;
  reason: string;
}

/**
 * KVM only where a guest will really boot on it: kvm_intel/kvm_amd run our stock guest
 * kernel; kvm_pvm boots only PVM-enlightened kernels, so it needs one configured.
 */
export function decideAccel(requested: AccelRequest, probe: KvmProbe, pvmGuestKernel: boolean): AccelChoice {
  if (requested === 'tcg') return { accel: 'tcg', reason: 'TCG requested in the configuration' };
  if (!probe.available) {
    const why = `${probe.device} unusable (${probe.error ?? 'not available'})`;
    if (requested === 'kvm') return { accel: 'kvm', reason: `KVM requested although ${why}` };
    return { accel: 'tcg', reason: `${why}: falling back to TCG` };
  }
  if (probe.vendor === 'kvm_pvm' && !pvmGuestKernel) {
    const why = `${probe.device} is provided by kvm_pvm, which boots only PVM guest kernels, and no PVM guest kernel is configured`;
    if (requested === 'kvm') return { accel: 'kvm', reason: `KVM requested although ${why}` };
    return { accel: 'tcg', reason: `${why}: falling back to TCG` };
  }
  const what = probe.vendor === 'kvm_pvm' ? 'kvm_pvm with a PVM guest kernel' : (probe.vendor ?? 'KVM');
  return { accel: 'kvm', reason: `${requested === 'kvm' ? 'KVM requested' : 'auto'}: ${probe.device} usable (${what}, API ${probe.apiVersion})` };
}

/** Probe through the addon, or a weaker /sys/module-only probe when it is not built. */
export function probeHost(host: HostPaths): KvmProbe {
  const dev = join(host.dev, 'kvm');
  const mods = join(host.sys, 'module');
  if (nativeAvailable()) return probeKvm(dev, mods);
  const vendor = (['kvm_pvm', 'kvm_intel', 'kvm_amd'] as const).find((m) => existsSync(join(mods, m))) ?? null;
  return { device: dev, available: existsSync(dev) && vendor !== null, vendor, error: 'native addon not built; probed /sys/module only' };
}
