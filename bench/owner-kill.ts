// The owner of a sandbox (lodgerd, in production) killed in the middle of an operation:
// the operation runs in a child process (owner.ts) that is SIGKILLed `killMs` after it
// starts, then this process takes the sandbox up as a restarted lodgerd would and lets the
// job run to its end. test/hostile.test.ts asserts on one of each; bench/hostile.ts counts many.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import type { ExitStatus, HostedRuntime, HostedSandbox } from '../sandbox-runtime/index.ts';

export type OwnerOp = 'resize' | 'suspend' | 'restore';

export interface OwnerKilled {
  /** What the killed owner wrote: "go <state>", and "done" or "failed ..." had it got that far. */
  said: string;
  /** What the new owner found. */
  state: string;
  vcpus: number;
  memoryMiB: number;
  /** The job's exit once taken up, and its stdout lines (every one once, in order, when nothing was lost). */
  exit: ExitStatus | null;
  lines: string[];
  /** From the kill to the new owner holding the sandbox. */
  takeoverMs: number;
  /** resize: what a resize by the new owner gave. */
  resized: { vcpus: number; memoryMiB: number } | null;
}

/** The job killOwnerMid runs: `JOB_LINES` numbered lines, one per 100 ms. */
export const JOB_LINES = 30;

/**
 * `a` is a running sandbox of `runtime` (1 vCPU of 2, 256 MiB of 768). It ends stopped,
 * whatever happens; a failure to take it up is thrown.
 */
export async function killOwnerMid(runtime: HostedRuntime, cgroupParent: string, a: HostedSandbox, op: OwnerOp, killMs: number): Promise<OwnerKilled> {
  let taken = false;
  try {
    return await killAndTakeUp(runtime, cgroupParent, a, op, killMs, () => { taken = true; });
  } finally {
    // Not taken up (the job died early, the attach failed): ended by id all the same.
    if (!taken) await runtime.shutdown(a.id).catch(() => {});
  }
}

async function killAndTakeUp(runtime: HostedRuntime, cgroupParent: string, a: HostedSandbox, op: OwnerOp, killMs: number, onTaken: () => void): Promise<OwnerKilled> {
  const h = await a.exec({ argv: ['sh', '-c', `i=0; while [ $i -lt ${JOB_LINES} ]; do i=$((i+1)); echo $i; sleep 0.1; done`] });
  let stored = '';
  h.onStdout((b) => { stored += b.toString(); });
  const deadline = Date.now() + 60_000;
  while (!stored.includes('3\n')) {
    if (Date.now() > deadline) throw new Error(`sandbox ${a.id}: its job printed ${JSON.stringify(stored)} in 60 s`);
    await new Promise((r) => setTimeout(r, 20));
  }
  if (op === 'restore') await a.suspend();
  a.release();
  const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'owner.ts'), runtime.opts.host.runDir, cgroupParent, a.id, op], { stdio: ['ignore', 'pipe', 'pipe'] });
  let said = '';
  child.stdout!.on('data', (b) => { said += b; });
  child.stderr!.on('data', (b) => { said += b; });
  const gone = new Promise((r) => child.once('exit', r));
  let killedAt = 0;
  try {
    for (let i = 0; i < 3000 && !said.includes('go '); i++) await new Promise((r) => setTimeout(r, 10));
    if (said.includes('go ')) await new Promise((r) => setTimeout(r, killMs));
  } finally {
    child.kill('SIGKILL');
    killedAt = performance.now();
    await gone;
  }
  const c = await runtime.with({}).attach(a.id);
  const takeoverMs = performance.now() - killedAt;
  onTaken();
  try {
    const { state, vcpus, memoryMiB } = c.status();
    let exit: OwnerKilled['exit'] = null;
    let resized: OwnerKilled['resized'] = null;
    if (state === 'running' || state === 'suspended') {
      const hc = await c.resumeExec(h.id, [Buffer.byteLength(stored), 0]);
      hc.onStdout((b) => { stored += b.toString(); });
      if (state === 'suspended') await c.resume();
      exit = await hc.wait();
      if (op === 'resize') {
        const r = await c.update({ vcpus: 2, memoryMiB: 768 });
        resized = { vcpus: r.vcpus, memoryMiB: r.memoryMiB };
      }
    }
    return { said, state, vcpus, memoryMiB, exit, lines: stored.trim().split('\n'), takeoverMs, resized };
  } finally {
    await c.stop();
  }
}
