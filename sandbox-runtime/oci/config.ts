// What a job from an image runs: the image config's Entrypoint + Cmd, Env, WorkingDir and
// User, each overridden by the job's own (a command given replaces Cmd and keeps the
// Entrypoint, as `docker run IMAGE CMD` does). A user name is looked up in the image's
// own /etc/passwd and /etc/group, read inside the root (never through a link out of it).
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError } from './errors.ts';
import type { ImageRunConfig } from './image.ts';
import { entryComponents, resolveInRoot } from './paths.ts';

export interface RunOverrides {
  command?: string[];
  env?: Record<string, string>;
  workdir?: string;
  user?: string;
}

export interface RunSettings {
  argv: string[];
  env: Record<string, string>;
  workdir: string;
  /** As the image or job wrote it (`uid`, `uid:gid`, `name`, `name:group`); '' for root. */
  user: string;
}

export function runSettings(cfg: ImageRunConfig, o: RunOverrides, what: string): RunSettings {
  const entry = cfg.Entrypoint ?? [];
  const argv = o.command?.length ? [...entry, ...o.command] : [...entry, ...(cfg.Cmd ?? [])];
  if (!argv.length) throw new ImageError('IMAGE_BAD_CONFIG', `${what}: the image sets no Entrypoint or Cmd: give the job a command`);
  const env: Record<string, string> = {};
  for (const kv of cfg.Env ?? []) {
    const i = kv.indexOf('=');
    if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  Object.assign(env, o.env ?? {});
  const workdir = o.workdir || cfg.WorkingDir || '/';
  if (!workdir.startsWith('/')) throw new ImageError('IMAGE_BAD_CONFIG', `${what}: working directory ${JSON.stringify(workdir)} is not absolute`);
  return { argv, env, workdir, user: o.user || cfg.User || '' };
}

/** Reads a small regular file of the root, resolved inside it; null when it is not there. */
function readInRoot(root: string, path: string): string | null {
  const parts = entryComponents(path);
  let at: ReturnType<typeof resolveInRoot>;
  try {
    at = resolveInRoot(root, parts, path);
  } catch {
    return null; // a link loop, or a way out of the root: not the image's file
  }
  const { dir, missingFrom } = at;
  if (missingFrom !== null) return null;
  let fd: number;
  try {
    fd = openSync(join(root, ...dir, parts[parts.length - 1]!), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return null;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size > 4 << 20) return null;
    const buf = Buffer.alloc(st.size);
    const n = readSync(fd, buf, 0, buf.length, 0);
    return buf.subarray(0, n).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

const table = (text: string | null): string[][] => (text ?? '').split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(':'));
const ID = /^\d{1,10}$/;

/** The numeric uid and gid of `user` in the image at `root`; null for root with no user set. */
export function resolveUser(root: string, user: string, what: string): { uid: number; gid: number } | null {
  if (!user) return null;
  const [u, g] = user.split(':', 2) as [string, string | undefined];
  const passwd = table(readInRoot(root, '/etc/passwd'));
  let uid: number;
  let gid: number | undefined;
  if (ID.test(u)) {
    uid = Number(u);
    const row = passwd.find((r) => r[2] === u);
    gid = row && ID.test(row[3] ?? '') ? Number(row[3]) : 0;
  } else {
    const row = passwd.find((r) => r[0] === u);
    if (!row || !ID.test(row[2] ?? '') || !ID.test(row[3] ?? '')) throw new ImageError('IMAGE_BAD_CONFIG', `${what}: user ${JSON.stringify(u)} is not in the image's /etc/passwd`);
    uid = Number(row[2]);
    gid = Number(row[3]);
  }
  if (g !== undefined && g !== '') {
    if (ID.test(g)) gid = Number(g);
    else {
      const row = table(readInRoot(root, '/etc/group')).find((r) => r[0] === g);
      if (!row || !ID.test(row[2] ?? '')) throw new ImageError('IMAGE_BAD_CONFIG', `${what}: group ${JSON.stringify(g)} is not in the image's /etc/group`);
      gid = Number(row[2]);
    }
  }
  if (uid > 0xfffffffe || gid > 0xfffffffe) throw new ImageError('IMAGE_BAD_CONFIG', `${what}: user ${JSON.stringify(user)}: id out of range`);
  return { uid, gid };
}
