// The gVisor backend of the sandbox contract: creates sandboxes, takes up those an
// earlier process left (by their record and runsc state under the run directory), lists
// them and cleans up after a crashed owner.
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { copyFile, mkdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import type { CgroupManager } from '../cgroup/index.ts';
import { SANDBOX_ID, validateSpec, type SandboxInfo, type SandboxRuntime, type SandboxSpec } from '../contract.ts';
import { SandboxError } from '../errors.ts';
import type { HostPaths } from '../host.ts';
import { gvisorPaths } from './bundle.ts';
import type { JailOptions } from '../jail.ts';
import { releaseGvisorJail } from './jail.ts';
import { isSandboxProcess, runsc, type GvisorPlatform } from './runsc.ts';
import { gvisorCgroupName, readGvisorRecord } from './record.ts';
import { GvisorSandbox } from './sandbox.ts';

const run = promisify(execFile);

export interface GvisorRuntimeOptions {
  host: HostPaths;
  runscBinary: string;
  platform: GvisorPlatform;
  /** Static busybox: the runner's shell inside every sandbox, and the default root. */
  busybox: string;
  /** Root of a job without one of its own (see ensureBusyboxRoot). */
  defaultRoot: string;
  cgroups: CgroupManager | null;
  log?: (msg: string) => void;
  /** Each sandbox's runsc processes as their own uid from this range (jail.ts); absent or null: as this process. */
  jail?: JailOptions | null;
}

/**
 * The same minimal busybox root a QEMU guest has (busybox and its applets, /etc/passwd,
 * mount points), built once per busybox binary in the cache directory.
 */
export async function ensureBusyboxRoot(cacheDir: string, busybox: string): Promise<string> {
  const st = statSync(busybox);
  // The spooler calls applets by name in roots that hold none (bundle.ts spoolerScript).
  await run(busybox, ['sh', '-c', 'PATH=/nonexistent; usleep 0']).catch((e: unknown) => {
    throw new SandboxError('SANDBOX_BAD_SPEC', `${busybox} does not run its own applets by name (FEATURE_SH_STANDALONE), which the gVisor backend needs: install Debian's busybox-static (${(e as Error).message})`);
  });
  const dir = join(cacheDir, 'gvisor-root', `${st.size}-${Math.floor(st.mtimeMs)}`);
  if (existsSync(join(dir, 'bin', 'busybox'))) return dir;
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'tmp', 'root', 'output', 'etc']) await mkdir(join(tmp, d), { recursive: true });
  await copyFile(busybox, join(tmp, 'bin', 'busybox'));
  const { stdout } = await run(busybox, ['--list-full']);
  for (const applet of stdout.split('\n').filter(Boolean)) {
    if (applet === 'bin/busybox' || applet === 'linuxrc' || !/^[a-z/]+\/[\w.[\]-]+$/.test(applet)) continue;
    await mkdir(join(tmp, dirname(applet)), { recursive: true });
    await symlink('/bin/busybox', join(tmp, applet)).catch(() => {});
  }
  await writeFile(join(tmp, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await mkdir(dirname(dir), { recursive: true });
  await rename(tmp, dir).catch(async () => { await rm(tmp, { recursive: true, force: true }); });
  return dir;
}

export class GvisorRuntime implements SandboxRuntime {
  readonly backend = 'gvisor' as const;
  constructor(readonly opts: GvisorRuntimeOptions) {}

  /** The same runtime with some options replaced (a bench's jail off beside on). */
  with(o: Partial<GvisorRuntimeOptions>): GvisorRuntime {
    return new GvisorRuntime({ ...this.opts, ...o });
  }

  get accel(): GvisorPlatform {
    return this.opts.platform;
  }

  async create(spec: SandboxSpec): Promise<GvisorSandbox> {
    const bad = validateSpec(spec, this.backend);
    if (bad) throw new SandboxError('SANDBOX_BAD_SPEC', `sandbox ${spec.id}: ${bad}`);
    return new GvisorSandbox(spec, this.opts);
  }

  async attach(id: string): Promise<GvisorSandbox> {
    if (!SANDBOX_ID.test(id)) throw new SandboxError('SANDBOX_BAD_SPEC', `no sandbox can be called ${JSON.stringify(id)}`);
    const sb = new GvisorSandbox({ id, vcpus: 1, maxVcpus: 1, memoryMiB: 128, maxMemoryMiB: 128 }, this.opts);
    await sb.attachExisting();
    return sb;
  }

  async list(): Promise<SandboxInfo[]> {
    const dir = this.opts.host.runDir;
    if (!existsSync(dir)) return [];
    return readdirSync(dir, { withFileTypes: true })
      .filter((d) => d.isDirectory() && SANDBOX_ID.test(d.name) && existsSync(join(dir, d.name, 'bundle')))
      .map((d) => d.name).sort().map((id) => this.info(id));
  }

  private info(id: string): SandboxInfo {
    const p = gvisorPaths(this.opts.host.runDir, id);
    const rec = readGvisorRecord(p.record);
    if (rec instanceof Error) return { id, pid: null, state: null, alive: false };
    const alive = rec.pid !== null && isSandboxProcess(this.opts.host.proc, rec.pid, p.runscRoot);
    return { id, pid: rec.pid, state: rec.state, alive };
  }

  async shutdown(id: string): Promise<void> {
    if (!SANDBOX_ID.test(id) || id === '.' || id === '..') throw new SandboxError('SANDBOX_BAD_SPEC', `no sandbox can be called ${JSON.stringify(id)}`);
    const p = gvisorPaths(this.opts.host.runDir, id);
    const info = this.info(id);
    if (info.alive && info.pid !== null) {
      try { process.kill(info.pid, 'SIGKILL'); } catch { /* gone */ }
      for (let i = 0; i < 250 && isSandboxProcess(this.opts.host.proc, info.pid, p.runscRoot); i++) await new Promise((r) => setTimeout(r, 20));
    }
    // runsc also ends the gofer and forgets the container; one still starting has no record but a runsc state.
    if (existsSync(p.runscRoot)) {
      await runsc({ binary: this.opts.runscBinary, platform: this.opts.platform, root: p.runscRoot }, ['delete', '--force', id], { timeoutMs: 10_000 }).catch(() => {});
    }
    await this.opts.cgroups?.open(gvisorCgroupName(id))?.destroy();
    if (!await releaseGvisorJail(p, this.opts.host.proc)) throw new SandboxError('SANDBOX_JAIL_FAILED', `sandbox ${id}: ${p.rootfs} is still mounted; its run directory is kept`);
    await rm(p.dir, { recursive: true, force: true });
  }
}
