// An OCI bundle as a Lodger job: config.json's process (args, env, cwd, user) and root,
// and the rootfs mounts containerd hands to Create. Parsing is pure; mounting runs mount(8).
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import type { ApiJobSpec } from '../api.ts';

/** A bundle that cannot run as a Lodger job; the message says why. */
export class BundleError extends Error {
  readonly code = 'SHIM_BAD_BUNDLE';
}

export interface Mount {
  type: string;
  source: string;
  target?: string;
  options: string[];
}

export interface BundleJob {
  spec: ApiJobSpec & { command: string[]; rootfs: string };
  /** What of config.json Lodger does not carry out, for the shim's log. */
  ignored: string[];
  /** CRI's pod sandbox (pause) container: it only holds the pod's namespaces, which a Lodger pod has none of. */
  podSandbox: boolean;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const MIB = 1024 * 1024;

interface OciConfig {
  process?: { args?: unknown; env?: unknown; cwd?: unknown; terminal?: unknown; user?: { uid?: unknown; gid?: unknown; additionalGids?: unknown } };
  root?: { path?: unknown; readonly?: unknown };
  annotations?: Record<string, unknown>;
  mounts?: unknown[];
  linux?: { resources?: { memory?: { limit?: unknown }; cpu?: { quota?: unknown; period?: unknown } } };
}

type OciProcess = NonNullable<OciConfig['process']>;

/** args, env, cwd and user of an OCI process (a bundle's, or an exec's); `what` names it in errors. */
function processFields(p: OciProcess, ignored: string[], what: string): { args: string[]; env: Record<string, string>; cwd: string; uid: number; gid: number } {
  const args = p.args;
  if (!Array.isArray(args) || args.length === 0 || !args.every((a) => typeof a === 'string') || args[0] === '') throw new BundleError(`${what}.args must name a program`);
  const env: Record<string, string> = {};
  for (const e of Array.isArray(p.env) ? p.env : []) {
    if (typeof e !== 'string') continue;
    const eq = e.indexOf('=');
    const k = eq < 0 ? e : e.slice(0, eq);
    if (!ENV_NAME.test(k) || e.includes('\0')) {
      ignored.push(`env ${JSON.stringify(k)} (not a variable name Lodger passes)`);
      continue;
    }
    env[k] = eq < 0 ? '' : e.slice(eq + 1);
  }
  const cwd = typeof p.cwd === 'string' && p.cwd ? p.cwd : '/';
  if (!cwd.startsWith('/')) throw new BundleError(`${what}.cwd must be absolute (got ${JSON.stringify(cwd)})`);
  const uid = Number(p.user?.uid ?? 0);
  const gid = Number(p.user?.gid ?? 0);
  if (!Number.isInteger(uid) || uid < 0 || uid > 0xffffffff || !Number.isInteger(gid) || gid < 0 || gid > 0xffffffff) throw new BundleError(`${what}.user uid and gid must be non-negative integers`);
  return { args: args as string[], env, cwd, uid, gid };
}

/** An exec's process (containerd sends the OCI Process as JSON in an Any) as an ExecInJob request; at most 1 MiB of it is read. */
export function execFromSpec(spec: { typeUrl?: string; value?: Buffer } | null | undefined, ignored: string[]): { command: string[]; env: Record<string, string>; cwd: string; hasUser: boolean; uid: number; gid: number } {
  const value = spec?.value;
  if (!value?.length) throw new BundleError('the exec has no process spec');
  if (value.length > MIB) throw new BundleError(`the exec's process spec is ${value.length} bytes (at most ${MIB})`);
  let p: unknown;
  try {
    p = JSON.parse(value.toString('utf8'));
  } catch (e) {
    throw new BundleError(`the exec's process spec is not JSON: ${(e as Error).message}`);
  }
  if (typeof p !== 'object' || p === null) throw new BundleError('the exec\'s process spec is not a JSON object');
  if ((p as OciProcess).terminal === true) throw new BundleError('a terminal (exec -t) is not supported by the Lodger shim');
  const f = processFields(p as OciProcess, ignored, 'exec process');
  return { command: f.args, env: f.env, cwd: f.cwd, hasUser: true, uid: f.uid, gid: f.gid };
}

/** The job a bundle's config.json describes (its root: the bundle's root directory). */
export function jobFromConfig(config: unknown, bundle: string, name: string): BundleJob {
  if (typeof config !== 'object' || config === null) throw new BundleError('config.json is not a JSON object');
  const c = config as OciConfig;
  const ignored: string[] = [];
  const p = c.process;
  if (!p) throw new BundleError('config.json has no process');
  if (p.terminal === true) throw new BundleError('a terminal (ctr run -t, tty: true) is not supported by the Lodger shim');
  const { args, env, cwd, uid, gid } = processFields(p, ignored, 'config.json process');
  const gids = p.user?.additionalGids;
  if (Array.isArray(gids) && gids.length) ignored.push('process.user.additionalGids');
  if (Array.isArray(c.mounts) && c.mounts.length) ignored.push(`${c.mounts.length} mounts (the job sees its root only)`);
  const podSandbox = c.annotations?.['io.kubernetes.cri.container-type'] === 'sandbox';
  const rootPath = typeof c.root?.path === 'string' && c.root.path ? c.root.path : 'rootfs';
  const rootfs = isAbsolute(rootPath) ? rootPath : join(bundle, rootPath);
  return { spec: { name, command: args, env, workdir: cwd, user: `${uid}:${gid}`, rootfs, ...sizes(c, ignored) }, ignored, podSandbox };
}

/**
 * The sandbox's size: the memory limit as its fixed size, the CPU quota as its most
 * vCPUs. Without limits the controller may grow it from 1 vCPU / 256 MiB to 2 / 512.
 */
function sizes(c: OciConfig, ignored: string[]): Pick<ApiJobSpec, 'vcpus' | 'memoryMib'> {
  const r = c.linux?.resources;
  const limit = Number(r?.memory?.limit ?? 0);
  let memoryMib = { min: 256, max: 512 };
  if (limit > 0) {
    const mib = Math.floor(limit / MIB / 2) * 2; // lodgerd sizes in 2 MiB steps
    if (mib < 128) ignored.push(`memory limit ${limit} bytes (below Lodger's 128 MiB sandbox: 128 MiB used)`);
    memoryMib = { min: Math.max(128, mib), max: Math.max(128, mib) };
  }
  const quota = Number(r?.cpu?.quota ?? 0);
  const period = Number(r?.cpu?.period ?? 0) || 100_000;
  const vcpus = { min: 1, max: quota > 0 ? Math.min(64, Math.max(1, Math.ceil(quota / period))) : 2 };
  return { vcpus, memoryMib };
}

export function readBundleJob(bundle: string, name: string): BundleJob {
  let text: string;
  try {
    text = readFileSync(join(bundle, 'config.json'), 'utf8');
  } catch (e) {
    throw new BundleError(`${bundle}/config.json: ${(e as Error).message}`);
  }
  let config: unknown;
  try {
    config = JSON.parse(text);
  } catch (e) {
    throw new BundleError(`${bundle}/config.json: ${(e as Error).message}`);
  }
  return jobFromConfig(config, bundle, name);
}

/** A job id lodgerd accepts, from containerd's namespace and id, unique per run (ids are reused). */
export function jobIdFor(namespace: string, id: string): string {
  const base = `${namespace}.${id}`.replace(/[^A-Za-z0-9_.-]/g, '_').replace(/^[^A-Za-z0-9]/, 'c').slice(0, 50);
  return `${base}-${randomBytes(4).toString('hex')}`;
}

/** mount(8)'s arguments for a containerd mount (overlay, bind, ...). */
export function mountArgs(m: Mount, target: string): string[] {
  const opts = m.options.filter(Boolean);
  if (opts.some((o) => o.includes(','))) throw new BundleError(`mount option with a comma: ${JSON.stringify(opts)}`);
  const bind = m.type === 'bind' || opts.includes('bind') || opts.includes('rbind');
  if (m.type === 'bind' && !opts.includes('bind') && !opts.includes('rbind')) opts.unshift('bind');
  return [...(bind || !m.type ? [] : ['-t', m.type]), ...(opts.length ? ['-o', opts.join(',')] : []), m.source, target];
}

/** Whether `target` is a mount point now (/proc/self/mountinfo, octal escapes undone). */
export function isMounted(target: string, mountinfo = '/proc/self/mountinfo'): boolean {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return readFileSync(mountinfo, 'utf8').split('\n').some((l) => unescape(l.split(' ')[4] ?? '') === target);
}

export function mountAll(mounts: Mount[], target: string): void {
  for (const m of mounts) {
    const r = spawnSync('mount', mountArgs(m, target), { encoding: 'utf8', timeout: 30_000 });
    if (r.status !== 0) throw new BundleError(`mount ${m.type} ${m.source} on ${target}: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`);
  }
}

/** Unmounts everything stacked on `target`; returns what could not be undone. */
export function unmountAll(target: string): string | null {
  for (let i = 0; i < 16 && isMounted(target); i++) {
    const r = spawnSync('umount', [target], { encoding: 'utf8', timeout: 30_000 });
    if (r.status !== 0) return `umount ${target}: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`;
  }
  return isMounted(target) ? `${target} is still mounted after 16 unmounts` : null;
}
