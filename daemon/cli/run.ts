// `lodger run`: one sandbox for one command, torn down afterwards whatever happens.
import { randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import { constants } from 'node:os';
import { chooseBackend, openGvisorRuntime, openRuntime, SandboxError, type AccelRequest, type RuntimeRequest, type Sandbox, type SandboxRuntime } from '../../sandbox-runtime/index.ts';

export interface RunOptions {
  vcpus: number;
  maxVcpus?: number;
  memory: number;
  maxMemory?: number;
  rootfs?: string;
  output?: string;
  env: string[];
  cwd: string;
  accel: AccelRequest;
  /** Sandbox backend; the same command line runs on both (a job without a root gets the same busybox root). */
  runtime: RuntimeRequest;
  guestKernel?: string;
  pvm: boolean;
  verbose: boolean;
}

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
    sandbox = await runtime.create({
      id: `run-${randomBytes(4).toString('hex')}`,
      vcpus: o.vcpus,
      maxVcpus: o.maxVcpus ?? Math.max(o.vcpus, 4),
      memoryMiB: o.memory,
      maxMemoryMiB: o.maxMemory ?? o.memory + 1024,
      rootfsDir: o.rootfs ? resolve(o.rootfs) : undefined,
      outputDir: o.output ? resolve(o.output) : undefined,
    });
    if (interrupted) return 130;
    await sandbox.start();
    if (interrupted) return 130;
    const job = await sandbox.exec({ argv: cmd, env, cwd: o.cwd });
    job.onStdout((b) => process.stdout.write(b));
    job.onStderr((b) => process.stderr.write(b));
    const st = await job.wait();
    await sandbox.stop();
    if (o.output) log?.(`output copied to ${resolve(o.output)}`);
    if (st.signal) return 128 + st.signal;
    return st.code ?? 1;
  } catch (e) {
    if (interrupted) return 128 + (constants.signals[interrupted] ?? 2);
    const code = e instanceof SandboxError ? ` [${e.code}]` : '';
    console.error(`lodger: ${(e as Error).message}${code}`);
    return 125;
  } finally {
    await sandbox?.stop().catch(() => {});
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
