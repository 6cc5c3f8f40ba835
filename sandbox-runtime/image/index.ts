// Builds the guest image: a kernel (the Debian cloud kernel unless one is configured)
// and an initramfs holding the static agent as /init, busybox, and the virtio modules
// in dependency order. Images are cached under a hash of their inputs, so a rebuild
// happens only when the kernel, modules, busybox, agent source or this builder change.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { SandboxError } from '../errors.ts';
import type { HostPaths } from '../host.ts';
import { S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, writeCpio, type CpioEntry } from './cpio.ts';

// Also the image folder's door: the cpio writer (benches build initramfs variants) and the minimal kernel build.
export { S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, writeCpio, type CpioEntry } from './cpio.ts';
export { ensureMinimalKernel } from './kernel.ts';
import { builtMinimalKernel } from './kernel.ts';
import { extractPvhKernel } from './pvh.ts';

const run = promisify(execFile);
const BUILDER_VERSION = 4; // bump when the image layout changes
export const AGENT_SOURCE = join(dirname(fileURLToPath(import.meta.url)), '..', 'guest', 'agent.c');

/** Modules the guest needs, by name; their dependencies are added from modules.dep. */
export const GUEST_MODULES = ['virtio_pci', 'virtio_console', 'virtio_blk', 'virtio_mem', 'virtio_balloon'];

export interface ImageOptions {
  /**
   * Kernel image (bzImage or PVH vmlinux), or 'minimal' (Lodger's own, built by setup
   * from linux-source), or 'debian' (the newest cloud kernel in /boot). Default: the
   * minimal kernel when it is built, else Debian's.
   */
  kernel?: string;
  /** Module tree for that kernel; absent means the kernel has what it needs built in. */
  modulesDir?: string;
  busybox?: string;
  /** Boot an uncompressed vmlinux through PVH when the kernel carries one (default true). */
  pvh?: boolean;
}

export interface GuestImage {
  /** What QEMU boots: the PVH vmlinux extracted into the image, or the kernel as given. */
  kernel: string;
  /** The kernel as configured. */
  kernelSource: string;
  pvh: boolean;
  initramfs: string;
  hash: string;
  kernelVersion: string | null;
  modules: string[];
  bytes: number;
}

function fileId(p: string): string {
  const s = statSync(p);
  return `${p}:${s.size}:${s.mtimeMs}`;
}

/** The newest `vmlinuz-*-cloud-amd64` (else any vmlinuz) in the boot dir. */
export function findDefaultKernel(host: HostPaths): { kernel: string; version: string } | null {
  if (!existsSync(host.boot)) return null;
  const names = readdirSync(host.boot).filter((n) => n.startsWith('vmlinuz-'));
  const cloud = names.filter((n) => n.includes('cloud'));
  const pick = (cloud.length ? cloud : names).sort((a, b) => a.localeCompare(b, undefined, { numeric: true })).at(-1);
  return pick ? { kernel: join(host.boot, pick), version: pick.slice('vmlinuz-'.length) } : null;
}

/** Names -> module files in load order (dependencies first), from modules.dep. */
export function resolveModules(modulesDir: string, wanted: string[]): string[] {
  const dep = new Map<string, string[]>();
  for (const line of readFileSync(join(modulesDir, 'modules.dep'), 'utf8').split('\n')) {
    const [file, deps] = line.split(':');
    if (!file) continue;
    dep.set(file, (deps ?? '').trim().split(/\s+/).filter(Boolean));
  }
  const byName = new Map<string, string>();
  for (const file of dep.keys()) byName.set(basename(file).replace(/\.ko(\..*)?$/, '').replace(/-/g, '_'), file);
  const builtin = existsSync(join(modulesDir, 'modules.builtin'))
    ? new Set(readFileSync(join(modulesDir, 'modules.builtin'), 'utf8').split('\n').map((f) => basename(f).replace(/\.ko$/, '').replace(/-/g, '_')))
    : new Set<string>();
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (file: string): void => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const d of dep.get(file) ?? []) visit(d);
    order.push(file);
  };
  for (const name of wanted) {
    const file = byName.get(name);
    if (file) visit(file);
    else if (!builtin.has(name)) throw new SandboxError('IMAGE_BUILD_FAILED', `module ${name} is neither in ${modulesDir}/modules.dep nor built in`);
  }
  return order;
}

