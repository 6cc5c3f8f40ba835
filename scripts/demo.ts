// `npm run demo`: the main job, on defaults. lodgerd with a policy protecting a real
// nginx (Debian) that serves steady load from hey, with a load spike in the middle;
// batch jobs in sandboxes, squeezed when nginx's p99 breaks its SLO and grown when there
// is room; a live view of `lodger status` (plain lines when not on a terminal); a
// summary at the end. Everything it starts it stops, by pid.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ServiceMonitor } from '../control/index.ts';
import { connect, renderStatus } from '../daemon/index.ts';
import { freePort, runHey, startNginx, type HeyResult, type Nginx } from '../bench/index.ts';

const root = join(import.meta.dirname, '..');
const dir = mkdtempSync(join(tmpdir(), 'lodger-demo-'));
const socket = join(dir, 'lodgerd.sock');
const tty = process.stdout.isTTY;
const say = (m: string): void => console.log(m);
const STEADY_RPS = 300;
const SPIKE_RPS = 1500;
const BATCH_SECONDS = 30;

let nginx: Nginx | null = null;
let daemon: ChildProcess | null = null;
const vmmPids = new Set<number>();

async function cleanup(): Promise<void> {
  if (daemon?.pid && daemon.exitCode === null) {
    daemon.kill('SIGTERM'); // onSigterm: stop-sandboxes in the demo's config
    await new Promise((r) => { daemon!.once('exit', r); setTimeout(r, 10_000); });
    if (daemon.exitCode === null) daemon.kill('SIGKILL');
  }
  for (const pid of vmmPids) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* stopped already */ }
  }
  await nginx?.stop();
}
process.on('SIGINT', () => { void cleanup().then(() => process.exit(130)); });

