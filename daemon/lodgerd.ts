// lodgerd as one object: the job API, the scheduler, the warm pool and the control loop
// that keeps every online service inside its SLO while batch sandboxes use the rest.
// start() opens the parts in order and takes up what an earlier lodgerd left; stop()
// ends them in reverse. The runtime and the host reader are injected, so the whole
// daemon runs on the fake runtime in unit tests.
import type * as grpc from '@grpc/grpc-js';
import { EventEmitter } from 'node:events';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync } from 'node:fs';
import type { Server as HttpServer } from 'node:http';
import { cpus } from 'node:os';
import { join } from 'node:path';
import {
  ControlLoop, FileStateStore, loadPolicyDir, ProcHostReader, ServiceMonitor, type ActuatedPool, type BatchPoolPolicy, type ControllerPolicy, type Decision,
  type HostReader, type KnobSettings, type LoopSandbox, type PolicySet,
} from '../control/index.ts';
import {
  chooseBackend, ImageCache, MultiRuntime, openGvisorRuntime, openRuntime, type Accelerator, type Backend, type BackendEntry, type RuntimeRequest, type CgroupKnobs, type CgroupManager, type Sandbox, type SandboxRuntime,
} from '../sandbox-runtime/index.ts';
import type { LodgerdConfig } from './config.ts';
import { DEFAULT_POOL } from './default-pool.ts';
import { jobStateChanges } from './job-states.ts';
import { Metrics } from './metrics.ts';
import { WarmPool } from './pool.ts';
import { Scheduler } from './scheduler.ts';
import { listen, listenTls, makeServer } from './server.ts';
import { JobStore, type JobRecord } from './store.ts';
import { watchSettled, type Watcher } from './watch.ts';

/** What start() needs of a sandbox runtime: the runtime, why it runs on its accelerator, and the sandboxes' parent cgroup. */
export interface OpenedRuntime {
  runtime: SandboxRuntime;
  accel: { accel: Accelerator; reason: string };
  /** The parent of the sandbox cgroups: pool-wide clamps go there; removed on a stop that stops the sandboxes. */
  cgroups: Pick<CgroupManager, 'openParent' | 'removeParents'> | null;
}

export interface LodgerdOptions {
  config: LodgerdConfig;
  /** Default: QEMU sandboxes as the config says (openRuntime). */
  openRuntime?: (cfg: LodgerdConfig, log: (m: string) => void) => Promise<OpenedRuntime>;
  /** Host signals for the control loop; default /proc. */
  hostReader?: HostReader;
  log?: (m: string) => void;
  version?: string;
}

export class LodgerdError extends Error {
  constructor(readonly code: 'LODGERD_LISTEN_FAILED' | 'LODGERD_NOT_STARTED' | 'LODGERD_MEMORY_BUDGET', message: string, opts?: { cause?: unknown }) {
    super(message, opts);
    this.name = 'LodgerdError';
  }
}

const PACKAGE_VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

// Compile-time check: every knob control decides is one the runtime's cgroup applies, with
// the same type (a renamed or retyped knob on either side fails the type check here).
export const knobsFit = (k: Required<KnobSettings>): Pick<Required<CgroupKnobs>, keyof KnobSettings> => k satisfies Pick<Required<CgroupKnobs>, keyof KnobSettings>;

/**
 * Only lodgerd reads its state: a VMM that left its jail, under its own uid, finds nothing
 * here. The directory is 0711, not 0700, so that a gVisor sandbox's uid can pass through to
 * its own run directory (gvisor/jail.ts), as containerd's state directories are for user
 * namespaces; it cannot list it, and everything in it but that run directory is 0700/0600.
 */
export function lockStateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o711 });
  chmodSync(dir, 0o711);
  for (const d of ['run', 'images']) mkdirSync(join(dir, d), { recursive: true, mode: 0o700 });
  // SQLite gives its -wal file the database's mode: the database is made 0600 before it opens it.
  closeSync(openSync(join(dir, 'jobs.db'), 'a', 0o600));
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name === 'run-gvisor') continue;
    chmodSync(join(dir, e.name), e.isDirectory() ? 0o700 : 0o600);
  }
}

