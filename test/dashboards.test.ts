// The Grafana dashboard against real parts: a real Prometheus (Debian) scrapes a running
// lodgerd that protects a service, grows a job's sandbox and clamps it on a breach; then
// every panel's PromQL is evaluated through Prometheus' HTTP API and must return data.
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../bench/index.ts';

const root = join(import.meta.dirname, '..');
const procs: ChildProcess[] = [];
const vmmPids = new Set<number>();
let server: http.Server | null = null;

test.after.always(async () => {
  for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
  for (const pid of vmmPids) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
  server?.close();
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => Promise<boolean> | boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

function cli(socket: string, args: string[]): Promise<string> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [join(root, 'bin', 'lodger.js'), '--socket', socket, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    c.stdout.on('data', (b) => { out += b; });
    c.on('close', () => resolve(out));
  });
}

test.serial('every dashboard panel returns data from a real Prometheus scraping lodgerd', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lodger-dash-'));
  let delay = 1;
  server = http.createServer((_q, res) => setTimeout(() => res.end('ok'), delay));
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  const svcPort = (server.address() as AddressInfo).port;

  const policies = join(dir, 'policies');
  mkdirSync(policies);
  writeFileSync(join(policies, 'svc.yaml'), `apiVersion: lodger.dev/v1
kind: OnlineService
metadata: { name: svc }
spec:
  slo: { percentile: 99, target: 50ms, window: 500ms }
  probe: { http: { url: "http://127.0.0.1:${svcPort}/" }, interval: 50ms, timeout: 1s }
---
apiVersion: lodger.dev/v1
kind: BatchPool
metadata: { name: default }
spec:
  reserve: { cpus: 0, memory: 0 }
  sandbox: { minVcpus: 1, maxVcpus: 2, maxMemory: 512Mi }
  growth: { cooldown: 1s, minSlack: 0.3, shrinkSlack: 0.1 }
`);
  const metricsPort = await freePort();
  const promPort = await freePort();
  const socket = join(dir, 'lodgerd.sock');
  writeFileSync(join(dir, 'lodgerd.yaml'), `stateDir: ${join(dir, 'state')}\nsocket: ${socket}\npolicyDir: ${policies}\nmetricsAddress: 127.0.0.1:${metricsPort}\nonSigterm: stop-sandboxes\nmaxRunningJobs: 2\n`);
  writeFileSync(join(dir, 'prometheus.yml'), `global: { scrape_interval: 1s, evaluation_interval: 1s }\nscrape_configs:\n  - job_name: lodgerd\n    static_configs: [{ targets: ['127.0.0.1:${metricsPort}'] }]\n`);

  const prom = spawn('prometheus', [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${promPort}`], { stdio: 'ignore' });
  procs.push(prom);
  let log = '';
  const daemon = spawn(process.execPath, [join(root, 'bin', 'lodgerd.js'), '--config', join(dir, 'lodgerd.yaml')], { stdio: ['ignore', 'ignore', 'pipe'] });
  procs.push(daemon);
  daemon.stderr!.on('data', (b) => {
    log += b;
    for (const m of String(b).matchAll(/pid (\d+)\)/g)) vmmPids.add(Number(m[1]));
  });
  await until('lodgerd', () => log.includes('listening on'), 30_000);
  await until('prometheus', () => fetch(`http://127.0.0.1:${promPort}/-/ready`).then((r) => r.ok, () => false), 30_000);

  // Prometheus must have scraped lodgerd before anything happens, or it sees no increase.
  await until('a first scrape', () => fetch(`http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent('up{job="lodgerd"} == 1')}`)
    .then((r) => r.json() as Promise<{ data: { result: unknown[] } }>).then((b) => b.data.result.length > 0, () => false), 30_000);
  // A job that ends (job counters), and one that runs long enough to be grown and squeezed.
  await cli(socket, ['submit', '--id', 'quick', '--', 'true']);
  await cli(socket, ['submit', '--id', 'long', '--vcpus', '1:2', '--', 'sh', '-c', 'while :; do :; done']);
  const status = async (): Promise<{ sandboxes: { jobId: string; vcpus: number }[] }> => JSON.parse(await cli(socket, ['status', '--json']));
  await until('the long job to grow to 2 vCPUs', async () => (await status()).sandboxes.some((s) => s.jobId === 'long' && s.vcpus === 2), 60_000);
  delay = 150; // breach: the controller clamps the sandbox
  await until('a clamp', () => fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text()).then((m) => /lodger_reaction_seconds_count [1-9]/.test(m)), 30_000);
  delay = 1;
  await sleep(4000); // a few scrapes after the events

  const dash = JSON.parse(readFileSync(join(root, 'dashboards', 'lodger.json'), 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[] };
  const empty: string[] = [];
  let checked = 0;
  for (const p of dash.panels) {
    for (const { expr } of p.targets) {
      const r = await fetch(`http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(expr)}`);
      const body = await r.json() as { status: string; data: { result: { value: [number, string] }[] }; error?: string };
      t.is(body.status, 'success', `${p.title}: ${expr}: ${body.error}`);
      const values = body.data.result.map((x) => x.value[1]);
      if (values.length === 0 || values.every((v) => v === 'NaN')) empty.push(`${p.title}: ${expr}`);
      checked++;
    }
  }
  t.log(`${checked} panel queries evaluated by Prometheus`);
  t.deepEqual(empty, [], 'panels without data');
  await cli(socket, ['cancel', 'long']);
  daemon.kill('SIGTERM');
  await new Promise((r) => { daemon.once('exit', r); setTimeout(r, 10_000); });
});
