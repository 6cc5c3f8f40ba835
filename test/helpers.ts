// Shared set-up for suites that use real QEMU: a runtime whose run files and cgroups are
// private to this test process, and a registry that stops every sandbox started, by pid,
// even when a test fails.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  openGvisorRuntime, openRuntime, type CgroupManager, type GvisorRuntime, type GvisorSandbox, type HostedRuntime, type HostedSandbox,
  type QemuRuntimeOptions, type SandboxSpec,
} from '../sandbox-runtime/index.ts';
import { passableTmpDir } from '../bench/index.ts';

/** Whether the gVisor backend can be tested here (setup installs runsc from backports). */
export const runscInstalled = existsSync('/usr/bin/runsc') || !!process.env.LODGER_RUNSC;

export interface TestRuntime {
  runtime: HostedRuntime;
  dir: string;
  /** Creates and starts a sandbox that is stopped by stopAll(); runtime options may be overridden. */
  boot(spec: Partial<SandboxSpec> & { id: string }, runtimeOpts?: Partial<QemuRuntimeOptions>): Promise<HostedSandbox>;
  stopAll(): Promise<void>;
}

export async function testRuntime(name: string): Promise<TestRuntime> {
  const dir = passableTmpDir(`lodger-${name}-`);
  const { runtime, cgroups } = await openRuntime({
    host: { runDir: join(dir, 'run') },
    cgroupParent: `lodger-test-${process.pid}`,
    bootTimeoutMs: 120_000,
  });
  const started: HostedSandbox[] = [];
  return {
    runtime,
    dir,
    async boot(spec, runtimeOpts) {
      const rt = runtimeOpts ? runtime.with(runtimeOpts) : runtime;
      const sb = await rt.create({ vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 768, ...spec });
      started.push(sb);
      await sb.start();
      return sb;
    },
    stopAll: () => stopAll(started, cgroups),
  };
}

/** The same for the gVisor backend: its run files and cgroups private to this test process. */
export async function testGvisorRuntime(name: string): Promise<{ runtime: GvisorRuntime; dir: string; boot(spec: Partial<SandboxSpec> & { id: string }): Promise<GvisorSandbox>; stopAll(): Promise<void> }> {
  const dir = passableTmpDir(`lodger-${name}-gv-`);
  const { runtime, cgroups } = await openGvisorRuntime({ host: { runDir: join(dir, 'run') }, cgroupParent: `lodger-test-gv-${process.pid}` });
  const started: GvisorSandbox[] = [];
  return {
    runtime,
    dir,
    async boot(spec) {
      const sb = await runtime.create({ vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 768, ...spec });
      started.push(sb);
      await sb.start();
      return sb;
    },
    stopAll: () => stopAll(started, cgroups),
  };
}

/** Stops every sandbox started, then kills its VMM or runsc sandbox process by pid, then removes the cgroups. */
async function stopAll(started: { stop(o: { graceMs: number }): Promise<unknown>; readonly pid: number | null }[], cgroups: CgroupManager | null): Promise<void> {
  for (const sb of started) {
    const pid = sb.pid;
    await sb.stop({ graceMs: 1000 }).catch(() => {});
    if (pid) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
    }
  }
  await cgroups?.removeParents();
}

export async function collect(h: { onStdout(cb: (b: Buffer) => void): void; onStderr(cb: (b: Buffer) => void): void; wait(): Promise<{ code: number | null; signal: number | null }> }) {
  let stdout = '';
  let stderr = '';
  h.onStdout((b) => { stdout += b.toString(); });
  h.onStderr((b) => { stderr += b.toString(); });
  const status = await h.wait();
  return { stdout, stderr, ...status };
}

/** Each thread of a process with its /proc/<pid>/task/<tid>/cgroup lines. */
export function taskCgroups(pid: number): { tid: string; lines: string[] }[] {
  return readdirSync(`/proc/${pid}/task`).map((tid) => ({ tid, lines: readFileSync(`/proc/${pid}/task/${tid}/cgroup`, 'utf8').trim().split('\n') }));
}
