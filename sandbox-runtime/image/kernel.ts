// Lodger's minimal guest kernel, built from Debian's linux-source-6.1 with
// guest-kernel.config merged onto tinyconfig: everything a sandbox needs built in, the
// rest left out. Under TCG it reaches the agent in about half the time of the generic
// cloud kernel (docs/BENCHMARKS.md). Cached by a hash of the source and the fragment.
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { copyFile, mkdir, readFile, rename, rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { SandboxError } from '../errors.ts';
import type { HostPaths } from '../host.ts';

const run = promisify(execFile);
const KERNEL_BUILDER_VERSION = 1;
export const KERNEL_FRAGMENT = join(dirname(fileURLToPath(import.meta.url)), 'guest-kernel.config');

/** The Debian source tarball, if the linux-source package is installed. */
export function kernelSourceTarball(srcDir = '/usr/src'): string | null {
  if (!existsSync(srcDir)) return null;
  const t = readdirSync(srcDir).filter((n) => /^linux-source-[0-9.]+\.tar\.(xz|bz2|gz)$/.test(n)).sort().at(-1);
  return t ? join(srcDir, t) : null;
}

export function minimalKernelHash(tarball: string): string {
  const s = statSync(tarball);
  return createHash('sha256')
    .update(`kernel-builder:${KERNEL_BUILDER_VERSION}\n${tarball}:${s.size}:${s.mtimeMs}\n`)
    .update(readFileSync(KERNEL_FRAGMENT))
    .digest('hex').slice(0, 16);
}

/** Path of the built minimal kernel for the installed source, or null if not built. */
export function builtMinimalKernel(host: HostPaths, srcDir?: string): string | null {
  const tarball = kernelSourceTarball(srcDir);
  if (!tarball) return null;
  const p = join(host.cacheDir, 'kernels', minimalKernelHash(tarball), 'vmlinux');
  return existsSync(p) ? p : null;
}

/** `CONFIG_X=y` lines of the fragment that must survive olddefconfig. */
function requiredOptions(fragment: string): string[] {
  return fragment.split('\n').map((l) => l.trim()).filter((l) => /^CONFIG_[A-Z0-9_]+=y$/.test(l));
}

function make(dir: string, args: string[], log: (m: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('make', ['-C', dir, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let tailText = '';
    const keep = (b: Buffer): void => { tailText = (tailText + b.toString()).slice(-4000); };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const started = Date.now();
    const tick = setInterval(() => log(`  still building the guest kernel (${Math.round((Date.now() - started) / 1000)} s)`), 60_000);
    child.on('close', (code) => {
      clearInterval(tick);
      if (code === 0) resolve();
      else reject(new SandboxError('IMAGE_BUILD_FAILED', `make ${args.join(' ')} failed (${code}):\n${tailText}`));
    });
  });
}

/**
 * Builds the minimal kernel if the source is installed and it is not cached yet.
 * Returns its path, or null when there is no source to build from.
 */
export async function ensureMinimalKernel(host: HostPaths, log: (m: string) => void = () => {}, srcDir?: string): Promise<string | null> {
  const tarball = kernelSourceTarball(srcDir);
  if (!tarball) return null;
  const hash = minimalKernelHash(tarball);
  const outDir = join(host.cacheDir, 'kernels', hash);
  const out = join(outDir, 'vmlinux');
  if (existsSync(out)) return out;

  const build = join(host.cacheDir, 'kernels', `build-${process.pid}`);
  await rm(build, { recursive: true, force: true });
  await mkdir(build, { recursive: true });
  const t0 = Date.now();
  try {
    log(`building the minimal guest kernel from ${tarball} (a few minutes, once)`);
    await run('tar', ['-xf', tarball, '-C', build, '--strip-components=1'], { maxBuffer: 16 << 20 });
    await make(build, ['tinyconfig'], log);
    await run(join(build, 'scripts', 'kconfig', 'merge_config.sh'), ['-m', '.config', KERNEL_FRAGMENT], { cwd: build });
    await make(build, ['olddefconfig'], log);
    const config = await readFile(join(build, '.config'), 'utf8');
    const lost = requiredOptions(await readFile(KERNEL_FRAGMENT, 'utf8')).filter((o) => !config.includes(`\n${o}\n`));
    if (lost.length) throw new SandboxError('IMAGE_BUILD_FAILED', `kernel config dropped options the guest needs: ${lost.join(' ')}`);
    await make(build, [`-j${availableParallelism()}`, 'vmlinux'], log);
    await mkdir(outDir, { recursive: true });
    await copyFile(join(build, 'vmlinux'), `${out}.tmp`);
    await copyFile(join(build, '.config'), join(outDir, 'config'));
    await rename(`${out}.tmp`, out);
    log(`minimal guest kernel built in ${Math.round((Date.now() - t0) / 1000)} s: ${out}`);
    return out;
  } finally {
    await rm(build, { recursive: true, force: true });
  }
}
