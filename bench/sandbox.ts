// npm run bench:sandbox -- [--json] [--runs N] [--cycles N]
// Boot, resize and overhead of one sandbox, measured side by side in one run with a bare
// QEMU boot of the same kernel (the ratio is what counts on a noisy machine).
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ensureGuestImage, openRuntime, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, writeCpio, type HostedRuntime, type HostedSandbox } from '../sandbox-runtime/index.ts';
import { backendTable, benchBackends } from './backends.ts';

const { values } = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    runs: { type: 'string', default: '5' },
    cycles: { type: 'string', default: '5' },
  },
});
const runs = Number(values.runs);
const cycles = Number(values.cycles);
const say = (m: string): void => { if (!values.json) console.error(m); };

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const round = (x: number): number => Math.round(x * 10) / 10;

const dir = mkdtempSync(join(tmpdir(), 'lodger-bench-'));
const { runtime, accel, host } = await openRuntime({ host: { runDir: join(dir, 'run') }, cgroupParent: `lodger-bench-${process.pid}` });
const image = runtime.opts.image;
say(`accelerator: ${accel.accel} (${accel.reason})`);

// A bare QEMU boot of the same kernel: default firmware and machine, an initramfs whose
// /init prints a marker and powers off. Timed from spawn to the marker on the serial port.
const rawInitrd = join(dir, 'raw.cpio');
writeFileSync(rawInitrd, writeCpio([
  { name: 'bin', mode: S_IFDIR | 0o755 },
  { name: 'dev', mode: S_IFDIR | 0o755 },
  { name: 'dev/console', mode: S_IFCHR | 0o600, rdevMajor: 5, rdevMinor: 1 },
  { name: 'bin/busybox', mode: S_IFREG | 0o755, data: readFileSync('/bin/busybox') },
  { name: 'bin/sh', mode: S_IFLNK | 0o777, data: Buffer.from('busybox') },
  { name: 'init', mode: S_IFREG | 0o755, data: Buffer.from('#!/bin/sh\necho LODGER-RAW-READY\n/bin/busybox poweroff -f\n') },
]));

function rawBoot(): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const q = spawn(host.qemuBinary, [
      '-nodefaults', '-no-user-config', '-nographic', '-no-reboot', '-M', 'q35',
      '-accel', accel.accel === 'kvm' ? 'kvm' : 'tcg,thread=multi', '-m', '256M',
      '-kernel', image.kernel, '-initrd', rawInitrd, '-append', 'console=ttyS0 quiet panic=-1', '-serial', 'stdio',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let at: number | null = null;
    const timer = setTimeout(() => q.kill('SIGKILL'), 120_000);
    q.stdout.on('data', (b) => {
      out += b;
      if (at === null && out.includes('LODGER-RAW-READY')) at = performance.now() - t0;
    });
    q.on('close', () => {
      clearTimeout(timer);
      if (at === null) reject(new Error(`bare QEMU boot never printed its marker: ${out.slice(-500)}`));
      else resolve(at);
    });
  });
}

let seq = 0;
async function boot(rt: HostedRuntime = runtime): Promise<HostedSandbox> {
  const sb = await rt.create({ id: `bench-${seq++}`, vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 768 });
  await sb.start();
  return sb;
}
// The Debian cloud kernel, booted the same way, for the gain of the minimal kernel.
const debianImage = image.kernelSource.includes('/boot/') ? null : await ensureGuestImage(host, { kernel: 'debian' }).catch(() => null);
const debianRuntime = debianImage ? runtime.with({ image: debianImage }) : null;
const debianMs: number[] = [];

const bootMs: number[] = [];
const phases: { agentStart: number; modulesLoaded: number; portOpen: number }[] = [];
const rawMs: number[] = [];
// Alternate the two so drift on the host hits both alike.
for (let i = 0; i < runs; i++) {
  rawMs.push(await rawBoot());
  const sb = await boot();
  bootMs.push(sb.status().bootMs!);
  // The agent's hello carries guest uptimes at its boot phases.
  const hello = sb.agentClient?.hello ?? '';
  const phase = (k: string): number => Number(new RegExp(`${k}=(\\d+)`).exec(hello)?.[1] ?? NaN);
  phases.push({ agentStart: phase('start'), modulesLoaded: phase('modules'), portOpen: phase('port') });
  await sb.stop({ graceMs: 0 });
  if (debianRuntime) {
    const d = await boot(debianRuntime);
    debianMs.push(d.status().bootMs!);
    await d.stop({ graceMs: 0 });
  }
  say(`boot ${i + 1}/${runs}: lodger ${bootMs.at(-1)!.toFixed(0)} ms, bare qemu ${rawMs.at(-1)!.toFixed(0)} ms${debianRuntime ? `, with the Debian kernel ${debianMs.at(-1)!.toFixed(0)} ms` : ''}`);
}

