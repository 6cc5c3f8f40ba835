// lodgerd: the job API, the scheduler, and the control loop that keeps every online
// service inside its SLO while batch sandboxes use the rest.
import { Command } from 'commander';
import { EventEmitter } from 'node:events';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, watch, type FSWatcher } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import {
  ControlLoop, defaultPool, FileStateStore, loadPolicyDir, ProcHostReader, ServiceMonitor, type Decision, type LoopSandbox, type PolicySet,
} from '../control/index.ts';
import { openRuntime } from '../sandbox-runtime/index.ts';
import { defaultConfigPath, loadConfig, type LodgerdConfig } from './config.ts';
import { Scheduler } from './scheduler.ts';
import { WarmPool } from './pool.ts';
import { Metrics } from './metrics.ts';
import { listen, listenTls, makeServer } from './server.ts';
import { JobStore, type JobRecord } from './store.ts';

const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
const log = (m: string): void => console.error(`lodgerd: ${m}`);

/** Used when no BatchPool policy is loaded: batch work may use all but one CPU. */
const DEFAULT_POOL = defaultPool('reserve: { cpus: 1, memory: 1Gi }, sandbox: { maxVcpus: 4, maxMemory: 4Gi }');

const program = new Command('lodgerd')
  .description('Lodger daemon: batch jobs in microVM sandboxes next to latency-critical services')
  .option('-c, --config <file>', 'config file', defaultConfigPath())
  .option('--state-dir <dir>', 'overrides stateDir')
  .option('--socket <path>', 'overrides socket')
  .option('--policy-dir <dir>', 'overrides policyDir')
  .option('--metrics-address <host:port>', 'overrides metricsAddress')
  .option('--tcp-address <host:port>', 'overrides tcpAddress (needs the tls* keys)')
  .parse(process.argv);
const flags = program.opts<{ config: string; stateDir?: string; socket?: string; policyDir?: string; metricsAddress?: string; tcpAddress?: string }>();

let cfg: LodgerdConfig;
try {
  cfg = loadConfig(flags.config, { stateDir: flags.stateDir, socket: flags.socket, policyDir: flags.policyDir, metricsAddress: flags.metricsAddress, tcpAddress: flags.tcpAddress });
} catch (e) {
  console.error(`lodgerd: ${(e as Error).message}`);
  process.exit(2);
}

mkdirSync(cfg.stateDir, { recursive: true });
const store = new JobStore(join(cfg.stateDir, 'jobs.db'));
const { runtime, accel, cgroups } = await openRuntime({
  host: { runDir: join(cfg.stateDir, 'run'), cacheDir: process.env.LODGER_CACHE_DIR },
  accel: cfg.accelerator, pvmGuestKernel: cfg.pvmGuestKernel, cgroupParent: cfg.cgroupParent,
  image: { kernel: cfg.guestKernel === 'minimal' ? undefined : cfg.guestKernel }, detachVmm: true, log,
});
log(`accelerator ${accel.accel}: ${accel.reason}`);

// Jobs a previous lodgerd left running are taken up again once the scheduler exists
// (below). One whose command was not sent yet, or whose sandbox cannot be found, has its
// VMM stopped (identified by QEMU's -name, never by pid alone): a job that was only
// starting is queued again; one whose command may have run is failed. Nothing runs twice.
const orphans = store.list(['starting', 'running', 'paused', 'suspended'], 100_000);
async function dropOrphan(job: JobRecord, why: string): Promise<void> {
  if (job.sandboxId) await runtime.shutdown(job.sandboxId).catch((e: unknown) => log(`sandbox ${job.sandboxId} not removed: ${(e as Error).message}`));
  if (job.state === 'starting') store.transition(job.id, 'queued', `lodgerd restarted while its sandbox started (${why}); queued again`, { attach: null });
  else store.transition(job.id, 'failed', `lodgerd restarted and could not take the job up again: ${why}`, { attach: null });
}

let policies: PolicySet = { services: [], pools: [] };
let loop: ControlLoop | null = null;
const maxRunning = (): number => cfg.maxRunningJobs || Math.max(1, availableParallelism() - (policies.pools[0]?.reserve.cpus ?? 1));
// Warm-pool sandboxes a previous lodgerd left hold no job: stop them.
for (const { id } of (await runtime.list()).filter((s) => s.id.startsWith('pool-'))) {
  if (orphans.some((j) => j.sandboxId === id)) continue; // a job's now, taken up below
  await runtime.shutdown(id).catch((e: unknown) => log(`warm sandbox ${id} of an earlier run not removed: ${(e as Error).message}`));
}
const pool = cfg.warmPoolSize > 0 ? new WarmPool({
  runtime, size: cfg.warmPoolSize, log,
  shape: () => {
    const p = policies.pools[0] ?? DEFAULT_POOL;
    return { maxVcpus: p.sandbox.maxVcpus, maxMemoryMiB: p.sandbox.maxMemoryMiB };
  },
}) : null;
const scheduler = new Scheduler({ store, runtime, maxRunning, pool, log });
for (const job of orphans) {
  if (typeof job.attach?.execId === 'number') scheduler.adopt(job);
  else await dropOrphan(job, job.state === 'starting' ? 'the command was not sent yet' : 'the command\'s id was not stored');
}
const metrics = cfg.metricsAddress ? new Metrics({ store, scheduler, policies: () => policies, loop: () => loop }) : null;

