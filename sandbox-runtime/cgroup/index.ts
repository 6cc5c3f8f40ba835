// Thin cgroup module: one knob vocabulary (cgroup v2 semantics), a v2 backend and a v1
// backend that translate knobs into file writes. The shared Cgroup class skips writes
// that change nothing and reports the ones it made. Host paths are injected: unit tests
// run the v2 logic against a temp-dir tree, integration tests run v1 on the real kernel.
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SerialQueue } from '../../lib/index.ts';
import { SandboxError } from '../errors.ts';

export interface IoMax {
  /** "MAJ:MIN" of the block device. */
  device: string;
  rbps?: number;
  wbps?: number;
  riops?: number;
  wiops?: number;
}

/** Knobs in cgroup v2 units; `null` means "no limit". Absent means "leave as is". */
export interface CgroupKnobs {
  /** 1..10000, default 100 (v1: cpu.shares = weight × 1024 / 100). */
  cpuWeight?: number;
  /** SCHED_IDLE-like scheduling for the whole group (cpu.idle). */
  cpuIdle?: boolean;
  /** cpuset list such as "1" or "0-3"; "" means all of the parent's. */
  cpus?: string;
  cpuMax?: { quotaUs: number; periodUs: number } | null;
  memoryMaxBytes?: number | null;
  /** v2 memory.high; v1 has no equivalent and uses memory.soft_limit_in_bytes. */
  memoryHighBytes?: number | null;
  ioMax?: IoMax[];
  pidsMax?: number | null;
}

export interface KnobWrite {
  file: string;
  value: string;
}

export interface CgroupUsage {
  cpuUsageUsec: number;
  memoryBytes: number;
}

export type CgroupVersion = 1 | 2;

/** v1 hierarchies Lodger uses; each sandbox gets a directory in every one of them. */
export const V1_CONTROLLERS = ['cpu', 'cpuacct', 'cpuset', 'memory', 'blkio', 'pids'] as const;
const V2_CONTROLLERS = ['cpu', 'cpuset', 'memory', 'io', 'pids'];

export interface CgroupHost {
  /** Mount root: the v2 mount, or the tmpfs holding the v1 hierarchies. */
  root: string;
  /** /proc, to find the cgroup this process lives in. */
  proc: string;
}

export function detectCgroupVersion(root: string): CgroupVersion | null {
  if (existsSync(join(root, 'cgroup.controllers'))) return 2;
  if (existsSync(join(root, 'cpu', 'tasks')) || existsSync(join(root, 'cpu,cpuacct', 'tasks'))) return 1;
  return null;
}

