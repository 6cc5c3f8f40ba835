// Starting one VMM of a sandbox: its command line, its jail where the runtime jails VMMs,
// and the check that the jail holds before the guest runs its first instruction.
import { join } from 'node:path';
import { hasRootfs, type Accelerator, type SandboxSpec } from '../contract.ts';
import { SandboxError } from '../errors.ts';
import { sandboxVmmArgs } from './args.ts';
import { jailViolation, readJailStatus, sandboxJail, type JailIdentity } from './jail.ts';
import type { QemuPaths } from './record.ts';
import type { QemuRuntimeOptions } from './runtime.ts';
import { VmmProcess, type ProcessExit, type VmmIdentity } from './vmm.ts';

export interface Launch {
  spec: SandboxSpec;
  paths: QemuPaths;
  opts: QemuRuntimeOptions;
  accel: Accelerator;
  cpu: { mode: 'acpi' | 'offline'; coldPlugAll: boolean };
  /** A VM restored from disk starts with the vCPUs and memory it had when saved. */
  restoring: { vcpus: number; memoryMiB: number } | null;
  jail: JailIdentity | null;
  cgroupProcs: string[];
  identity: VmmIdentity;
  extra: string[];
}

export function launchVmm(l: Launch, onExit: (vmm: VmmProcess, e: ProcessExit) => void): VmmProcess {
  const { spec, paths, opts } = l;
  const args = sandboxVmmArgs(spec, paths, opts.image, { ...opts, accel: l.accel }, l.cpu, l.restoring);
  const disk = spec.outputDir || spec.outputDisk ? spec.outputDiskMiB ?? 256 : null;
  const jail = l.jail && sandboxJail({ ...paths, rootfsImage: spec.rootfsImage ?? paths.rootfsImage }, {
    kernel: opts.image.kernel, initramfs: opts.image.initramfs, outputDiskMiB: disk, rootfs: hasRootfs(spec),
    kvmDevice: l.accel === 'kvm' ? join(opts.host.dev, 'kvm') : null, usr: opts.jail?.usr,
  }, l.jail);
  const vmm: VmmProcess = VmmProcess.spawn({
    ...l.identity, qemuBinary: opts.host.qemuBinary, args: [...args, ...l.extra], sys: opts.host.sys,
    cgroupProcs: l.cgroupProcs, detached: opts.detachVmm ?? false, jail,
  }, (e) => onExit(vmm, e));
  return vmm;
}

/** A jailed VMM that QMP answers has finished its set-up: its uid, seccomp, no_new_privs, capabilities and root are checked. */
export function checkJail(id: string, proc: string, pid: number | null, jail: JailIdentity | null, seccomp: boolean): void {
  if (!jail || !pid) return;
  const bad = jailViolation(readJailStatus(proc, pid), jail, seccomp);
  if (bad) throw new SandboxError('SANDBOX_JAIL_FAILED', `sandbox ${id}: its VMM (pid ${pid}) is not jailed: ${bad}`);
}
