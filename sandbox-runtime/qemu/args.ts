// The QEMU command line of a sandbox and the reading of its VMM's memory: pure or
// read-only, so both are unit-tested.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { hasRootfs, type SandboxSpec, type Accelerator } from '../contract.ts';
import type { GuestImage } from '../image/index.ts';
import type { QemuPaths } from './record.ts';

export const AGENT_PORT = 'org.lodger.agent';
export const VMEM_ID = 'vmem0';
const QBOOT = '/usr/share/qemu/qboot.rom';

/** QEMU's -name of sandbox `id`: how its process is recognised. */
export function vmmName(id: string): string {
  return `lodger-${id},debug-threads=on`;
}

// Firmware and kernel options that shorten boot (measured in docs/BENCHMARKS.md).
const FAST_BOOT_CMDLINE = [
  'console=ttyS0', 'quiet', 'panic=-1', 'memhp_default_state=online_movable', 'tsc=reliable', 'no_timer_check',
  'noreplace-smp', 'cryptomgr.notests', 'i8042.noaux', 'i8042.nomux', 'i8042.nopnp', 'i8042.dumbkbd',
  'rcupdate.rcu_expedited=1', 'random.trust_cpu=on', 'pci=lastbus=0', 'nokaslr', '8250.nr_uarts=1',
  // The slowest initcalls of the Debian cloud kernel under TCG that a sandbox never uses
  // (kprobe tracing, a KDF self-test, TCP cubic, IPv6, key certificates): ~250 ms.
  'initcall_blacklist=init_kprobe_trace,crypto_kdf108_init,cubictcp_register,inet6_init,init_encrypted,load_system_certificate_list',
];

export interface QemuArgsOptions {
  accel: Accelerator;
  seccomp: boolean;
  /** TCG translation cache; it dominates the VMM's own memory under TCG (16 MiB measured best here: docs/BENCHMARKS.md). */
  tbSizeMiB: number;
  /** TCG: one host thread per vCPU ("multi") or one for all ("single"). */
  tcgThread?: 'multi' | 'single';
  firmware: string | null;
  extraCmdline?: string;
  /**
   * Create every vCPU up to the maximum at boot, those beyond `vcpus` left offline in
   * the guest. Under TCG QEMU cannot safely create vCPU threads later (see vcpuUnplugMode).
   */
  coldPlugAll?: boolean;
  /** virtio-mem memory to start with (a VM restored from disk must match what it had). */
  vmemRequestedMiB?: number;
}

export function cpuModel(accel: Accelerator): string {
  return accel === 'kvm' ? 'host' : 'qemu64';
}