/** This process's cgroup per v1 hierarchy (or under key "" for v2), from /proc/self/cgroup. */
export function ownCgroups(proc: string): Map<string, string> {
  const out = new Map<string, string>();
  let text = '';
  try {
    text = readFileSync(join(proc, 'self', 'cgroup'), 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n')) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line);
    if (!m) continue;
    for (const c of m[1]!.split(',')) out.set(c, m[2]!);
  }
  return out;
}

const fmtMax = (v: number | null | undefined): string => (v == null ? 'max' : String(Math.floor(v)));

/** The file writes for a set of knobs, in the order they must happen. */
export function knobWritesV2(k: CgroupKnobs): KnobWrite[] {
  const w: KnobWrite[] = [];
  if (k.cpuWeight !== undefined) w.push({ file: 'cpu.weight', value: String(clampWeight(k.cpuWeight)) });
  if (k.cpuIdle !== undefined) w.push({ file: 'cpu.idle', value: k.cpuIdle ? '1' : '0' });
  if (k.cpus !== undefined) w.push({ file: 'cpuset.cpus', value: k.cpus });
  if (k.cpuMax !== undefined) w.push({ file: 'cpu.max', value: k.cpuMax ? `${k.cpuMax.quotaUs} ${k.cpuMax.periodUs}` : 'max 100000' });
  if (k.memoryMaxBytes !== undefined) w.push({ file: 'memory.max', value: fmtMax(k.memoryMaxBytes) });
  if (k.memoryHighBytes !== undefined) w.push({ file: 'memory.high', value: fmtMax(k.memoryHighBytes) });
  for (const io of k.ioMax ?? []) {
    w.push({ file: 'io.max', value: `${io.device} rbps=${fmtMax(io.rbps)} wbps=${fmtMax(io.wbps)} riops=${fmtMax(io.riops)} wiops=${fmtMax(io.wiops)}` });
  }
  if (k.pidsMax !== undefined) w.push({ file: 'pids.max', value: fmtMax(k.pidsMax) });
  return w;
}

/** v1 paths are "<hierarchy>/<file>". */
export function knobWritesV1(k: CgroupKnobs): KnobWrite[] {
  const w: KnobWrite[] = [];
  // v2 weight 100 is v1 shares 1024; v1 shares bottom out at 2.
  if (k.cpuWeight !== undefined) w.push({ file: 'cpu/cpu.shares', value: String(Math.max(2, Math.round((clampWeight(k.cpuWeight) * 1024) / 100))) });
  if (k.cpuIdle !== undefined) w.push({ file: 'cpu/cpu.idle', value: k.cpuIdle ? '1' : '0' });
  if (k.cpus !== undefined) w.push({ file: 'cpuset/cpuset.cpus', value: k.cpus });
  if (k.cpuMax !== undefined) {
    w.push({ file: 'cpu/cpu.cfs_period_us', value: String(k.cpuMax?.periodUs ?? 100000) });
    w.push({ file: 'cpu/cpu.cfs_quota_us', value: String(k.cpuMax?.quotaUs ?? -1) });
  }
  const v1max = (v: number | null | undefined): string => (v == null ? '-1' : String(Math.floor(v)));
  if (k.memoryMaxBytes !== undefined) w.push({ file: 'memory/memory.limit_in_bytes', value: v1max(k.memoryMaxBytes) });
  if (k.memoryHighBytes !== undefined) w.push({ file: 'memory/memory.soft_limit_in_bytes', value: v1max(k.memoryHighBytes) });
  for (const io of k.ioMax ?? []) {
    // 0 removes a v1 throttle rule.
    w.push({ file: 'blkio/blkio.throttle.read_bps_device', value: `${io.device} ${io.rbps ?? 0}` });
    w.push({ file: 'blkio/blkio.throttle.write_bps_device', value: `${io.device} ${io.wbps ?? 0}` });
    w.push({ file: 'blkio/blkio.throttle.read_iops_device', value: `${io.device} ${io.riops ?? 0}` });
    w.push({ file: 'blkio/blkio.throttle.write_iops_device', value: `${io.device} ${io.wiops ?? 0}` });
  }
  if (k.pidsMax !== undefined) w.push({ file: 'pids/pids.max', value: fmtMax(k.pidsMax) });
  return w;
}

function clampWeight(w: number): number {
  return Math.min(10000, Math.max(1, Math.round(w)));
}

async function writeKnob(path: string, value: string): Promise<void> {
  try {
    await writeFile(path, value);
  } catch (e) {
    throw new SandboxError('CGROUP_ERROR', `writing "${value}" to ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/** A cached write older than this is checked against the kernel before it is skipped. */
const VERIFY_AFTER_MS = 10_000;
/** Files whose read-back can be compared with what was written (others stay cached). */
const VERIFIABLE = /(^|\/)(cpuset\.cpus|cpu\.idle|cpu\.shares|cpu\.weight)$/;
/** "0-2,5" and "0,1,2,5" are the same CPU list. */
const normalCpus = (v: string): string => v.trim().split(',').filter(Boolean).flatMap((p) => {
  const [a, b] = p.split('-').map(Number) as [number, number | undefined];
  return Array.from({ length: (b ?? a) - a + 1 }, (_, i) => a + i);
}).join(',');

export class Cgroup {
  /** Last value written per file and when: the actuator is the only writer, so equal means no-op... */
  private readonly last = new Map<string, string>();
  /** ...until it is old enough to be checked: someone else may have changed it (level-triggered control). */
  private readonly writtenAt = new Map<string, number>();

  constructor(
    readonly version: CgroupVersion,
    /** v2: the one directory; v1: hierarchy name -> directory. */
    readonly dirs: ReadonlyMap<string, string>,
    private readonly clock: () => number = Date.now,
  ) {}

  /** Files a process writes its pid into to join (one per v1 hierarchy). */
  get procsFiles(): string[] {
    return [...this.dirs.values()].map((d) => join(d, 'cgroup.procs'));
  }

  private resolve(file: string): string {
    if (this.version === 2) return join(this.dirs.get('')!, file);
    const [h, f] = file.split('/') as [string, string];
    const dir = this.dirs.get(h);
    if (!dir) throw new SandboxError('CGROUP_ERROR', `v1 hierarchy ${h} is not mounted`);
    return join(dir, f);
  }

  /** The weight last asked for, written or not (an idle group refuses it). */
  private desiredWeight: number | undefined;

  /** Applies knobs; returns the writes actually made (unchanged values are skipped). */
  async apply(knobs: CgroupKnobs): Promise<KnobWrite[]> {
    const idleFile = this.version === 2 ? 'cpu.idle' : 'cpu/cpu.idle';
    const weightFile = this.version === 2 ? 'cpu.weight' : 'cpu/cpu.shares';
    const k = { ...knobs };
    // v1 has no "inherit" value: an empty write changes nothing, so "" means the parent's CPUs.
    if (this.version === 1 && k.cpus === '') k.cpus = (await readFile(join(this.resolve('cpuset/cpuset.cpus'), '..', '..', 'cpuset.cpus'), 'utf8')).trim();
    if (k.cpuWeight !== undefined) this.desiredWeight = k.cpuWeight;
    const idleChanges = k.cpuIdle !== undefined && this.last.get(idleFile) !== (k.cpuIdle ? '1' : '0');
    const willBeIdle = k.cpuIdle ?? this.last.get(idleFile) === '1';
    // Changing cpu.idle resets the weight in the kernel (to the idle weight, or back to
    // the default, not to ours), and an idle group refuses weight writes with EINVAL.
    if (idleChanges) this.last.delete(weightFile);
    if (willBeIdle) delete k.cpuWeight;
    else if (idleChanges && this.desiredWeight !== undefined) k.cpuWeight = this.desiredWeight;
    const all = this.version === 2 ? knobWritesV2(k) : knobWritesV1(k);
    const writes = [...all.filter((w) => w.file === idleFile), ...all.filter((w) => w.file !== idleFile)];
    const done: KnobWrite[] = [];
    for (const w of writes) {
      // io rules are per device: key the cache by the device too.
      const key = w.file.includes('io') ? `${w.file} ${w.value.split(' ')[0]}` : w.file;
      if (this.last.get(key) === w.value && !(await this.drifted(key, w))) continue;
      await writeKnob(this.resolve(w.file), w.value);
      this.last.set(key, w.value);
      this.writtenAt.set(key, this.clock());
      done.push(w);
    }
    return done;
  }

  /** True when a cached value is due for a check and the kernel holds something else. */
  private async drifted(key: string, w: KnobWrite): Promise<boolean> {
    if (!VERIFIABLE.test(w.file) || this.clock() - (this.writtenAt.get(key) ?? 0) < VERIFY_AFTER_MS) return false;
    const now = await this.readKnob(w.file).catch(() => null);
    this.writtenAt.set(key, this.clock());
    if (now === null) return false;
    return w.file.endsWith('cpuset.cpus') ? normalCpus(now) !== normalCpus(w.value) : now !== w.value;
  }

  async readKnob(file: string): Promise<string> {
    return (await readFile(this.resolve(file), 'utf8')).trim();
  }

  /** Every process in the group (the first hierarchy is authoritative). */
  async pids(): Promise<number[]> {
    const first = [...this.dirs.values()][0]!;
    const text = await readFile(join(first, 'cgroup.procs'), 'utf8').catch(() => '');
    return text.split('\n').filter(Boolean).map(Number);
  }

  async usage(): Promise<CgroupUsage> {
    if (this.version === 2) {
      const stat = await readFile(this.resolve('cpu.stat'), 'utf8').catch(() => '');
      const m = /usage_usec (\d+)/.exec(stat);
      const mem = await readFile(this.resolve('memory.current'), 'utf8').catch(() => '0');
      return { cpuUsageUsec: m ? Number(m[1]) : 0, memoryBytes: Number(mem.trim()) || 0 };
    }
    const ns = await readFile(this.resolve('cpuacct/cpuacct.usage'), 'utf8').catch(() => '0');
    const mem = await readFile(this.resolve('memory/memory.usage_in_bytes'), 'utf8').catch(() => '0');
    return { cpuUsageUsec: Math.floor(Number(ns.trim()) / 1000) || 0, memoryBytes: Number(mem.trim()) || 0 };
  }

  /** Kills what is left inside, then removes the directories. */
  async destroy(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (const pid of await this.pids()) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
    }
    for (const dir of [...this.dirs.values()].reverse()) {
      for (;;) {
        try {
          await rmdir(dir);
          break;
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          if (code === 'ENOENT') break;
          // EBUSY: a killed task has not finished exiting yet.
          if (code !== 'EBUSY' || Date.now() > deadline) throw new SandboxError('CGROUP_ERROR', `removing ${dir}: ${(e as Error).message}`, { cause: e });
          await new Promise((r) => setTimeout(r, 10));
        }
      }
    }
  }
}

export interface CgroupManagerOptions {
  host: CgroupHost;
  /** Parent of the sandbox groups, relative to this process's own cgroup. Default "lodger". */
  parent?: string;
  /** Force a version (tests); default: detect. */
  version?: CgroupVersion;
}

/** Creates and opens sandbox cgroups below `<own cgroup>/<parent>` in every hierarchy. */
export class CgroupManager {
  readonly version: CgroupVersion;
  private readonly parentDirs: Map<string, string>;

  constructor(private readonly opts: CgroupManagerOptions) {
    const v = opts.version ?? detectCgroupVersion(opts.host.root);
    if (!v) throw new SandboxError('CGROUP_ERROR', `no cgroup filesystem found at ${opts.host.root}`);
    this.version = v;
    const own = ownCgroups(opts.host.proc);
    const parent = opts.parent ?? 'lodger';
    this.parentDirs = new Map();
    if (v === 2) {
      this.parentDirs.set('', join(opts.host.root, own.get('') ?? '/', parent));
    } else {
      for (const c of V1_CONTROLLERS) {
        const mount = join(opts.host.root, c);
        if (existsSync(mount)) this.parentDirs.set(c, join(mount, own.get(c) ?? '/', parent));
      }
    }
  }

  get parents(): ReadonlyMap<string, string> {
    return this.parentDirs;
  }

  /** Null when this process may create the sandbox groups, else why not. */
  whyNotWritable(): string | null {
    for (const dir of this.parentDirs.values()) {
      let d = dir;
      while (!existsSync(d)) d = join(d, '..');
      try {
        accessSync(d, constants.W_OK);
      } catch {
        return `${d} is not writable by this user (run as root, or under systemd with Delegate=yes)`;
      }
    }
    return null;
  }

  private async ensureDir(hierarchy: string, dir: string): Promise<void> {
    if (existsSync(dir)) return;
    const up = join(dir, '..');
    if (!existsSync(up)) await this.ensureDir(hierarchy, up);
    await mkdir(dir);
    // A new v1 cpuset is empty and refuses tasks until given the parent's CPUs and nodes.
    if (this.version === 1 && hierarchy === 'cpuset') {
      for (const f of ['cpuset.cpus', 'cpuset.mems']) {
        const v = (await readFile(join(up, f), 'utf8')).trim();
        if (!(await readFile(join(dir, f), 'utf8')).trim()) await writeKnob(join(dir, f), v);
      }
    }
  }

  /** v2: controllers must be enabled in every ancestor's subtree_control. */
  private async enableV2Controllers(dir: string): Promise<void> {
    const root = this.opts.host.root;
    const chain: string[] = [];
    for (let d = join(dir, '..'); d.startsWith(root) && d.length >= root.length; d = join(d, '..')) {
      chain.unshift(d);
      if (d === root) break;
    }
    for (const d of chain) {
      const avail = (await readFile(join(d, 'cgroup.controllers'), 'utf8').catch(() => '')).split(/\s+/);
      const enabled = (await readFile(join(d, 'cgroup.subtree_control'), 'utf8').catch(() => '')).split(/\s+/);
      const want = V2_CONTROLLERS.filter((c) => avail.includes(c) && !enabled.includes(c));
      if (want.length) await writeKnob(join(d, 'cgroup.subtree_control'), want.map((c) => `+${c}`).join(' '));
    }
  }

  /** create() calls run one at a time. */
  private readonly creating = new SerialQueue();

  create(name: string): Promise<Cgroup> {
    // Two sandboxes starting together would race on the shared parent: the second could
    // see it before the first copied a v1 cpuset's CPUs into it, and inherit none.
    return this.creating.run(() => this.createNow(name));
  }

  private async createNow(name: string): Promise<Cgroup> {
    if (!/^[A-Za-z0-9_.-]+$/.test(name)) throw new SandboxError('CGROUP_ERROR', `bad cgroup name ${JSON.stringify(name)}`);
    const dirs = new Map<string, string>();
    for (const [h, parent] of this.parentDirs) {
      await this.ensureDir(h, parent);
      const dir = join(parent, name);
      await this.ensureDir(h, dir);
      dirs.set(h, dir);
    }
    if (this.version === 2) await this.enableV2Controllers(dirs.get('')!);
    return new Cgroup(this.version, dirs);
  }

  /**
   * The parent of the sandbox groups, created if missing. Knobs set here hold for every
   * sandbox below it, also one that is still booting (pool-wide clamps).
   */
  async openParent(): Promise<Cgroup> {
    for (const [h, dir] of this.parentDirs) await this.ensureDir(h, dir);
    return new Cgroup(this.version, this.parentDirs);
  }

  /** Removes the parent directories if no sandbox group is left in them. */
  async removeParents(): Promise<void> {
    for (const dir of this.parentDirs.values()) {
      await rmdir(dir).catch(() => {});
    }
  }

  /** An existing group (after a daemon restart), or null. */
  open(name: string): Cgroup | null {
    const dirs = new Map<string, string>();
    for (const [h, parent] of this.parentDirs) dirs.set(h, join(parent, name));
    return [...dirs.values()].every((d) => existsSync(d)) ? new Cgroup(this.version, dirs) : null;
  }
}
