// Job disks: a read-only ext4 image packed from a host directory (the job's root) and a
// writable scratch disk for /output whose contents are copied back without mounting
// (debugfs), so neither needs root on the host nor trusts the guest's filesystem.
import { execFile } from 'node:child_process';
import { lstat, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { copyOutputImage, type CopyReport } from './copyback.ts';
import { SandboxError } from './errors.ts';

const run = promisify(execFile);

async function tool(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await run(cmd, args, { maxBuffer: 64 << 20 });
    return stdout;
  } catch (e) {
    const err = e as { stderr?: string; code?: number | string };
    // e2fsck exits 1 when it fixed something: that is success for us.
    if (cmd === 'e2fsck' && err.code === 1) return '';
    throw new SandboxError('HOST_TOOL_FAILED', `${cmd} ${args.join(' ')}: ${(err.stderr ?? String(e)).trim()}`, { cause: e });
  }
}

async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) total += 4096 + (await dirBytes(p));
    // lstat: a link is packed as a link, so what it points to (perhaps a huge host file) does not count.
    else total += (await lstat(p).catch(() => ({ size: 0 }))).size + 4096;
  }
  return total;
}

/** Where the guest mounts things inside the job root; created when the directory lacks them. */
const ROOTFS_MOUNTPOINTS = ['proc', 'sys', 'dev', 'tmp', 'output'];

export async function makeRootfsImage(srcDir: string, image: string): Promise<void> {
  const s = await stat(srcDir).catch(() => null);
  if (!s?.isDirectory()) throw new SandboxError('SANDBOX_BAD_SPEC', `rootfs ${srcDir} is not a directory`);
  // ext4 needs room for metadata beyond the files themselves.
  const mib = Math.ceil(((await dirBytes(srcDir)) * 1.2) / 1048576) + 16;
  await rm(image, { force: true });
  await writeFile(image, '');
  await truncate(image, mib * 1048576);
  await tool('mkfs.ext4', ['-q', '-F', '-O', '^has_journal', '-L', 'lodger-rootfs', '-d', srcDir, image]);
  const present = new Set(await readdir(srcDir));
  const missing = ROOTFS_MOUNTPOINTS.filter((m) => !present.has(m));
  for (const m of missing) await tool('debugfs', ['-w', '-R', `mkdir ${m}`, image]);
}

/** A sparse, empty ext4 disk. No journal: the guest syncs before it reports a job's exit. */
export async function makeOutputImage(image: string, sizeMiB: number): Promise<void> {
  await rm(image, { force: true });
  await writeFile(image, '');
  await truncate(image, sizeMiB * 1048576);
  await tool('mkfs.ext4', ['-q', '-F', '-O', '^has_journal', '-L', 'lodger-output', '-E', 'root_owner=0:0', image]);
}

/**
 * Copies the disk's files into `dest` as untrusted input (copyback.ts). `repair` first runs
 * e2fsck, for a disk whose guest died without syncing.
 */
export async function extractOutputImage(image: string, dest: string, repair: boolean): Promise<CopyReport> {
  if (repair) await tool('e2fsck', ['-fy', image]);
  return copyOutputImage(image, dest, { maxBytes: (await stat(image)).size });
}