const loopEvents = new EventEmitter().setMaxListeners(0);
// One loop for the daemon's life: a reload swaps its policy and keeps the controller's
// state, which is also stored so that a restart keeps clamps and breach memory.
const parentCgroup = await cgroups?.openParent().catch((e: unknown) => { log(`pool cgroup not opened: ${(e as Error).message}; clamps go to each sandbox only`); return null; }) ?? null;
function controllerPolicy(): { services: PolicySet['services']; pool: typeof DEFAULT_POOL } {
  return { services: policies.services, pool: policies.pools[0] ?? DEFAULT_POOL };
}
function startLoop(): void {
  if (loop) {
    loop.setPolicy(controllerPolicy(), policies.services.map((s) => new ServiceMonitor(s)));
    return;
  }
  loop = new ControlLoop({
    policy: controllerPolicy(),
    monitors: policies.services.map((s) => new ServiceMonitor(s)),
    host: new ProcHostReader(),
    // Only sandboxes whose guest is up (or saved): one still booting cannot take knobs yet
    // (it has the pool's parent cgroup's clamp already).
    sandboxes: () => scheduler.sandboxes().map((x) => x.sandbox)
      .filter((sb) => ['running', 'paused', 'suspended'].includes(sb.status().state)) as unknown as LoopSandbox[],
    pool: parentCgroup ? { update: async (k) => (await parentCgroup.apply(k)).map((w) => `${w.file}=${w.value}`) } : null,
    store: new FileStateStore(join(cfg.stateDir, 'controller.json'), log),
  });
  loop.start();
  metrics?.watch(loop);
  loop.on('decision', (d: Decision) => {
    loopEvents.emit('decision', d);
    // Jobs' states follow what the controller did to their sandboxes.
    const to = { pause: 'paused', resume: 'running', suspend: 'suspended', restore: 'running' } as const;
    for (const res of d.results) {
      const k = res.action.kind;
      if (res.ok && (k === 'pause' || k === 'resume' || k === 'suspend' || k === 'restore')) scheduler.sandboxState(res.action.sandbox, to[k], res.action.reason);
    }
  });
  loop.on('reaction', (r) => loopEvents.emit('reaction', r));
  loop.on('warning', (e: Error) => log(`control loop: ${e.message}`));
}

async function reloadPolicies(why: string): Promise<void> {
  if (!existsSync(cfg.policyDir)) {
    log(`policy directory ${cfg.policyDir} does not exist: no online services are protected`);
  } else {
    try {
      policies = await loadPolicyDir(cfg.policyDir);
      log(`policies loaded (${why}): ${policies.services.map((s) => s.name).join(', ') || 'no services'}; pool ${policies.pools[0]?.name ?? 'built-in default'}`);
    } catch (e) {
      // An invalid file keeps the previous policy in force.
      log(`policy not reloaded (${why}): ${(e as Error).message}`);
      if (loop) return;
    }
  }
  startLoop();
}

await reloadPolicies('start');
let watcher: FSWatcher | null = null;
if (existsSync(cfg.policyDir)) {
  let pending: NodeJS.Timeout | null = null;
  watcher = watch(cfg.policyDir, () => {
    if (pending) clearTimeout(pending);
    pending = setTimeout(() => void reloadPolicies('changed on disk'), 200);
  });
}
process.on('SIGHUP', () => void reloadPolicies('SIGHUP'));

scheduler.start();
pool?.fill();
const server = makeServer({ store, scheduler, version: VERSION, accel, policies: () => policies, loop: () => loop, loopEvents });
await listen(server, cfg.socket, cfg.socketMode);
if (cfg.tcpAddress) {
  try {
    const port = await listenTls(server, cfg.tcpAddress, { cert: cfg.tlsCert, key: cfg.tlsKey, clientCa: cfg.tlsClientCa });
    log(`API also on ${cfg.tcpAddress.replace(/:\d+$/, `:${port}`)} (TCP, mutual TLS)`);
  } catch (e) {
    log(`API not served on ${cfg.tcpAddress}: ${(e as Error).message}`);
    process.exit(2);
  }
}
const metricsServer = metrics ? await metrics.listen(cfg.metricsAddress).catch((e: unknown) => {
  log(`metrics not served on ${cfg.metricsAddress}: ${(e as Error).message}`);
  return null;
}) : null;
log(`listening on ${cfg.socket}${metricsServer ? `; metrics on http://${cfg.metricsAddress}/metrics` : ''}; state in ${cfg.stateDir}`);
// Under systemd (Type=notify): ready now that the API listens.
if (process.env.NOTIFY_SOCKET) {
  spawn('systemd-notify', ['--ready', `--pid=${process.pid}`], { stdio: 'ignore' }).on('error', (e) => log(`systemd-notify: ${e.message}`));
}

let stopping = false;
async function shutdown(sig: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log(`${sig}: stopping (${cfg.onSigterm})`);
  watcher?.close();
  server.forceShutdown();
  metricsServer?.close();
  await loop?.stop();
  await pool?.stop();
  await scheduler.stop(cfg.onSigterm === 'stop-sandboxes');
  if (cfg.onSigterm === 'stop-sandboxes') await cgroups?.removeParents();
  store.close();
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));
