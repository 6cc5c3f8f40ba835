import test from 'ava';
import { validateUpdate, type SandboxStatus } from './contract.ts';

const status = (o: Partial<SandboxStatus> = {}): SandboxStatus => ({
  id: 's', backend: 'qemu', state: 'running', accel: 'tcg', pid: 1, vcpus: 2, memoryMiB: 512, maxVcpus: 4, maxMemoryMiB: 1024,
  booted: { memoryMiB: 256, maxVcpus: 4, maxMemoryMiB: 1024, outputDisk: false }, guest: null, bootMs: 0, error: null, ...o,
});
const code = (s: SandboxStatus, req: Parameters<typeof validateUpdate>[1]): string | null => validateUpdate(s, req)?.code ?? null;

test('resizes stay within [1, maxVcpus] and [boot memory, maxMemoryMiB] in 2 MiB virtio-mem steps', (t) => {
  t.is(code(status(), { vcpus: 4, memoryMiB: 1024 }), null);
  t.is(code(status(), { vcpus: 0 }), 'SANDBOX_BAD_SPEC');
  t.is(code(status(), { vcpus: 5 }), 'SANDBOX_BAD_SPEC');
  t.is(code(status(), { vcpus: 1.5 }), 'SANDBOX_BAD_SPEC');
  t.is(code(status(), { memoryMiB: 254 }), 'SANDBOX_BAD_SPEC');
  t.is(code(status(), { memoryMiB: 257 }), 'SANDBOX_BAD_SPEC');
  t.is(code(status(), { memoryMiB: 1026 }), 'SANDBOX_BAD_SPEC');
  t.regex(validateUpdate(status(), { memoryMiB: 2000 })!.message, /memoryMiB must be in \[256, 1024\] in 2 MiB steps/);
});

test('limits lower the caps (never below the current size nor above the booted maximum) and bound the same update', (t) => {
  t.is(code(status(), { limits: { maxVcpus: 2, maxMemoryMiB: 512 } }), null);
  t.is(code(status(), { limits: { maxVcpus: 1, maxMemoryMiB: 512 } }), 'SANDBOX_BAD_SPEC', 'below the current vCPUs');
  t.is(code(status(), { limits: { maxVcpus: 2, maxMemoryMiB: 510 } }), 'SANDBOX_BAD_SPEC', 'below the current memory');
  t.is(code(status(), { limits: { maxVcpus: 5, maxMemoryMiB: 512 } }), 'SANDBOX_BAD_SPEC', 'above the booted maximum');
  t.is(code(status(), { limits: { maxVcpus: 2, maxMemoryMiB: 512 }, vcpus: 3 }), 'SANDBOX_BAD_SPEC');
  t.is(code(status({ maxVcpus: 2 }), { vcpus: 3 }), 'SANDBOX_BAD_SPEC', 'caps set earlier hold');
  t.is(code(status({ maxVcpus: 2 }), { limits: { maxVcpus: 4, maxMemoryMiB: 1024 }, vcpus: 3 }), null, 'raised again within the booted maximum');
});

test('an output directory needs an /output disk; resizing needs a running guest, knobs a live one', (t) => {
  t.is(code(status(), { outputDir: '/o' }), 'SANDBOX_BAD_SPEC');
  t.is(code(status({ booted: { memoryMiB: 256, maxVcpus: 4, maxMemoryMiB: 1024, outputDisk: true } }), { outputDir: '/o' }), null);
  t.is(code(status({ state: 'paused' }), { vcpus: 3 }), 'SANDBOX_BAD_STATE');
  t.is(code(status({ state: 'paused' }), { cgroup: { cpuIdle: true } }), null);
  for (const state of ['created', 'starting', 'suspending', 'suspended', 'resuming', 'stopping', 'stopped', 'failed'] as const) {
    t.is(code(status({ state }), { cgroup: { cpuIdle: true } }), 'SANDBOX_BAD_STATE', state);
  }
});
