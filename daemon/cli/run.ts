// `lodger run`: one sandbox for one command, torn down afterwards whatever happens.
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import { constants } from 'node:os';
import {
  chooseBackend, defaultHostPaths, ImageCache, ImageError, openGvisorRuntime, openRuntime, resolveUser, runSettings, SandboxError, type AccelRequest, type ImageLease,
  type RuntimeRequest, type Sandbox, type SandboxRuntime,
} from '../../sandbox-runtime/index.ts';
import { absoluteImageRef } from './jobs.ts';

export interface RunOptions {
  vcpus: number;
  maxVcpus?: number;
  memory: number;
  maxMemory?: number;
  rootfs?: string;
  output?: string;
  env: string[];
  cwd?: string;
  /** An OCI image as the root; its config gives command, env, working directory and user. */
  image?: string;
  user?: string;
  accel: AccelRequest;
  /** Sandbox backend; the same command line runs on both (a job without a root gets the same busybox root). */
  runtime: RuntimeRequest;
  guestKernel?: string;
  pvm: boolean;
  verbose: boolean;
}

/** What `lodger run`'s image cache may hold (lodgerd's is `imageCacheMaxBytes`). */
const IMAGE_CACHE_BYTES = 10 * 1024 ** 3;

function parseEnv(pairs: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const p of pairs) {
    const i = p.indexOf('=');
    if (i <= 0) throw new SandboxError('SANDBOX_BAD_SPEC', `--env wants KEY=VALUE (got ${JSON.stringify(p)})`);
    env[p.slice(0, i)] = p.slice(i + 1);
  }
  return env;
}

export async function runCommand(cmd: string[], o: RunOptions): Promise<number> {
  const log = o.verbose ? (m: string) => console.error(`lodger: ${m}`) : undefined;
  let sandbox: Sandbox | null = null;
  let image: ImageLease | null = null;
  let interrupted: NodeJS.Signals | null = null;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (interrupted) return;
    interrupted = sig;
    console.error(`lodger: ${sig}: stopping the sandbox`);
    // stop() collects /output, removes the cgroup and files; main flow then exits.
    void sandbox?.stop({ graceMs: 0 });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const env = parseEnv(o.env);
    const choice = await chooseBackend(o.runtime ?? 'qemu', { accel: o.accel, pvmGuestKernel: o.pvm });
    log?.(`runtime ${choice.backend}: ${choice.reason}`);
    let runtime: SandboxRuntime;
    if (choice.backend === 'gvisor') {
      runtime = (await openGvisorRuntime({ log })).runtime;
    } else {
      const q = await openRuntime({ accel: o.accel, pvmGuestKernel: o.pvm, image: { kernel: o.guestKernel }, log });
      log?.(`accelerator ${q.accel.accel}: ${q.accel.reason}`);
      runtime = q.runtime;
    }
    let run = { argv: cmd, env, workdir: o.cwd ?? '/', user: o.user ?? '' };
    if (o.image) {
      if (o.rootfs) throw new SandboxError('SANDBOX_BAD_SPEC', '--image and --rootfs exclude each other');
      // The same cache directory for every `lodger run` of this user: an image is unpacked once.
      const cache = ImageCache.open({ dir: join(defaultHostPaths().cacheDir, 'oci'), maxBytes: IMAGE_CACHE_BYTES, ext4: runtime.backend === 'qemu', log });
      image = await cache.acquire(absoluteImageRef(o.image));
      log?.(`image ${image.id}: ${image.fromCache ? 'from the cache' : 'unpacked'} in ${image.ms.toFixed(0)} ms`);
      run = runSettings(image.meta.config, { command: cmd, env, workdir: o.cwd, user: o.user }, o.image);
    } else if (!cmd.length) throw new SandboxError('SANDBOX_BAD_SPEC', 'a command is needed (after --), or --image whose config names one');
    const user = run.user ? resolveUser(image?.rootfsDir ?? o.rootfs ?? '', run.user, o.image ?? o.rootfs ?? 'the base image') ?? undefined : undefined;
    sandbox = await runtime.create({
      id: `run-${randomBytes(4).toString('hex')}`,
      vcpus: o.vcpus,
      maxVcpus: o.maxVcpus ?? Math.max(o.vcpus, 4),
      memoryMiB: o.memory,
      maxMemoryMiB: o.maxMemory ?? o.memory + 1024,
      rootfsDir: image ? image.rootfsDir : o.rootfs ? resolve(o.rootfs) : undefined,
      rootfsImage: image?.rootfsImage ?? undefined,
      outputDir: o.output ? resolve(o.output) : undefined,
    });
    if (interrupted) return 130;
    await sandbox.start();
    if (interrupted) return 130;
    const job = await sandbox.exec({ argv: run.argv, env: run.env, cwd: run.workdir, ...(user ? { user } : {}) });
    job.onStdout((b) => process.stdout.write(b));
    job.onStderr((b) => process.stderr.write(b));
    const st = await job.wait();
    await sandbox.stop();
    if (o.output) log?.(`output copied to ${resolve(o.output)}`);
    if (st.signal) return 128 + st.signal;
    return st.code ?? 1;
  } catch (e) {
    if (interrupted) return 128 + (constants.signals[interrupted] ?? 2);
    const code = e instanceof SandboxError || e instanceof ImageError ? ` [${e.code}]` : '';
    console.error(`lodger: ${(e as Error).message}${code}`);
    return 125;
  } finally {
    await sandbox?.stop().catch(() => {});
    image?.release();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