try {
  say('1/5 starting nginx (Debian) on loopback...');
  nginx = await startNginx(join(dir, 'nginx'), 8);
  // The SLO: twice what a probe sees with nginx alone, at least 5 ms.
  const probe = new ServiceMonitor({ name: 'web', source: 'demo', slo: { percentile: 99, targetMs: 1, windowMs: 3000 }, prometheus: null, cpus: null,
    probe: { kind: 'http', url: nginx.url, method: 'GET', intervalMs: 50, timeoutMs: 1000 } });
  probe.start();
  const alone = await runHey(nginx.url, 3, STEADY_RPS);
  const probeAlone = probe.observe().latencyMs ?? 2;
  probe.stop();
  const targetMs = Math.max(5, Math.round(2 * probeAlone));
  say(`    nginx alone at ${STEADY_RPS} req/s: p50 ${alone.p50Ms.toFixed(2)} ms, p99 ${alone.p99Ms.toFixed(2)} ms; SLO p99 <= ${targetMs} ms`);

  const policies = join(dir, 'policies');
  mkdirSync(policies);
  writeFileSync(join(policies, 'web.yaml'), [
    'apiVersion: lodger.dev/v1', 'kind: OnlineService', 'metadata: { name: web }', 'spec:',
    `  slo: { percentile: 99, target: ${targetMs}ms, window: 1s }`, `  probe: { http: { url: "${nginx.url}" }, interval: 100ms, timeout: 500ms }`,
  ].join('\n'));
  writeFileSync(join(policies, 'batch.yaml'), [
    'apiVersion: lodger.dev/v1', 'kind: BatchPool', 'metadata: { name: default }', 'spec:',
    // No CPU held back on this small host: the controller alone protects nginx.
    '  reserve: { cpus: 0, memory: 1Gi }', '  sandbox: { minVcpus: 1, maxVcpus: 2, minMemory: 256Mi, maxMemory: 1Gi }',
    '  knobs: [cpu.idle, cpuset, cpu.weight, pause]', '  growth: { cooldown: 3s, minSlack: 0.3, shrinkSlack: 0.1, memoryStep: 256Mi }',
  ].join('\n'));
  const metricsPort = await freePort();
  writeFileSync(join(dir, 'lodgerd.yaml'), [
    `stateDir: ${join(dir, 'state')}`, `socket: ${socket}`, `policyDir: ${policies}`, `metricsAddress: 127.0.0.1:${metricsPort}`,
    'onSigterm: stop-sandboxes', 'maxRunningJobs: 1',
  ].join('\n'));

  say('2/5 starting lodgerd...');
  let daemonLog = '';
  daemon = spawn(process.execPath, [join(root, 'bin', 'lodgerd.js'), '--config', join(dir, 'lodgerd.yaml')], { stdio: ['ignore', 'ignore', 'pipe'] });
  daemon.stderr!.on('data', (b) => {
    daemonLog += b;
    for (const m of String(b).matchAll(/pid (\d+)\)/g)) vmmPids.add(Number(m[1]));
  });
  for (let i = 0; i < 300 && !daemonLog.includes('listening on'); i++) await new Promise((r) => setTimeout(r, 100));
  if (!daemonLog.includes('listening on')) throw new Error(`lodgerd did not start:\n${daemonLog}`);
  say(`    ${daemonLog.split('\n').find((l) => l.includes('accelerator'))?.replace('lodgerd: ', '') ?? ''}`);
  say(`    metrics: http://127.0.0.1:${metricsPort}/metrics`);

  say('3/5 submitting two batch jobs (CPU-bound hashing, 1 vCPU, may grow to 2; one runs at a time)...');
  const api = connect(socket);
  const out = join(dir, 'output');
  const work = [
    'work() { n=0; end=$(( $(date +%s) + ' + BATCH_SECONDS + ' )); while [ $(date +%s) -lt $end ]; do head -c 65536 /dev/zero | md5sum >/dev/null; n=$((n+1)); done; echo $n > /tmp/w$1; }',
    'work 1 & work 2 & wait',
    'total=$(cat /tmp/w1 /tmp/w2 | awk \'{s+=$1} END {print s}\')',
    'echo "$total hashes of 64 KiB"; echo $total > $LODGER_OUTPUT/hashes.txt',
  ].join('\n');
  const ids: string[] = [];
  for (const n of [1, 2]) {
    const job = await api.call<{ id: string }>('SubmitJob', { id: `batch-${n}`, spec: { command: ['sh', '-c', work], vcpus: { min: 1, max: 2 }, outputDir: join(out, `batch-${n}`) } });
    ids.push(job.id);
  }

  say(`4/5 load: ${STEADY_RPS} req/s, a spike of ${SPIKE_RPS} req/s in the middle; live view (lodger status)...`);
  const phases: { name: string; r: HeyResult }[] = [];
  const load = (async () => {
    await new Promise((r) => setTimeout(r, 5000));
    phases.push({ name: `steady ${STEADY_RPS} req/s`, r: await runHey(nginx!.url, 12, STEADY_RPS) });
    phases.push({ name: `spike ${SPIKE_RPS} req/s`, r: await runHey(nginx!.url, 10, SPIKE_RPS) });
    phases.push({ name: `steady ${STEADY_RPS} req/s`, r: await runHey(nginx!.url, 15, STEADY_RPS) });
  })();
  let loadDone = false;
  void load.finally(() => { loadDone = true; });
  const started = Date.now();
  let lastDecisionAt = 0;
  for (;;) {
    const jobs = await api.call<{ jobs: { id: string; state: string }[] }>('ListJobs', { states: [], limit: 10 });
    const done = ids.every((id) => ['succeeded', 'failed', 'cancelled'].includes(jobs.jobs.find((j) => j.id === id)?.state ?? ''));
    const status = await api.call<Parameters<typeof renderStatus>[0]>('GetStatus', {});
    const t = Math.round((Date.now() - started) / 1000);
    if (tty) process.stdout.write(`\x1b[H\x1b[2J[demo t=${t}s, load: ${loadDone ? 'done' : 'hey running'}]\n${renderStatus(status)}\n`);
    else {
      const s = status.services[0];
      const sb = status.sandboxes.map((b) => `${b.jobId} ${b.state} ${b.vcpus}/${b.maxVcpus} vCPU`).join('; ') || 'no sandboxes';
      const fresh = status.decisions.filter((d) => d.atMs > lastDecisionAt);
      lastDecisionAt = Math.max(lastDecisionAt, ...status.decisions.map((d) => d.atMs));
      say(`    t=${String(t).padStart(3)}s  web p99 ${s?.hasP99 ? `${s.p99Ms.toFixed(2)} ms` : '-'} / ${targetMs} ms  |  ${sb}${fresh.length ? `  |  ${fresh.map((d) => d.reason).join('; ')}` : ''}`);
    }
    if (done && loadDone) break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  await load;

  say('5/5 summary');
  const final = await api.call<Parameters<typeof renderStatus>[0]>('GetStatus', {});
  for (const id of ids) {
    const j = await api.call<{ state: string; exitCode: number; transitions: { state: string; reason: string }[] }>('GetJob', { id });
    const hashes = (() => { try { return readFileSync(join(out, id, 'hashes.txt'), 'utf8').trim(); } catch { return '?'; } })();
    say(`    job ${id}: ${j.state} (exit ${j.exitCode}), ${hashes} hashes; output in ${join(out, id)}: ${readdirSync(join(out, id)).join(', ')}`);
  }
  say(`    nginx alone:           p99 ${alone.p99Ms.toFixed(2)} ms`);
  for (const p of phases) say(`    nginx, ${p.name.padEnd(16)} p99 ${p.r.p99Ms.toFixed(2)} ms (${p.r.rps.toFixed(0)} req/s served)`);
  say(`    controller decisions: ${final.decisions.length} recent, e.g.:`);
  for (const d of final.decisions.slice(-6)) say(`      ${d.reason}`);
  api.close();
} finally {
  await cleanup();
}