/** Each backend's run directory under the state directory (QEMU's is the one lodgerd always had). */
const runDirOf = (cfg: LodgerdConfig, b: Backend): string => join(cfg.stateDir, b === 'qemu' ? 'run' : `run-${b}`);

async function openBackend(cfg: LodgerdConfig, b: Backend, log: (m: string) => void): Promise<OpenedRuntime & { accel: { accel: Accelerator; reason: string } }> {
  const host = { runDir: runDirOf(cfg, b), cacheDir: process.env.LODGER_CACHE_DIR };
  if (b === 'gvisor') {
    const { runtime, cgroups } = await openGvisorRuntime({ host, cgroupParent: cfg.cgroupParent, log, jail: cfg.jail ? { uidBase: cfg.jailUidBase, uidCount: cfg.jailUidCount } : false });
    return { runtime, accel: { accel: runtime.accel, reason: 'gVisor (runsc)' }, cgroups };
  }
  const { runtime, accel, cgroups } = await openRuntime({
    host, accel: cfg.accelerator, pvmGuestKernel: cfg.pvmGuestKernel, cgroupParent: cfg.cgroupParent,
    image: { kernel: cfg.guestKernel === 'minimal' ? undefined : cfg.guestKernel }, detachVmm: true, log,
    jail: cfg.jail ? { uidBase: cfg.jailUidBase, uidCount: cfg.jailUidCount } : false,
  });
  return { runtime, accel, cgroups };
}

/**
 * The configured backend (`runtime`; auto decides per host, with its reason in the log),
 * opened now; the other backend is opened when a job first asks for it.
 */
async function configuredRuntime(cfg: LodgerdConfig, log: (m: string) => void): Promise<OpenedRuntime> {
  const choice = await chooseBackend(cfg.runtime, { accel: cfg.accelerator, pvmGuestKernel: cfg.pvmGuestKernel });
  log(`runtime ${choice.backend}: ${choice.reason}`);
  const first = await openBackend(cfg, choice.backend, log);
  const entry = (b: Backend): BackendEntry => ({ runDir: runDirOf(cfg, b), open: async () => (await openBackend(cfg, b, log)).runtime });
  const runtime = new MultiRuntime(first.runtime, { qemu: entry('qemu'), gvisor: entry('gvisor') });
  return { runtime, accel: choice.backend === 'gvisor' ? { accel: first.accel.accel, reason: choice.reason } : first.accel, cgroups: first.cgroups };
}

/**
 * Ends every sandbox a stopped lodgerd left in its state directory (a stop keeps job
 * sandboxes for a restart on purpose): for a lodgerd that is not coming back, or a test
 * that killed one. Holds the job store's lock while it runs, so a live lodgerd's
 * sandboxes are refused (STORE_LOCKED); the jobs are left as they are, and a later start
 * fails those whose sandbox is gone, their stored output kept. Returns the ids ended.
 */
export async function endLeftSandboxes(cfg: LodgerdConfig, log: (m: string) => void): Promise<string[]> {
  lockStateDir(cfg.stateDir);
  const store = new JobStore(join(cfg.stateDir, 'jobs.db'));
  try {
    const { runtime } = await configuredRuntime(cfg, log);
    const ids = (await runtime.list()).map((s) => s.id);
    for (const id of ids) {
      await runtime.shutdown(id);
      log(`sandbox ${id} ended`);
    }
    return ids;
  } finally {
    store.close();
  }
}

/** The parts start() opens, in that order. */
interface Parts {
  store: JobStore;
  rt: OpenedRuntime;
  pool: WarmPool | null;
  scheduler: Scheduler;
  metrics: Metrics | null;
}

export class Lodgerd {
  readonly config: LodgerdConfig;
  /** Re-emits the control loop's 'decision' and 'reaction' events. */
  readonly loopEvents = new EventEmitter().setMaxListeners(0);
  private readonly log: (m: string) => void;
  private policySet: PolicySet = { services: [], pools: [] };
  private loop: ControlLoop | null = null;
  private p: Parts | null = null;
  private server: grpc.Server | null = null;
  private metricsServer: HttpServer | null = null;
  private watcher: Watcher | null = null;
  private stopping: Promise<void> | null = null;

