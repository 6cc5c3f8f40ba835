// bench/hostile.ts's "lodgerd killed mid-resize", with the whole daemon: a job sized 1..2
// vCPUs under a real lodgerd whose pool may grow it (nothing online to protect, a CPU
// spare); when lodgerd's decision to grow it is heard on WatchEvents, lodgerd is killed
// (SIGKILL) at a random point of the time that grow took in a first run left alone (its
// actuator's resize under way), and started again on the same state directory. The job must go on to its end: one attempt, every line once
// and in order, its sandbox's size as the guest has it. (The sandbox-owner variants in
// owner-kill.ts cover suspend and restore, which lodgerd's controller starts only under
// memory pressure.)
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type ApiClient } from '../daemon/index.ts';
import { storedStdout, TestDaemon } from './lodgerd.ts';
import { median } from './services.ts';

const LINES = 60;

export interface LodgerdKillResult {
  runs: number;
  /** Runs in which the grow decision came and lodgerd was killed after it. */
  killedMidResize: number;
  /** Of those, the job's size when it was taken up again: vCPUs -> runs. */
  vcpusAfter: Record<string, number>;
  lostJobs: number;
  /** From the kill to the restarted lodgerd listening (its orphans taken up before it listens). */
  restartMsMedian: number;
  /** Without a kill, once: from the grow decision to GetStatus showing 2 vCPUs (polled every 10 ms), how long a kill has to land inside. */
  resizeMs: number | null;
  details: string[];
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function lodgerdKills(dir: string, runs: number, say: (m: string) => void): Promise<LodgerdKillResult> {
  const base = join(dir, 'lodgerd-kill');
  const policyDir = join(base, 'policies');
  mkdirSync(policyDir, { recursive: true });
  writeFileSync(join(base, 'lodgerd.yaml'), `warmPoolSize: 0\nmaxRunningJobs: 1\nonSigterm: stop-sandboxes\nmetricsAddress: ""\ncgroupParent: lodger-hostile-${process.pid}-k\nruntime: qemu\n`);
  // No CPU held back, a short cool-down: the controller grows a 1-vCPU job soon after it starts.
  writeFileSync(join(policyDir, 'pool.yaml'), `apiVersion: lodger.dev/v1
kind: BatchPool
metadata: { name: default }
spec:
  reserve: { cpus: 0, memory: 1Gi }
  sandbox: { minVcpus: 1, maxVcpus: 2, minMemory: 256Mi, maxMemory: 1Gi }
  growth: { cooldown: 1s, minSlack: 0.05, shrinkSlack: 0, memoryStep: 256Mi }
`);
  const daemon = new TestDaemon(join(base, 'lodgerd.sock'), ['--config', join(base, 'lodgerd.yaml'), '--state-dir', join(base, 'state'), '--policy-dir', policyDir]);
  const r: LodgerdKillResult = { runs, killedMidResize: 0, vcpusAfter: {}, lostJobs: 0, restartMsMedian: NaN, resizeMs: null, details: [] };
  const restarts: number[] = [];
  let api: ApiClient | null = null;
  try {
    await daemon.start();
    for (let i = -1; i < runs; i++) {
      api = connect(daemon.socket);
      const id = i < 0 ? 'grow-unkilled' : `grow-${i}`;
      let grow: number | null = null;
      const events = api.stream('WatchEvents', {});
      events.on('data', (e: { kind?: string; reason?: string }) => { if (e.kind === 'decision' && /-> 2 vCPUs/.test(e.reason ?? '') && grow === null) grow = performance.now(); });
      events.on('error', () => {});
      await api.call('SubmitJob', { id, spec: { name: 'grow', command: ['sh', '-c', `i=0; while [ $i -lt ${LINES} ]; do i=$((i+1)); echo $i; sleep 0.1; done`], vcpus: { min: 1, max: 2 }, memoryMib: { min: 256, max: 256 } } });
      const deadline = Date.now() + 60_000;
      while (grow === null && Date.now() < deadline) await sleep(5);
      if (grow === null) {
        r.details.push(`${id}: no grow decision in 60 s`);
        events.cancel();
        await api.call('WaitJob', { id });
        api.close();
        continue;
      }
      if (i < 0) {
        for (let k = 0; k < 1000 && r.resizeMs === null; k++) {
          const st = await api.call<{ sandboxes?: { jobId?: string; vcpus?: number }[] }>('GetStatus', {});
          if (st.sandboxes?.find((x) => x.jobId === id)?.vcpus === 2) r.resizeMs = Math.round(performance.now() - grow);
          else await sleep(10);
        }
        say(`lodgerd's grow 1 -> 2 vCPUs, not killed: ${r.resizeMs} ms from the decision to the status showing it`);
        events.cancel();
        await api.call('WaitJob', { id });
        api.close();
        continue;
      }
      // A random point inside the resize as it took without a kill.
      const delay = Math.random() * (r.resizeMs ?? 15);
      await sleep(Math.max(0, grow + delay - performance.now()));
      events.cancel();
      api.close();
      await daemon.stop('SIGKILL');
      const killed = performance.now();
      r.killedMidResize++;
      await daemon.start();
      restarts.push(performance.now() - killed);
      api = connect(daemon.socket);
      const taken = /taking up sandbox/.test(daemon.log);
      // Its size as the restarted lodgerd reads it back (its first control round lists it).
      let vcpus = '?';
      for (let k = 0; k < 50 && vcpus === '?'; k++) {
        const st = await api.call<{ sandboxes?: { jobId?: string; vcpus?: number }[] }>('GetStatus', {});
        const mine = st.sandboxes?.find((x) => x.jobId === id);
        if (mine?.vcpus) vcpus = String(mine.vcpus);
        else await sleep(100);
      }
      r.vcpusAfter[vcpus] = (r.vcpusAfter[vcpus] ?? 0) + 1;
      const job = await api.call<{ state: string; attempts?: number; exitCode?: number }>('WaitJob', { id });
      const out = await storedStdout(api, id);
      const whole = out === Array.from({ length: LINES }, (_, n) => `${n + 1}\n`).join('');
      if (!taken || job.state !== 'succeeded' || job.attempts !== 1 || !whole) {
        r.lostJobs++;
        r.details.push(`${id}: taken up ${taken}, ${job.state} after ${job.attempts} attempt(s), output ${whole ? 'whole' : `not whole (${out.length} bytes)`}`);
      }
      say(`lodgerd killed ${delay.toFixed(0)} ms after its grow decision (${id}): back in ${(performance.now() - killed).toFixed(0)} ms, the sandbox at ${vcpus} vCPUs, job ${job.state}, ${whole ? 'output whole' : 'output NOT whole'}`);
      api.close();
      api = null;
    }
  } finally {
    api?.close();
    await daemon.stop('SIGTERM').catch(() => {});
    await daemon.end();
  }
  r.restartMsMedian = Math.round(median(restarts));
  return r;
}
