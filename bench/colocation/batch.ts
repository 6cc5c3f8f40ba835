// Batch work for the colocation benchmark: a CPU-bound job (two compress-and-hash loops)
// and a memory-hungry one (hashes slices of a 96 MiB buffer it keeps in guest RAM), each
// printing a line per work unit. Run either straight on the sandbox runtime (unmanaged,
// or pinned to a CPU set) or as jobs under a real lodgerd.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { connect, type ApiClient } from '../../daemon/index.ts';
import { openGvisorRuntime, openRuntime, type Backend, type Sandbox } from '../../sandbox-runtime/index.ts';
import { endLodgerd } from '../lodgerd.ts';

const CPU_LOOP = 'w(){ while :; do head -c 1048576 /dev/zero | gzip -1 | sha256sum >/dev/null; echo u; done; }; w & w & wait';
const MEM_LOOP = 'head -c 100663296 /dev/zero > /tmp/big; o=0; while :; do dd if=/tmp/big bs=1M skip=$o count=8 2>/dev/null | sha256sum >/dev/null; o=$(( (o + 8) % 88 )); echo m; done';

export const JOBS = [
  // The same shape under lodgerd as run directly: the comparison is about the host knobs.
  { name: 'cpu', command: ['sh', '-c', CPU_LOOP], vcpus: [2, 2] as const, memoryMiB: [256, 256] as const, unit: 'u' },
  { name: 'mem', command: ['sh', '-c', MEM_LOOP], vcpus: [1, 1] as const, memoryMiB: [384, 384] as const, unit: 'm' },
];

/** Work units (lines) as they arrive, per job. */
export class UnitLog {
  readonly at: Record<string, number[]> = { cpu: [], mem: [] };

  feed(job: string, chunk: Buffer): void {
    const unit = JOBS.find((j) => j.name === job)!.unit;
    const now = Date.now();
    for (const line of chunk.toString('utf8').split('\n')) if (line.trim() === unit) this.at[job]!.push(now);
  }

  /** Units per second of each job between two times. */
  rates(t0: number, t1: number): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [job, ts] of Object.entries(this.at)) out[job] = ts.filter((t) => t >= t0 && t < t1).length / ((t1 - t0) / 1000);
    return out;
  }
}

export interface Batch {
  units: UnitLog;
  /** vCPUs the batch sandboxes have now. */
  vcpus(): Promise<number>;
  stop(): Promise<void>;
}

export interface DirectBatch extends Batch {
  /** The fixed setting an operator would choose by hand: cpuset and cpu.idle. */
  set(knobs: { cpus: string; cpuIdle: boolean }): Promise<void>;
  /** Off (QMP stop: no CPU at all) while another scenario runs, and back on. */
  pause(): Promise<void>;
  resume(): Promise<void>;
}

/** The jobs on sandboxes of their full size, no daemon: unmanaged, or with fixed knobs. */
export async function startDirect(dir: string, tag: string, backend: Backend): Promise<DirectBatch> {
  const o = { host: { runDir: join(dir, `run-${tag}`) }, cgroupParent: `lodger-coloc-${process.pid}` };
  const { runtime, cgroups } = backend === 'gvisor' ? await openGvisorRuntime(o) : await openRuntime(o);
  const units = new UnitLog();
  const sandboxes: Sandbox[] = [];
  try {
    for (const j of JOBS) {
      const sb = await runtime.create({ id: `${tag}-${j.name}`, vcpus: j.vcpus[1], maxVcpus: j.vcpus[1], memoryMiB: j.memoryMiB[1], maxMemoryMiB: j.memoryMiB[1] });
      sandboxes.push(sb);
      await sb.start();
      const x = await sb.exec({ argv: j.command });
      x.onStdout((b) => units.feed(j.name, b));
      void x.wait().catch(() => {});
    }
  } catch (e) {
    await Promise.all(sandboxes.map((s) => s.stop({ graceMs: 0 }).catch(() => {})));
    await cgroups?.removeParents();
    throw e;
  }
  return {
    units,
    vcpus: async () => sandboxes.reduce((n, s) => n + s.status().vcpus, 0),
    // On the batch's parent cgroup as well: cpu.idle on the sandboxes' own groups alone
    // only ranks them against each other (v1 and v2 alike); it is the parent's that makes
    // batch yield to the rest of the host. The parent is widened first and narrowed last
    // (v1 refuses a parent cpuset narrower than a child's).
    set: async (knobs) => {
      const parent = await cgroups?.openParent();
      await parent?.apply({ cpus: `0-${cpus().length - 1}`, cpuIdle: knobs.cpuIdle });
      for (const s of sandboxes) await s.update({ cgroup: knobs });
      await parent?.apply({ cpus: knobs.cpus });
    },
    pause: async () => { for (const s of sandboxes) if (s.status().state === 'running') await s.pause(); },
    resume: async () => { for (const s of sandboxes) if (s.status().state === 'paused') await s.resume(); },
    stop: async () => {
      await Promise.all(sandboxes.map((s) => s.stop({ graceMs: 0 }).catch(() => {})));
      await cgroups?.removeParents();
    },
  };
}

