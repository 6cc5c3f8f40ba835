// bench/hostile.ts's guest-side cases next to an online service, under a real lodgerd:
// nginx on CPU 0 at a fixed share of its capacity (the load generator with it, standing in
// for clients elsewhere), lodgerd on the other CPUs with an SLO for nginx, and each hostile
// job submitted through lodgerd's API in turn, next to a benign batch job (the colocation
// benchmark's CPU loop) in every round, the order rotated round by round.
// The SLO is the colocation benchmark's rule, measured in this run: the p99 lodgerd's probe
// sees over a cell of the static split (the benign batch pinned off the service's CPU), the
// tail an operator who chose the static split accepts. A case passes when the same probe's
// p99 from the job's submission to the case's end stays within it with no probe or request
// failed, and its job ended as the case makes it end (so it did run); the clients' p99
// (hey) is reported beside it, against the static split's clients' p99.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { connect } from '../daemon/index.ts';
import { JOBS, load, measureCapacity, measureCell, policyYaml, probeP99, startDirect, summarise, windowP99s, type Service } from './colocation/index.ts';
import { TestDaemon } from './lodgerd.ts';
import { median, startNginx } from './services.ts';
import { processesNaming } from './containerd.ts';

const SERVICE_CPU = 0;
const BATCH_CPUS = cpus().length > 1 ? `1-${cpus().length - 1}` : '0';

interface JobView { state: string; error?: string; attempts?: number; transitions?: { reason?: string }[] }
/** What the job must come to: it ran (its sandbox booted) and ended as the case makes it end. */
interface Expect { states: string[]; attempts: [min: number, max: number]; reason?: RegExp }
interface Case { name: string; what: string; spec: Record<string, unknown>; expect: Expect }

const job = (command: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  command: ['sh', '-c', command], vcpus: { min: 1, max: 2 }, memoryMib: { min: 256, max: 256 }, ...extra,
});

/** Still running when the case ends, then cancelled: its one attempt was never cut short. */
const RUNS_TO_THE_END: Expect = { states: ['cancelled'], attempts: [1, 1] };

/** The guest-side cases of the issue, each for the whole case (its job cancelled at the end if it still runs). */
function cases(dir: string): Case[] {
  return [
    { name: 'benign', what: 'the colocation benchmark\'s CPU loop (the reference)', spec: job(JOBS[0]!.command[2]!), expect: RUNS_TO_THE_END },
    { name: 'fork-bomb', what: 'a fork bomb (the job\'s shell then execs a sleep: forking nothing, it lives on)', spec: job('bomb() { bomb | bomb & }; bomb; exec sleep 3600'), expect: RUNS_TO_THE_END },
    { name: 'balloon', what: 'memory ballooned past the guest\'s RAM, over and over (each OOM-killed)', spec: job('while :; do awk \'BEGIN { s = "x"; while (1) s = s s }\'; done'), expect: RUNS_TO_THE_END },
    { name: 'log-flood', what: 'stdout flooded without end (past the 100 MiB log limit)', spec: job('cat /dev/zero'), expect: { ...RUNS_TO_THE_END, reason: /SANDBOX_OUTPUT_LIMIT: output past \d+ bytes dropped/ } },
    { name: 'output-fill', what: '/output filled to the last block, emptied, filled again', spec: job('while :; do dd if=/dev/zero of=$LODGER_OUTPUT/fill bs=1M 2>/dev/null; sync; rm -f $LODGER_OUTPUT/fill; done', { outputDir: join(dir, 'out-fill') }), expect: RUNS_TO_THE_END },
    { name: 'reboot-storm', what: 'a guest that dies as a panic does (reboot -f) 2 s in, retried 5 times', spec: job('sleep 2; reboot -f', { retries: 5 }), expect: { states: ['failed', 'cancelled'], attempts: [2, 6], reason: /the guest shut down, rebooted or panicked/ } },
    { name: 'agent-killed', what: 'kill -9 and SIGSTOP of the agent (PID 1), then a busy loop', spec: job('kill -9 1; kill -STOP 1; while :; do :; done'), expect: RUNS_TO_THE_END },
    { name: 'spin-all', what: 'a busy loop on every vCPU it has (lodgerd sizes it as any job)', spec: job('(while :; do :; done) & (while :; do :; done) & wait'), expect: RUNS_TO_THE_END },
  ];
}