  constructor(private readonly o: LodgerdOptions) {
    this.config = o.config;
    this.log = o.log ?? ((m) => console.error(`lodgerd: ${m}`));
  }

  get policies(): PolicySet {
    return this.policySet;
  }

  get controlLoop(): ControlLoop | null {
    return this.loop;
  }

  get scheduler(): Scheduler {
    return this.parts().scheduler;
  }

  get store(): JobStore {
    return this.parts().store;
  }

  private parts(): Parts {
    if (!this.p) throw new LodgerdError('LODGERD_NOT_STARTED', 'lodgerd is not started');
    return this.p;
  }

  private autoBackend: Promise<Backend> | null = null;

  /**
   * A job's runtime request as a backend: '' is the pool policy's `runtime`, else lodgerd's
   * default; auto is this host's choice (probed once).
   */
  private resolveRuntime(requested: RuntimeRequest | ''): Promise<Backend> {
    if (requested === '') requested = this.batchPool().runtime ?? '';
    if (requested === 'qemu' || requested === 'gvisor') return Promise.resolve(requested);
    if (requested === '') return Promise.resolve(this.parts().rt.runtime.backend);
    const cfg = this.config;
    this.autoBackend ??= chooseBackend('auto', { accel: cfg.accelerator, pvmGuestKernel: cfg.pvmGuestKernel }).then((c) => {
      this.log(`runtime auto for jobs: ${c.backend}: ${c.reason}`);
      return c.backend;
    });
    return this.autoBackend;
  }

  /** The batch pool in force: the policy's, else the built-in default. */
  batchPool(): BatchPoolPolicy {
    return this.policySet.pools[0] ?? DEFAULT_POOL;
  }

