// Loads the API definitions, and turns API requests into validated job specs. Shared by
// lodgerd's server and the CLI's client.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { JobSpec } from './store.ts';

const here = dirname(fileURLToPath(import.meta.url));

export function loadApi(): { lodger: grpc.GrpcObject; health: grpc.GrpcObject } {
  const opts: protoLoader.Options = { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true };
  const lodger = grpc.loadPackageDefinition(protoLoader.loadSync(join(here, 'lodger.proto'), opts));
  const health = grpc.loadPackageDefinition(protoLoader.loadSync(join(here, 'health.proto'), opts));
  return { lodger: (lodger.lodger as grpc.GrpcObject).v1 as grpc.GrpcObject, health: ((health.grpc as grpc.GrpcObject).health as grpc.GrpcObject).v1 as grpc.GrpcObject };
}

export class InvalidRequest extends Error {
  readonly code = 'INVALID_ARGUMENT';
}

export interface ApiJobSpec {
  name?: string;
  command?: string[];
  env?: Record<string, string>;
  rootfs?: string;
  outputDir?: string;
  vcpus?: { min?: number; max?: number } | null;
  memoryMib?: { min?: number; max?: number } | null;
  priority?: number;
  timeoutSeconds?: number;
  retries?: number;
  runtime?: string;
  image?: string;
  workdir?: string;
  user?: string;
  imageId?: string;
}

export interface ApiExecRequest {
  id?: string;
  command?: string[];
  env?: Record<string, string>;
  cwd?: string;
  hasUser?: boolean;
  uid?: number;
  gid?: number;
}

/** A command for ExecInJob, checked as a job's own would be; throws InvalidRequest with the reason. */
export function toExecRequest(r: ApiExecRequest): { argv: string[]; env: Record<string, string>; cwd?: string; user?: { uid: number; gid: number } } {
  const argv = r.command ?? [];
  if (!argv.length || argv[0] === '') throw new InvalidRequest('command must name a program');
  if (argv.length > 4096 || argv.reduce((n, a) => n + a.length, 0) > 256 * 1024) throw new InvalidRequest('command: at most 4096 arguments and 256 KiB');
  if (argv.some((c) => c.includes('\0'))) throw new InvalidRequest('command must not contain NUL bytes');
  checkEnv(r.env ?? {}, 'env');
  if (r.cwd && (!r.cwd.startsWith('/') || r.cwd.includes('\0'))) throw new InvalidRequest(`cwd must be an absolute path (got ${JSON.stringify(r.cwd)})`);
  return { argv, env: r.env ?? {}, ...(r.cwd ? { cwd: r.cwd } : {}), ...(r.hasUser ? { user: { uid: r.uid ?? 0, gid: r.gid ?? 0 } } : {}) };
}

function checkEnv(env: Record<string, string>, what: string): void {
  for (const [k, v] of Object.entries(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new InvalidRequest(`${what}: ${JSON.stringify(k)} is not a variable name`);
    if (v.includes('\0')) throw new InvalidRequest(`${what}: the value of ${k} contains a NUL byte`);
  }
}

const RUNTIMES = ['', 'auto', 'qemu', 'gvisor'] as const;

export const JOB_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

/** Checks an API job spec and fills its defaults; throws InvalidRequest with the reason. */
export function toJobSpec(s: ApiJobSpec | null | undefined): JobSpec {
  if (!s) throw new InvalidRequest('spec is required');
  const command = s.command ?? [];
  // With an image, the command may come from its config (checked when the image is read).
  if ((command.length === 0 && !s.image) || command[0] === '') throw new InvalidRequest('spec.command must name a program');
  if (command.some((c) => c.includes('\0'))) throw new InvalidRequest('spec.command must not contain NUL bytes');
  const vmin = s.vcpus?.min || 1;
  const vmax = s.vcpus?.max || vmin;
  if (vmax < vmin || vmax > 64) throw new InvalidRequest(`spec.vcpus ${vmin}:${vmax}: max must be >= min and <= 64`);
  const mmin = s.memoryMib?.min || 256;
  const mmax = s.memoryMib?.max || mmin;
  if (mmin < 128 || mmax < mmin) throw new InvalidRequest(`spec.memory ${mmin}:${mmax} MiB: min must be >= 128 and max >= min`);
  if ((mmax - mmin) % 2 !== 0) throw new InvalidRequest('spec.memory: max - min must be a multiple of 2 MiB');
  // A timer longer than 2^31 - 1 ms fires at once in Node: such a timeout would fail the job on start.
  if ((s.timeoutSeconds ?? 0) > 2_147_483) throw new InvalidRequest(`spec.timeout_seconds ${s.timeoutSeconds}: at most 2147483 (24 days)`);
  for (const [k, p] of [['rootfs', s.rootfs], ['output_dir', s.outputDir]] as const) {
    if (p && !p.startsWith('/')) throw new InvalidRequest(`spec.${k} must be an absolute path (got ${JSON.stringify(p)})`);
  }
  if (!(RUNTIMES as readonly string[]).includes(s.runtime ?? '')) throw new InvalidRequest(`spec.runtime ${JSON.stringify(s.runtime)}: one of auto, qemu, gvisor, or empty for lodgerd's default`);
  checkEnv(s.env ?? {}, 'spec.env');
  const image = imageFields(s);
  return {
    name: s.name || (command[0] ?? '').split('/').pop()!,
    command,
    env: s.env ?? {},
    rootfs: s.rootfs ?? '',
    outputDir: s.outputDir ?? '',
    vcpus: { min: vmin, max: vmax },
    memoryMiB: { min: mmin, max: mmax },
    priority: s.priority ?? 0,
    timeoutSeconds: s.timeoutSeconds ?? 0,
    retries: s.retries ?? 0,
    ...(s.runtime ? { runtime: s.runtime as JobSpec['runtime'] } : {}),
    ...image,
  };
}

/** The image fields, present only when set (a spec without them stays as it always was, so its digest does too). */
function imageFields(s: ApiJobSpec): Pick<JobSpec, 'image' | 'workdir' | 'user'> {
  const out: Pick<JobSpec, 'image' | 'workdir' | 'user'> = {};
  if (s.image) {
    if (s.image.includes('\0')) throw new InvalidRequest('spec.image must not contain NUL bytes');
    const path = /^(oci|oci-archive|docker-archive):/.test(s.image) ? s.image.slice(s.image.indexOf(':') + 1) : s.image;
    if (!path.startsWith('/')) throw new InvalidRequest(`spec.image must name an absolute path (got ${JSON.stringify(s.image)})`);
    if (s.rootfs) throw new InvalidRequest('spec.image and spec.rootfs exclude each other: the image is the job\'s root');
    out.image = s.image;
  }
  if (s.workdir) {
    if (!s.workdir.startsWith('/') || s.workdir.includes('\0')) throw new InvalidRequest(`spec.workdir must be an absolute path (got ${JSON.stringify(s.workdir)})`);
    out.workdir = s.workdir;
  }
  if (s.user) {
    if (!/^[A-Za-z0-9_.-]{1,64}(:[A-Za-z0-9_.-]{1,64})?$/.test(s.user)) throw new InvalidRequest(`spec.user ${JSON.stringify(s.user)}: uid[:gid] or user[:group] names`);
    out.user = s.user;
  }
  return out;
}