export interface OnlineRow {
  /** probeP99Ms: lodgerd's probe (the SLO's instrument) over the case; p50Ms, p99Ms: the clients' (hey). */
  case: string; round: number; probeP99Ms: number; probeFailures: number; p50Ms: number; p99Ms: number; windows: number; windowsOver: number; errors: number;
  jobState: string; jobReason: string; attempts: number;
  /** The job ended as the case expects (see Expect); else why not. */
  jobAsExpected: string | null;
}

export interface OnlineResult {
  /** targetMs: the SLO (the static split's probe p99); staticClientP99Ms: its clients' p99. */
  capacityRps: number; rps: number; loadPct: number; targetMs: number; staticClientP99Ms: number;
  cases: { name: string; what: string }[];
  rows: OnlineRow[];
  /** Per case: the median of the rounds' p99 and the worst, and whether every round stayed within the target. */
  summary: Record<string, { probeP99MsMedian: number; probeP99MsWorst: number; p99MsMedian: number; windowsOver: number; windows: number; within: boolean; states: string[]; jobsNotAsExpected: string[] }>;
  leaks: { processes: number };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function onlinePhase(dir: string, o: { rounds: number; seconds: number; loadPct: number }, say: (m: string) => void): Promise<OnlineResult> {
  const nginx = await startNginx(join(dir, 'nginx'), 0, SERVICE_CPU);
  const svc: Service = { name: 'nginx', target: { kind: 'nginx', url: nginx.url }, probe: { kind: 'http', url: nginx.url, method: 'GET', intervalMs: 20, timeoutMs: 200 }, pidFile: join(dir, 'nginx', 'nginx.pid'), stop: () => nginx.stop() };
  const base = join(dir, 'lodgerd-online');
  const policyDir = join(base, 'policies');
  mkdirSync(policyDir, { recursive: true });
  const daemon = new TestDaemon(join(base, 'lodgerd.sock'), ['--config', join(base, 'lodgerd.yaml'), '--state-dir', join(base, 'state'), '--policy-dir', policyDir], BATCH_CPUS);
  const all = cases(dir);
  for (const c of all) if (c.spec.outputDir) mkdirSync(c.spec.outputDir as string, { recursive: true });
  try {
    const cap = await measureCapacity(svc.target, SERVICE_CPU, 4);
    const rps = Math.round(cap.capacityRps * o.loadPct / 100);
    say(`online: nginx capacity ${cap.capacityRps} req/s; the cases run at ${o.loadPct}%: ${rps} req/s`);

    // The SLO: the static split's tail at this load, as lodgerd's probe sees it.
    const direct = await startDirect(dir, 'static', 'qemu');
    let targetMs: number;
    let staticClientP99Ms: number;
    try {
      await direct.set({ cpus: BATCH_CPUS, cpuIdle: false });
      await sleep(8000); // the memory job fills its buffer first
      const cell = await measureCell({ svc, scenario: 'static', loadPct: o.loadPct, round: 0, rps, seconds: 15, warmup: 2, loadCpu: SERVICE_CPU, batch: direct, daemon: null, alone: {} });
      targetMs = cell.probeCellP99Ms!;
      staticClientP99Ms = cell.p99Ms;
    } finally {
      await direct.stop();
    }
    say(`online: the static split's probe p99 ${targetMs.toFixed(2)} ms (lodgerd's SLO, each case's bound), its clients' p99 ${staticClientP99Ms.toFixed(2)} ms`);

    writeFileSync(join(base, 'lodgerd.yaml'), `warmPoolSize: 0\nmaxRunningJobs: 1\nonSigterm: stop-sandboxes\nmetricsAddress: ""\ncgroupParent: lodger-hostile-${process.pid}-d\nruntime: qemu\n`);
    writeFileSync(join(policyDir, 'nginx.yaml'), policyYaml(svc, targetMs, String(SERVICE_CPU)));
    await daemon.start();
    const api = connect(daemon.socket);
    const rows: OnlineRow[] = [];
    try {
      for (let round = 0; round < o.rounds; round++) {
        const order = all.map((_, i) => all[(i + round) % all.length]!);
        for (const c of order) {
          const id = `${c.name}-${round}`;
          // 2 s of load before the job (not measured), then the job's whole life to the case's end.
          const running = load(svc.target, rps, 2 + o.seconds, SERVICE_CPU);
          await sleep(2000);
          const submitted = Date.now();
          await api.call('SubmitJob', { id, spec: { name: c.name, ...c.spec } });
          const probe = await probeP99(svc, running);
          const r = await running;
          const now = await api.call<JobView>('GetJob', { id });
          if (!['succeeded', 'failed', 'cancelled'].includes(now.state)) await api.call('CancelJob', { id, reason: 'case over' });
          const j = await api.call<JobView>('WaitJob', { id });
          const from = submitted - r.startedAt;
          const samples = r.samples.filter((s) => s.t >= from).map((s) => ({ ...s, t: s.t - from }));
          const sum = summarise(samples);
          const wins = windowP99s(samples, (Date.now() - submitted) / 1000);
          const reasons = [...new Set((j.transitions ?? []).map((x) => x.reason ?? '').filter(Boolean))].join('; ').slice(0, 300);
          const attempts = j.attempts ?? 0;
          const jobReason = j.error ? `${reasons} (${j.error.slice(0, 200)})` : reasons;
          // A reboot storm fails after its retries, or is cancelled in the middle of them by a short case.
          const [lo, hi] = c.expect.attempts;
          const off = !c.expect.states.includes(j.state) ? `ended ${j.state}, not ${c.expect.states.join(' or ')}` : attempts < lo || attempts > hi ? `${attempts} attempts, not ${lo}-${hi}`
            : c.expect.reason && !c.expect.reason.test(`${reasons} ${j.error ?? ''}`) ? `no ${c.expect.reason} in its reason` : null;
          const row: OnlineRow = { case: c.name, round, probeP99Ms: probe.cell, probeFailures: probe.failures, jobAsExpected: off, p50Ms: sum.p50Ms, p99Ms: sum.p99Ms, windows: wins.length, windowsOver: wins.filter((w) => w > staticClientP99Ms).length, errors: sum.errors, jobState: j.state, jobReason, attempts };
          rows.push(row);
          say(`online ${id}: probe p99 ${probe.cell.toFixed(2)} ms (SLO ${targetMs.toFixed(2)}), clients' p99 ${sum.p99Ms.toFixed(2)} ms (static ${staticClientP99Ms.toFixed(2)}; ${row.windowsOver}/${row.windows} windows over it), ${sum.errors} errors, ${probe.failures} probes failed; job ${j.state} after ${row.attempts} attempt(s)${off ? ` (NOT AS EXPECTED: ${off})` : ''}: ${row.jobReason.slice(0, 120)}`);
        }
      }
    } finally {
      api.close();
      await daemon.stop('SIGTERM');
    }
    const summary: OnlineResult['summary'] = {};
    for (const c of all) {
      const mine = rows.filter((r) => r.case === c.name);
      summary[c.name] = {
        probeP99MsMedian: median(mine.map((r) => r.probeP99Ms)), probeP99MsWorst: Math.max(...mine.map((r) => r.probeP99Ms)), p99MsMedian: median(mine.map((r) => r.p99Ms)),
        windowsOver: mine.reduce((a, r) => a + r.windowsOver, 0), windows: mine.reduce((a, r) => a + r.windows, 0),
        within: mine.every((r) => r.probeP99Ms <= targetMs && r.errors === 0 && r.probeFailures === 0), states: mine.map((r) => r.jobState),
        jobsNotAsExpected: mine.filter((r) => r.jobAsExpected).map((r) => `round ${r.round + 1}: ${r.jobAsExpected}`),
      };
    }
    return { capacityRps: cap.capacityRps, rps, loadPct: o.loadPct, targetMs, staticClientP99Ms, cases: all.map(({ name, what }) => ({ name, what })), rows, summary, leaks: { processes: processesNaming(base).length } };
  } finally {
    await daemon.end();
    await nginx.stop();
  }
}