const sb = await boot();
const plug: number[] = [];
const unplug: number[] = [];
const memPlug: number[] = [];
const memUnplug: number[] = [];
let guestCpusAfterPlug = 0;
let guestMemMiBAfterPlug = 0;
let overheadMiB = 0;
let overheadPssMiB = 0;
let hotAddMs: number | null = null;
let acpiUnplugMs: number | null = null;
let vmmRssMiB = 0;
try {
  // One vCPU step each way, whatever the mechanism (device_add first, then guest
  // online/offline under TCG, device_add/device_del under KVM).
  for (let i = 0; i < cycles; i++) {
    const up = await sb.update({ vcpus: 2 });
    plug.push(up.steps.find((s) => s.kind === 'vcpu-plug' || s.kind === 'vcpu-online')!.ms);
    guestCpusAfterPlug = (await sb.guestStats()).cpusOnline;
    const down = await sb.update({ vcpus: 1 });
    unplug.push(down.steps.find((s) => s.kind === 'vcpu-unplug' || s.kind === 'vcpu-offline')!.ms);
  }
  say(`vCPU up ${plug.map((x) => x.toFixed(0)).join(' ')} ms; down ${unplug.map((x) => x.toFixed(0)).join(' ')} ms (${sb.vcpuUnplugMode})`);
  for (let i = 0; i < Math.min(cycles, 3); i++) {
    memPlug.push((await sb.update({ memoryMiB: 768 })).totalMs);
    guestMemMiBAfterPlug = Math.round((await sb.guestStats()).memTotalKiB / 1024);
    memUnplug.push((await sb.update({ memoryMiB: 256 })).totalMs);
  }
  say(`memory +512 MiB ${memPlug.map((x) => x.toFixed(0)).join(' ')} ms; -512 MiB ${memUnplug.map((x) => x.toFixed(0)).join(' ')} ms`);
  // Overhead: the VMM's resident memory that is not guest RAM, after a job has run.
  const job = await sb.exec({ argv: ['sh', '-c', 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done'] });
  await job.wait();
  await new Promise((r) => setTimeout(r, 500));
  const mem = await sb.vmmMemory();
  if (mem) {
    vmmRssMiB = mem.rssBytes / 1048576;
    overheadMiB = (mem.rssBytes - mem.guestRamRssBytes) / 1048576;
  }
  // With a second sandbox up, pages both map once (kernel image, QEMU's code) are shared:
  // PSS beyond guest RAM is what each further sandbox costs.
  const twin = await boot();
  try {
    await new Promise((r) => setTimeout(r, 500));
    const m2 = await sb.vmmMemory();
    if (m2) overheadPssMiB = (m2.pssBytes - m2.guestRamPssBytes) / 1048576;
  } finally {
    await twin.stop({ graceMs: 0 });
  }
} finally {
  await sb.stop({ graceMs: 0 });
}
// The ACPI unplug path once, on its own sandbox (under TCG it can run only once per VM).
const acpiSpec = { id: 'bench-acpi', vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 256 };
const acpiSb = runtime.with({ vcpuUnplug: 'acpi' });
const acpiBox = await acpiSb.create(acpiSpec);
try {
  await acpiBox.start();
  hotAddMs = (await acpiBox.update({ vcpus: 2 })).steps.find((s) => s.kind === 'vcpu-plug')!.ms;
  acpiUnplugMs = (await acpiBox.update({ vcpus: 1 })).steps.find((s) => s.kind === 'vcpu-unplug')!.ms;
  say(`ACPI vCPU device_add ${hotAddMs.toFixed(0)} ms, device_del ${acpiUnplugMs.toFixed(0)} ms`);
} finally {
  await acpiBox.stop({ graceMs: 0 });
}

const result = {
  date: new Date().toISOString(),
  host: `${cpus()[0]?.model ?? 'unknown'} x${cpus().length}`,
  accel: accel.accel,
  accelReason: accel.reason,
  bootMs: round(median(bootMs)),
  bootMsAll: bootMs.map(round),
  rawQemuBootMs: round(median(rawMs)),
  rawQemuBootMsAll: rawMs.map(round),
  bootRatio: Math.round((median(bootMs) / median(rawMs)) * 100) / 100,
  guestKernel: image.kernelSource,
  debianKernelBootMs: debianMs.length ? round(median(debianMs)) : null,
  // Guest uptime (ms) when the agent started, had loaded its modules, found its port.
  guestBootPhasesMs: {
    agentStart: median(phases.map((p) => p.agentStart)),
    modulesLoaded: median(phases.map((p) => p.modulesLoaded)),
    portOpen: median(phases.map((p) => p.portOpen)),
  },
  pvh: image.pvh,
  vcpuUnplugMode: sb.vcpuUnplugMode,
  vcpuPlugMs: round(median(plug)),
  vcpuUnplugMs: round(median(unplug)),
  vcpuHotAddMs: hotAddMs === null ? null : round(hotAddMs),
  vcpuAcpiUnplugMs: acpiUnplugMs === null ? null : round(acpiUnplugMs),
  memPlugMs: round(median(memPlug)),
  memUnplugMs: round(median(memUnplug)),
  guestCpusAfterPlug,
  guestMemMiBAfterPlug,
  // VMM resident memory beyond the guest RAM in use (RSS), and its proportional share
  // with a second sandbox running (PSS): the marginal cost of one more sandbox.
  hostOverheadMiB: round(overheadMiB),
  hostOverheadPssMiB: round(overheadPssMiB),
  vmmRssMiB: round(vmmRssMiB),
  initramfsMiB: round(image.bytes / 1048576),
};
await runtime.opts.cgroups?.removeParents();
// Each backend in the same run (bench/backends.ts): the backend column of docs/BENCHMARKS.md.
const backends = await benchBackends({ log: values.json ? undefined : say });
say(backendTable(backends.rows));
Object.assign(result, { backends });
console.log(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