export interface ImageInputs {
  pvh: boolean;
  kernel: string;
  kernelVersion: string | null;
  modulesDir: string | null;
  busybox: string;
}

export function resolveInputs(host: HostPaths, opts: ImageOptions = {}): ImageInputs {
  let kernel = opts.kernel;
  let version: string | null = null;
  if (kernel === 'minimal' || kernel === undefined) {
    const built = builtMinimalKernel(host);
    if (built) kernel = built;
    else if (kernel === 'minimal') throw new SandboxError('IMAGE_BUILD_FAILED', 'the minimal guest kernel is not built: install linux-source-6.1 and run `npm run setup`');
    else kernel = undefined;
  }
  if (!kernel || kernel === 'debian') {
    const found = findDefaultKernel(host);
    if (!found) throw new SandboxError('IMAGE_BUILD_FAILED', `no guest kernel in ${host.boot}: install linux-image-cloud-amd64 or configure one`);
    kernel = found.kernel;
    version = found.version;
  }
  let modulesDir = opts.modulesDir ?? (version ? join(host.modules, version) : null);
  if (modulesDir && !existsSync(join(modulesDir, 'modules.dep'))) modulesDir = null;
  const busybox = opts.busybox ?? '/bin/busybox';
  for (const p of [kernel, busybox]) {
    if (!existsSync(p)) throw new SandboxError('IMAGE_BUILD_FAILED', `${p} is missing`);
  }
  return { kernel, kernelVersion: version, modulesDir, busybox, pvh: opts.pvh ?? true };
}

export function imageHash(inputs: ImageInputs): string {
  const h = createHash('sha256');
  h.update(`builder:${BUILDER_VERSION} pvh:${inputs.pvh}\n`);
  h.update(readFileSync(AGENT_SOURCE));
  h.update(fileId(inputs.kernel));
  h.update(fileId(inputs.busybox));
  if (inputs.modulesDir) h.update(fileId(join(inputs.modulesDir, 'modules.dep')));
  return h.digest('hex').slice(0, 16);
}