export interface DaemonBatch extends Batch {
  /** Wall-clock times of clamps lodgerd applied (its WatchEvents 'reaction' events). */
  clamps: number[];
  /** lodgerd's decisions as they happened (WatchEvents 'decision'). */
  decisions: { at: number; reason: string }[];
  pid: number;
  /** The controller's stored state (level, order, breach memory). */
  controllerState(): { level: number; order: string[]; paused: boolean } | null;
  /** Why lodgerd's controller holds what it holds now (its latest round's reason). */
  reason(): Promise<string>;
  /** The sandboxes' cpuset as the kernel has it now. */
  cpusets(): string[];
  /** SIGSTOP / SIGCONT of lodgerd and its VMMs, by pid: nothing of them runs while another scenario does. */
  freeze(): void;
  thaw(): Promise<void>;
  /** Rewrites the online service's policy (lodgerd reloads it). */
  setPolicy(yaml: string): void;
  log(): string;
}

/** A real lodgerd with the service's policy; the jobs submitted to it through its API. */
export async function startDaemon(dir: string, tag: string, policyYaml: string, daemonCpus: string | null, backend: Backend): Promise<DaemonBatch> {
  const root = join(import.meta.dirname, '..', '..');
  const base = join(dir, `lodgerd-${tag}`);
  const policyDir = join(base, 'policies');
  mkdirSync(policyDir, { recursive: true });
  writeFileSync(join(policyDir, 'service.yaml'), policyYaml);
  const socket = join(base, 'lodgerd.sock');
  const config = join(base, 'lodgerd.yaml');
  // Both jobs at once; no warm sandbox idling next to the service; stop sandboxes on SIGTERM.
  writeFileSync(config, `warmPoolSize: 0\nmaxRunningJobs: 2\nonSigterm: stop-sandboxes\nmetricsAddress: ""\ncgroupParent: lodger-coloc-${process.pid}-d\nruntime: ${backend}\n`);
  let log = '';
  // lodgerd runs off the service's CPU, as a control plane on housekeeping CPUs should;
  // its sandboxes do not inherit that (their cgroup's cpuset places them).
  const cmd = [...(daemonCpus ? ['taskset', '-c', daemonCpus] : []), process.execPath, join(root, 'bin', 'lodgerd.js'), '--config', config, '--state-dir', join(base, 'state'), '--socket', socket, '--policy-dir', policyDir];
  const daemon: ChildProcess = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  daemon.stderr!.setEncoding('utf8').on('data', (b: string) => { log += b; });
  const vmmPids = (): number[] => [...log.matchAll(/pid (\d+)\)/g)].map((m) => Number(m[1]));
  // By pid what it logged, then by id what is left (a sandbox killed mid-boot was never logged).
  const kill = async (): Promise<void> => {
    const left = await endLodgerd(daemon, vmmPids(), ['--config', config, '--state-dir', join(base, 'state')]);
    if (/sandbox \S+ ended/.test(left)) console.error(`lodgerd-${tag} had left sandboxes, ended by id:\n${left}`);
  };
  let api: ApiClient | null = null;
  try {
    const deadline = Date.now() + 60_000;
    while (!log.includes(`listening on ${socket}`)) {
      if (daemon.exitCode !== null || Date.now() > deadline) throw new Error(`lodgerd did not start:\n${log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    api = connect(socket);
    const units = new UnitLog();
    const clamps: number[] = [];
    const decisions: { at: number; reason: string }[] = [];
    const events = api.stream('WatchEvents', {});
    events.on('data', (e: { kind?: string; atMs?: string | number; reason?: string }) => {
      if (e.kind === 'reaction') clamps.push(Number(e.atMs));
      if (e.kind === 'decision') decisions.push({ at: Number(e.atMs), reason: e.reason ?? '' });
    });
    events.on('error', () => {});
    for (const j of JOBS) {
      await api.call('SubmitJob', { id: `${tag}-${j.name}`, spec: { name: j.name, command: j.command, vcpus: { min: j.vcpus[0], max: j.vcpus[1] }, memoryMib: { min: j.memoryMiB[0], max: j.memoryMiB[1] } } });
    }
    for (const j of JOBS) {
      const logs = api.stream('StreamLogs', { id: `${tag}-${j.name}`, follow: true });
      logs.on('data', (c: { stream?: string; data?: Buffer }) => { if (c.stream === 'stdout' && c.data) units.feed(j.name, c.data); });
      logs.on('error', () => {});
    }
    // Both running before the load starts, and (unless lodgerd holds them back already)
    // past their start-up: the memory job fills its buffer first.
    const until = Date.now() + 120_000;
    for (;;) {
      const jobs = await Promise.all(JOBS.map((j) => api!.call<{ state: string }>('GetJob', { id: `${tag}-${j.name}` })));
      if (jobs.every((x) => x.state === 'running')) break;
      if (Date.now() > until) throw new Error(`batch jobs did not start under lodgerd:\n${log.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const settled = Date.now() + 20_000;
    while (!JOBS.every((j) => units.at[j.name]!.length > 0) && Date.now() < settled) await new Promise((r) => setTimeout(r, 200));
    const client = api;
    const live = (): number[] => vmmPids().filter((p) => existsSync(`/proc/${p}`));
    const signal = (pids: number[], sig: NodeJS.Signals): void => { for (const p of pids) { try { process.kill(p, sig); } catch { /* gone */ } } };
    return {
      units, clamps, decisions, pid: daemon.pid!,
      controllerState: () => {
        try {
          return JSON.parse(readFileSync(join(base, 'state', 'controller.json'), 'utf8')) as { level: number; order: string[]; paused: boolean };
        } catch {
          return null;
        }
      },
      reason: async () => (await client.call<{ controllerReason?: string }>('GetStatus', {}).catch(() => ({ controllerReason: '?' }))).controllerReason ?? '',
      cpusets: () => live().map((p) => {
        const line = readFileSync(`/proc/${p}/cgroup`, 'utf8').split('\n').find((l) => /:cpuset:|^0::/.test(l)) ?? '';
        const path = line.split(':').slice(2).join(':');
        const mount = line.includes(':cpuset:') ? '/sys/fs/cgroup/cpuset' : '/sys/fs/cgroup';
        try { return readFileSync(join(mount, path, 'cpuset.cpus'), 'utf8').trim(); } catch { return '?'; }
      }),
      // lodgerd stops first and comes back last: thawed, it must find its guests answering.
      // Guests stopped by SIGSTOP (not QMP stop, as the direct ones are) catch up on their
      // timers for a moment when continued: a burst no production lodgerd sees, so lodgerd
      // comes back 2 s after them (all of it inside its settle time, never measured).
      freeze: () => { signal([daemon.pid!], 'SIGSTOP'); signal(live(), 'SIGSTOP'); },
      thaw: async () => {
        signal(live(), 'SIGCONT');
        await new Promise((r) => setTimeout(r, 2000));
        signal([daemon.pid!], 'SIGCONT');
      },
      setPolicy: (yaml) => writeFileSync(join(policyDir, 'service.yaml'), yaml),
      log: () => log,
      vcpus: async () => {
        const st = await client.call<{ sandboxes?: { vcpus?: number }[] }>('GetStatus', {});
        return (st.sandboxes ?? []).reduce((n, s) => n + (s.vcpus ?? 0), 0);
      },
      stop: async () => {
        if (daemon.pid) signal([...live(), daemon.pid], 'SIGCONT');
        events.cancel();
        for (const j of JOBS) await client.call('CancelJob', { id: `${tag}-${j.name}` }).catch(() => {});
        client.close();
        daemon.kill('SIGTERM');
        const gone = new Promise((r) => daemon.once('exit', r));
        await Promise.race([gone, new Promise((r) => setTimeout(r, 15_000))]);
        await kill();
      },
    };
  } catch (e) {
    api?.close();
    await kill();
    throw e;
  }
}