  async start(): Promise<void> {
    const cfg = this.config;
    const log = this.log;
    lockStateDir(cfg.stateDir);
    const store = new JobStore(join(cfg.stateDir, 'jobs.db'));
    const rt = await (this.o.openRuntime ?? configuredRuntime)(cfg, log);
    log(`accelerator ${rt.accel.accel}: ${rt.accel.reason}`);
    const pool = cfg.warmPoolSize > 0 ? new WarmPool({
      runtime: rt.runtime, size: cfg.warmPoolSize, log,
      shape: () => ({ maxVcpus: this.batchPool().sandbox.maxVcpus, maxMemoryMiB: this.batchPool().sandbox.maxMemoryMiB }),
    }) : null;
    const maxRunning = (): number => cfg.maxRunningJobs || Math.max(1, cpus().length - this.batchPool().reserve.cpus);
    // Image roots under the state directory; QEMU attaches the ext4 image packed from each.
    const images = ImageCache.open({ dir: join(cfg.stateDir, 'images'), maxBytes: cfg.imageCacheMaxBytes, ext4: rt.runtime.backend === 'qemu', log });
    const scheduler = new Scheduler({ store, runtime: rt.runtime, maxRunning, pool, log, logLimitBytes: cfg.jobLogMaxBytes, images });
    const metrics = cfg.metricsAddress ? new Metrics({ store, scheduler, policies: () => this.policySet, loop: () => this.loop }) : null;
    this.p = { store, rt, pool, scheduler, metrics };
    await this.recoverOrphans();

    await this.reload('start');
    if (existsSync(cfg.policyDir)) this.watcher = watchSettled(cfg.policyDir, 200, () => void this.reload('changed on disk'));

    scheduler.start();
    pool?.fill();
    const server = makeServer({
      store, scheduler, version: this.o.version ?? PACKAGE_VERSION, accel: rt.accel, policies: () => this.policySet, loop: () => this.loop, loopEvents: this.loopEvents,
      shutdown: (drain) => void this.shutdown(drain), images, resolveRuntime: (r) => this.resolveRuntime(r), defaultBackend: rt.runtime.backend,
    });
    this.server = server;
    await listen(server, cfg.socket, cfg.socketMode);
    if (cfg.tcpAddress) {
      try {
        const port = await listenTls(server, cfg.tcpAddress, { cert: cfg.tlsCert, key: cfg.tlsKey, clientCa: cfg.tlsClientCa });
        log(`API also on ${cfg.tcpAddress.replace(/:\d+$/, `:${port}`)} (TCP, mutual TLS)`);
      } catch (e) {
        throw new LodgerdError('LODGERD_LISTEN_FAILED', `API not served on ${cfg.tcpAddress}: ${(e as Error).message}`, { cause: e });
      }
    }
    this.metricsServer = metrics ? await metrics.listen(cfg.metricsAddress).catch((e: unknown) => {
      log(`metrics not served on ${cfg.metricsAddress}: ${(e as Error).message}`);
      return null;
    }) : null;
    log(`listening on ${cfg.socket}${this.metricsServer ? `; metrics on http://${cfg.metricsAddress}/metrics` : ''}; state in ${cfg.stateDir}`);
  }

  // ---- Orphan recovery: what a previous lodgerd left behind. --------------------------
  // Jobs it left running are taken up again. One whose command was not sent yet, or whose
  // sandbox cannot be found, has its VMM stopped (identified by QEMU's -name, never by pid
  // alone): a job that was only starting is queued again; one whose command may have run
  // is failed. Nothing runs twice. Warm-pool sandboxes it left hold no job: they are stopped.
  private async recoverOrphans(): Promise<void> {
    const { store, scheduler, rt: { runtime } } = this.parts();
    const log = this.log;
    const orphans = store.list(['starting', 'running', 'paused', 'suspended'], 100_000);
    const dropOrphan = async (job: JobRecord, why: string): Promise<void> => {
      if (job.sandboxId) await runtime.shutdown(job.sandboxId).catch((e: unknown) => log(`sandbox ${job.sandboxId} not removed: ${(e as Error).message}`));
      if (job.state === 'starting') store.transition(job.id, 'queued', `lodgerd restarted while its sandbox started (${why}); queued again`, { attach: null });
      else store.transition(job.id, 'failed', `lodgerd restarted and could not take the job up again: ${why}`, { attach: null });
    };
    // Warm-pool sandboxes, and any sandbox no job of the store holds (its records were
    // removed with the state directory: the runtime still finds its VMM in /proc).
    for (const { id } of await runtime.list()) {
      if (orphans.some((j) => j.sandboxId === id)) continue; // a job's, taken up below
      await runtime.shutdown(id).catch((e: unknown) => log(`sandbox ${id} of an earlier run not removed: ${(e as Error).message}`));
    }
    for (const job of orphans) {
      if (typeof job.attach?.execId === 'number') scheduler.adopt(job);
      else await dropOrphan(job, job.state === 'starting' ? 'the command was not sent yet' : 'the command\'s id was not stored');
    }
  }
  // ---- end of orphan recovery ----------------------------------------------------------

  /**
   * Reads the policy folder again and hands it to the control loop (on start, on a change
   * on disk, on SIGHUP); the loop keeps its state. An invalid file keeps the previous policy.
   */
  async reload(why: string): Promise<void> {
    const cfg = this.config;
    if (this.stopping || !this.p) return; // a SIGHUP before start() has nothing to reload yet
    if (!existsSync(cfg.policyDir)) {
      this.log(`policy directory ${cfg.policyDir} does not exist: no online services are protected`);
    } else {
      try {
        this.policySet = await loadPolicyDir(cfg.policyDir);
        this.log(`policies loaded (${why}): ${this.policySet.services.map((s) => s.name).join(', ') || 'no services'}; pool ${this.policySet.pools[0]?.name ?? 'built-in default'}`);
      } catch (e) {
        this.log(`policy not reloaded (${why}): ${(e as Error).message}`);
        if (this.loop) return;
      }
    }
    await this.startLoop();
  }

  /** Only sandboxes whose guest is up (or saved): one still booting cannot take knobs yet. */
  private loopSandboxes(): LoopSandbox[] {
    const live: Sandbox[] = this.parts().scheduler.sandboxes().map((x) => x.sandbox)
      .filter((sb) => ['running', 'paused', 'suspended'].includes(sb.status().state));
    return live satisfies LoopSandbox[];
  }

  private controllerPolicy(): ControllerPolicy {
    return { services: this.policySet.services, pool: this.batchPool() };
  }

  /** The pool's parent cgroup as the actuator sees it, or null where there are no cgroups. */
  private async poolTarget(): Promise<ActuatedPool | null> {
    const parent = await this.parts().rt.cgroups?.openParent().catch((e: unknown) => {
      this.log(`pool cgroup not opened: ${(e as Error).message}; clamps go to each sandbox only`);
      return null;
    });
    return parent ? { update: async (k) => (await parent.apply(k)).map((w) => `${w.file}=${w.value}`) } : null;
  }

  /** One loop for the daemon's life: a reload swaps its policy, its state stays (and is stored, for a restart). */
  private async startLoop(): Promise<void> {
    if (this.loop) {
      this.loop.setPolicy(this.controllerPolicy(), this.policySet.services.map((s) => new ServiceMonitor(s)));
      return;
    }
    const { scheduler, metrics } = this.parts();
    const host = this.o.hostReader ?? new ProcHostReader('/proc', undefined, { cgroup: this.config.memoryBudgetCgroup });
    // A memory budget that cannot be read is a configuration error, found at start.
    await host.read().catch((e: unknown) => { throw new LodgerdError('LODGERD_MEMORY_BUDGET', `memoryBudgetCgroup ${this.config.memoryBudgetCgroup}: ${(e as Error).message}`, { cause: e }); });
    const loop = new ControlLoop({
      policy: this.controllerPolicy(),
      monitors: this.policySet.services.map((s) => new ServiceMonitor(s)),
      host,
      sandboxes: () => this.loopSandboxes(),
      pool: await this.poolTarget(),
      store: new FileStateStore(join(this.config.stateDir, 'controller.json'), this.log),
    });
    this.loop = loop;
    loop.start();
    metrics?.watch(loop);
    loop.on('decision', (d: Decision) => {
      this.loopEvents.emit('decision', d);
      for (const c of jobStateChanges(d)) scheduler.sandboxState(c.sandbox, c.state, c.reason);
    });
    loop.on('reaction', (r) => this.loopEvents.emit('reaction', r));
    loop.on('warning', (e: Error) => this.log(`control loop: ${e.message}`));
  }

  /**
   * Ends everything start() began. The warm pool's sandboxes (they hold no job) are always
   * stopped; job sandboxes keep running for the next start unless the config says
   * stop-sandboxes or `all` is given (lodger shutdown). Idempotent.
   */
  stop(all = false): Promise<void> {
    this.stopping ??= (async () => {
      this.watcher?.close();
      this.server?.forceShutdown();
      this.metricsServer?.close();
      await this.loop?.stop();
      if (!this.p) return;
      const stopSandboxes = all || this.config.onSigterm === 'stop-sandboxes';
      await this.p.pool?.stop();
      await this.p.scheduler.stop(stopSandboxes, all ? 'stopped by lodger shutdown' : 'lodgerd stopped with its sandboxes (onSigterm: stop-sandboxes)');
      if (stopSandboxes) await this.p.rt.cgroups?.removeParents();
      this.p.store.close();
    })();
    return this.stopping;
  }

  /** `lodger shutdown [--drain]`: stops everything, then emits 'exit' (main.ts exits). With drain, running jobs end first and no new one starts. */
  async shutdown(drain: boolean): Promise<void> {
    this.log(`shutdown requested${drain ? ' (drain: waiting for running jobs)' : ''}`);
    this.p?.pool?.stop().catch(() => {});
    if (drain) await this.p?.scheduler.drain();
    await this.stop(true);
    this.log('shut down: no sandbox, cgroup or pool VMM left');
    this.loopEvents.emit('exit');
  }
}
