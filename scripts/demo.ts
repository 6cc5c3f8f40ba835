// `npm run demo`: a sandbox boots, a batch job runs in it, and the sandbox is grown and
// squeezed live (vCPUs, memory, host cgroup knobs) while the guest's own view is printed.
// Grows into the full daemon demo (online service under load, lodgerd deciding) later.
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openRuntime, type QemuSandbox, type ResourceUpdate } from '../sandbox-runtime/index.ts';

const dir = mkdtempSync(join(tmpdir(), 'lodger-demo-'));
const out = join(dir, 'output');
const say = (m: string): void => console.log(m);

const { runtime, accel, cgroups } = await openRuntime({ host: { runDir: join(dir, 'run') } });
say(`accelerator: ${accel.accel.toUpperCase()} — ${accel.reason}`);
const maxVcpus = 3;
const sb: QemuSandbox = await runtime.create({
  id: 'demo', vcpus: 1, maxVcpus, memoryMiB: 256, maxMemoryMiB: 1280, outputDir: out,
  cgroup: { cpuWeight: 100 },
});

let stopping = false;
const stop = async (): Promise<void> => {
  if (stopping) return;
  stopping = true;
  await sb.stop({ graceMs: 2000 });
  await cgroups?.removeParents();
};
process.on('SIGINT', () => { void stop().then(() => process.exit(130)); });

try {
  say('booting the sandbox...');
  await sb.start();
  say(`ready in ${sb.status().bootMs!.toFixed(0)} ms (VMM pid ${sb.pid}, cgroup ${[...(sb.cgroupDirs?.values() ?? [])][0] ?? 'none'})`);

  // The batch job: one worker per online vCPU, each hashing in a loop; it counts the
  // work done and records it in /output.
  const job = await sb.exec({
    argv: ['sh', '-c', [
      'work() { n=0; while [ ! -e /tmp/stop ]; do head -c 65536 /dev/zero | md5sum >/dev/null; n=$((n+1)); echo $n > /tmp/w$1; done; }',
      `for i in $(seq 1 ${maxVcpus}); do work $i & done`,
      'while [ ! -e /tmp/stop ]; do sleep 1; done; wait',
      'cat /tmp/w* | awk \'{s+=$1} END {print s " hashes of 64 KiB"}\' | tee $LODGER_OUTPUT/result.txt',
    ].join('\n')],
  });
  job.onStdout((b) => process.stdout.write(`  [job] ${b}`));
  job.onStderr((b) => process.stdout.write(`  [job:err] ${b}`));

  let lastCpu = (await sb.metrics()).cpuUsageUsec;
  let lastAt = performance.now();
  const show = async (label: string): Promise<void> => {
    const g = await sb.guestStats();
    const m = await sb.metrics();
    const now = performance.now();
    const cores = (m.cpuUsageUsec - lastCpu) / ((now - lastAt) * 1000);
    lastCpu = m.cpuUsageUsec;
    lastAt = now;
    say(`  ${label.padEnd(30)} guest: ${g.cpusOnline} CPU online, MemTotal ${(g.memTotalKiB / 1024).toFixed(0)} MiB, load ${g.load1.toFixed(2)} | host: VMM ${cores.toFixed(2)} cores`);
  };
  const step = async (label: string, req: ResourceUpdate): Promise<void> => {
    const r = await sb.update(req);
    say(`${label}: ${r.steps.map((s) => `${s.kind} ${s.detail} in ${s.ms.toFixed(0)} ms`).join('; ') || 'nothing to do'}`);
    for (let i = 0; i < 2; i++) {
      await new Promise((res) => setTimeout(res, 1500));
      await show(label);
    }
  };

  await new Promise((r) => setTimeout(r, 1500));
  await show('start');
  for (let v = 2; v <= maxVcpus; v++) await step(`grow to ${v} vCPUs`, { vcpus: v });
  await step('grow memory to 1280 MiB', { memoryMiB: 1280 });
  await step('squeeze: cgroup cpu.idle', { cgroup: { cpuIdle: true } });
  await step('squeeze: pin to CPU 0', { cgroup: { cpus: '0' } });
  await step('shrink to 1 vCPU', { vcpus: 1 });
  await step('shrink memory to 256 MiB', { memoryMiB: 256 });
  await step('release the host knobs', { cgroup: { cpuIdle: false, cpus: '0-1' } });

  const stopper = await sb.exec({ argv: ['touch', '/tmp/stop'] });
  await stopper.wait();
  const st = await job.wait();
  await sb.stop();
  say(`job exited with ${st.code}; /output copied to ${out}: ${readdirSync(out).join(', ')}`);
  say(`result: ${readFileSync(join(out, 'result.txt'), 'utf8').trim()}`);
} finally {
  await stop();
}