/** Returns the cached image for these inputs, building it first if needed. */
export async function ensureGuestImage(host: HostPaths, opts: ImageOptions = {}, log: (m: string) => void = () => {}): Promise<GuestImage> {
  const inputs = resolveInputs(host, opts);
  const hash = imageHash(inputs);
  const dir = join(host.cacheDir, 'images', hash);
  const manifest = join(dir, 'manifest.json');
  if (existsSync(manifest)) return JSON.parse(await readFile(manifest, 'utf8')) as GuestImage;

  log(`building guest image ${hash} (kernel ${inputs.kernel})`);
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    const agent = join(tmp, 'lodger-agent');
    await run('gcc', ['-static', '-O2', '-Wall', '-o', agent, AGENT_SOURCE]).catch((e: unknown) => {
      throw new SandboxError('IMAGE_BUILD_FAILED', `compiling the guest agent failed: ${(e as { stderr?: string }).stderr ?? e}`, { cause: e });
    });
    const modules = inputs.modulesDir ? resolveModules(inputs.modulesDir, GUEST_MODULES) : [];
    const entries: CpioEntry[] = [];
    const dirs = new Set<string>();
    const addDir = (d: string): void => {
      if (!d || d === '.' || dirs.has(d)) return;
      addDir(dirname(d));
      dirs.add(d);
      entries.push({ name: d, mode: S_IFDIR | 0o755 });
    };
    for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'tmp', 'root', 'output', 'etc/lodger']) addDir(d);
    entries.push({ name: 'dev/console', mode: S_IFCHR | 0o600, rdevMajor: 5, rdevMinor: 1 });
    entries.push({ name: 'dev/null', mode: S_IFCHR | 0o666, rdevMajor: 1, rdevMinor: 3 });
    entries.push({ name: 'init', mode: S_IFREG | 0o755, data: await readFile(agent) });
    entries.push({ name: 'bin/busybox', mode: S_IFREG | 0o755, data: await readFile(inputs.busybox) });
    const { stdout } = await run(inputs.busybox, ['--list-full']);
    for (const applet of stdout.split('\n').filter(Boolean)) {
      if (applet === 'bin/busybox' || applet === 'init' || applet === 'linuxrc') continue;
      addDir(dirname(applet));
      entries.push({ name: applet, mode: S_IFLNK | 0o777, data: Buffer.from('/bin/busybox') });
    }
    const guestPaths: string[] = [];
    for (const m of modules) {
      const guestPath = join('lib/modules', basename(m));
      addDir(dirname(guestPath));
      entries.push({ name: guestPath, mode: S_IFREG | 0o644, data: await readFile(join(inputs.modulesDir!, m)) });
      guestPaths.push(`/${guestPath}`);
    }
    entries.push({ name: 'etc/lodger/modules', mode: S_IFREG | 0o644, data: Buffer.from(guestPaths.map((p) => `${p}\n`).join('')) });
    entries.push({ name: 'etc/passwd', mode: S_IFREG | 0o644, data: Buffer.from('root:x:0:0:root:/root:/bin/sh\n') });
    const cpio = writeCpio(entries);
    await writeFile(join(tmp, 'initramfs.cpio'), cpio);
    await rm(agent);
    const pvh = inputs.pvh && (await extractPvhKernel(inputs.kernel, join(tmp, 'vmlinux')));
    const image: GuestImage = {
      kernel: pvh ? join(dir, 'vmlinux') : inputs.kernel,
      kernelSource: inputs.kernel,
      pvh,
      initramfs: join(dir, 'initramfs.cpio'),
      hash,
      kernelVersion: inputs.kernelVersion,
      modules: guestPaths,
      bytes: cpio.length,
    };
    await writeFile(join(tmp, 'manifest.json'), JSON.stringify(image, null, 2));
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
    await pruneImages(join(host.cacheDir, 'images'), 4);
    log(`guest image ${hash}: initramfs ${(cpio.length / 1048576).toFixed(1)} MiB, ${modules.length} modules, ${pvh ? 'PVH vmlinux' : 'bzImage boot'}`);
    return image;
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

/** Keeps the `keep` most recently built images; each holds a ~50 MB vmlinux. */
async function pruneImages(imagesDir: string, keep: number): Promise<void> {
  const dirs = readdirSync(imagesDir, { withFileTypes: true })
    .filter((d) => d.isDirectory() && !d.name.includes('.tmp-'))
    .map((d) => ({ path: join(imagesDir, d.name), at: statSync(join(imagesDir, d.name)).mtimeMs }))
    .sort((a, b) => b.at - a.at);
  for (const d of dirs.slice(keep)) await rm(d.path, { recursive: true, force: true });
}

/** Path of a host build of the agent (for the parser tests); built on demand, cached. */
export async function hostAgentBinary(host: HostPaths): Promise<string> {
  const hash = createHash('sha256').update(readFileSync(AGENT_SOURCE)).digest('hex').slice(0, 16);
  const out = join(host.cacheDir, 'agent', `lodger-agent-${hash}`);
  if (existsSync(out)) return out;
  await mkdir(dirname(out), { recursive: true });
  await run('gcc', ['-O1', '-g', '-fsanitize=address,undefined', '-o', `${out}.tmp`, AGENT_SOURCE]);
  await rename(`${out}.tmp`, out);
  return out;
}