/** The QEMU command line for a sandbox. Pure, so it is unit-tested. */
export function qemuArgs(spec: SandboxSpec, paths: QemuPaths, image: GuestImage, o: QemuArgsOptions): string[] {
  const model = cpuModel(o.accel);
  const args = [
    '-name', vmmName(spec.id),
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-machine', 'q35,smbus=off,sata=off,vmport=off',
    '-accel', o.accel === 'kvm' ? 'kvm' : `tcg,thread=${o.tcgThread ?? 'multi'},tb-size=${o.tbSizeMiB}`,
    '-cpu', model,
    // One socket per vCPU, so each can be plugged alone; boot with one and cold-plug
    // the rest as devices with ids, which makes every one but the first unpluggable.
    '-smp', `1,sockets=${spec.maxVcpus},cores=1,threads=1,maxcpus=${spec.maxVcpus}`,
  ];
  const created = o.coldPlugAll ? spec.maxVcpus : spec.vcpus;
  for (let s = 1; s < created; s++) args.push('-device', `${model}-x86_64-cpu,id=vcpu-s${s},socket-id=${s},core-id=0,thread-id=0`);
  if (o.firmware) args.push('-bios', o.firmware);
  const hot = spec.maxMemoryMiB - spec.memoryMiB;
  args.push('-m', hot > 0 ? `${spec.memoryMiB}M,slots=1,maxmem=${spec.maxMemoryMiB}M` : `${spec.memoryMiB}M`);
  if (hot > 0) {
    args.push('-object', `memory-backend-ram,id=vmem-ram,size=${hot}M`,
      '-device', `virtio-mem-pci,id=${VMEM_ID},memdev=vmem-ram,requested-size=${o.vmemRequestedMiB ?? 0}M,block-size=2M`);
  }
  args.push(
    '-kernel', image.kernel, '-initrd', image.initramfs,
    '-append', [...FAST_BOOT_CMDLINE, ...(o.coldPlugAll ? [`maxcpus=${spec.vcpus}`, `lodger.vcpus=${spec.vcpus}`] : []), o.extraCmdline ?? ''].join(' ').trim(),
    '-chardev', `file,id=con,path=${paths.console}`, '-serial', 'chardev:con',
    '-device', 'virtio-serial-pci,id=vser0',
    '-chardev', `socket,id=agent,path=${paths.agentSocket},server=on,wait=off`,
    '-device', `virtserialport,bus=vser0.0,chardev=agent,name=${AGENT_PORT}`,
    '-chardev', `socket,id=qmp,path=${paths.qmpSocket},server=on,wait=off`,
    '-mon', 'chardev=qmp,mode=control',
  );
  if (spec.outputDir || spec.outputDisk) {
    args.push('-drive', `if=none,id=output,file=${paths.outputImage},format=raw`,
      '-device', 'virtio-blk-pci,drive=output,serial=lodger-output');
  }
  if (hasRootfs(spec)) {
    args.push('-drive', `if=none,id=rootfs,file=${spec.rootfsImage ?? paths.rootfsImage},format=raw,readonly=on`,
      '-device', 'virtio-blk-pci,drive=rootfs,serial=lodger-rootfs');
  }
  if (o.seccomp) args.push('-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
  return args;
}

export interface VmmTuning {
  accel: Accelerator;
  seccomp?: boolean;
  tbSizeMiB?: number;
  tcgThread?: 'multi' | 'single';
  extraCmdline?: string;
}

/**
 * The command line of a sandbox's VMM. `restoring`: the VM comes back from disk and must
 * start with the vCPUs and memory it had when saved.
 */
export function sandboxVmmArgs(spec: SandboxSpec, paths: QemuPaths, image: GuestImage, t: VmmTuning,
  cpu: { mode: 'acpi' | 'offline'; coldPlugAll: boolean }, restoring: { vcpus: number; memoryMiB: number } | null): string[] {
  return qemuArgs(restoring && !cpu.coldPlugAll ? { ...spec, vcpus: restoring.vcpus } : spec, paths, image, {
    vmemRequestedMiB: restoring ? restoring.memoryMiB - spec.memoryMiB : 0,
    accel: t.accel,
    seccomp: t.seccomp ?? true,
    // 16 MiB: faster boots and ~16 MiB less RSS than 32 here. A vCPU thread created
    // after boot needs free cache regions, which 16 MiB runs out of at once: the ACPI
    // path under TCG keeps 32 (docs/BENCHMARKS.md).
    tbSizeMiB: t.tbSizeMiB ?? (cpu.mode === 'acpi' ? 32 : 16),
    tcgThread: t.tcgThread,
    extraCmdline: t.extraCmdline,
    coldPlugAll: cpu.coldPlugAll,
    firmware: existsSync(QBOOT) ? QBOOT : null,
  });
}

/**
 * The VMM's memory, split into guest RAM (the mappings sized like the guest's RAM
 * regions) and everything else, which is the VMM's own overhead. PSS divides pages
 * shared with other processes (the kernel image, QEMU's code) among them: it is what one
 * more sandbox costs the host.
 */
export interface VmmMemory {
  rssBytes: number;
  guestRamRssBytes: number;
  pssBytes: number;
  guestRamPssBytes: number;
}

export async function vmmMemory(proc: string, pid: number, ramRegionsMiB: number[]): Promise<VmmMemory | null> {
  const text = await readFile(join(proc, String(pid), 'smaps'), 'utf8').catch(() => null);
  if (text === null) return null;
  const sizes = new Set(ramRegionsMiB.filter((m) => m > 0).map((m) => m * 1024));
  const total = { Rss: 0, Pss: 0 };
  const guest = { Rss: 0, Pss: 0 };
  let inGuestRam = false;
  for (const line of text.split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      inGuestRam = false;
      continue;
    }
    const m = /^(Size|Rss|Pss):\s+(\d+) kB/.exec(line);
    if (!m) continue;
    const kb = Number(m[2]);
    if (m[1] === 'Size') {
      inGuestRam = sizes.has(kb);
      continue;
    }
    const key = m[1] as 'Rss' | 'Pss';
    total[key] += kb * 1024;
    if (inGuestRam) guest[key] += kb * 1024;
  }
  return { rssBytes: total.Rss, guestRamRssBytes: guest.Rss, pssBytes: total.Pss, guestRamPssBytes: guest.Pss };
}
