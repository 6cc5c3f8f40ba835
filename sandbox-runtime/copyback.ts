// Copying a guest's /output disk back to the host. The disk is untrusted input: the guest
// wrote it and may have corrupted it. Nothing on it is followed or recreated as it says:
// regular files and directories only (symlinks, device nodes, fifos and sockets are
// reported and skipped), names checked, modes reduced to rw-r--r-- / rwxr-xr-x (no setuid),
// owned by the output directory's owner, at most as many bytes as the disk holds (a huge
// sparse file is skipped, not inflated), a bounded number of entries and depth. Files are
// read by inode number (no guest name reaches debugfs's command line), dumped into a fresh
// private directory, then renamed into place under directories lodgerd made itself, so no
// path is resolved through anything the guest chose.
import { execFile } from 'node:child_process';
import { lstatSync, mkdirSync, mkdtempSync, renameSync, rmSync, statSync, writeFileSync, chownSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { SandboxError } from './errors.ts';

const run = promisify(execFile);

export interface CopyLimits {
  /** Bytes copied at most (the disk's size: more cannot be real data). */
  maxBytes: number;
  maxEntries?: number;
  maxDepth?: number;
}

export interface CopyReport {
  /** Top-level names copied. */
  names: string[];
  files: number;
  bytes: number;
  /** What was not copied, each with why (path as on the guest disk). */
  skipped: { path: string; why: string }[];
}

interface Entry { ino: number; mode: number; name: string; size: number }

async function debugfs(image: string, request: string): Promise<string> {
  try {
    return (await run('debugfs', ['-R', request, image], { maxBuffer: 256 << 20 })).stdout;
  } catch (e) {
    throw new SandboxError('HOST_TOOL_FAILED', `debugfs -R ${request}: ${((e as { stderr?: string }).stderr ?? String(e)).trim()}`, { cause: e });
  }
}

/** `ls -p <ino>` lines: /inode/mode/uid/gid/name/size/ (mode in octal). */
export function parseListing(text: string): { entries: Entry[]; bad: number } {
  const entries: Entry[] = [];
  let bad = 0;
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const m = /^\/(\d+)\/([0-7]+)\/\d*\/\d*\/(.*)\/(\d*)\/$/.exec(line);
    if (!m) {
      bad++;
      continue;
    }
    entries.push({ ino: Number(m[1]), mode: parseInt(m[2]!, 8), name: m[3]!, size: Number(m[4] || 0) });
  }
  return { entries, bad };
}

const S_IFMT = 0o170000;
const KIND: Record<number, string> = { 0o040000: 'dir', 0o100000: 'file', 0o120000: 'symlink', 0o020000: 'character device', 0o060000: 'block device', 0o010000: 'fifo', 0o140000: 'socket' };

/** Why a name from the guest cannot become a host file name, or null. */
export function badName(name: string): string | null {
  if (name === '' || name === '.' || name === '..') return 'empty or dot name';
  if (/[/\0\n\r]/.test(name)) return 'name contains /, NUL or a line break';
  if (Buffer.byteLength(name) > 255) return 'name longer than 255 bytes';
  return null;
}

export async function copyOutputImage(image: string, dest: string, limits: CopyLimits): Promise<CopyReport> {
  const maxEntries = limits.maxEntries ?? 100_000;
  const maxDepth = limits.maxDepth ?? 64;
  mkdirSync(dest, { recursive: true });
  const destStat = statSync(dest);
  const owner = { uid: destStat.uid, gid: destStat.gid };
  const report: CopyReport = { names: [], files: 0, bytes: 0, skipped: [] };
  const dumps: { ino: number; to: string }[] = [];
  const dirs: string[] = [];
  const seen = new Set<number>();
  let entries = 0;
  const walk = async (ino: number, guestPath: string, hostPath: string, depth: number): Promise<void> => {
    const { entries: list, bad } = parseListing(await debugfs(image, `ls -p <${ino}>`));
    if (bad) report.skipped.push({ path: guestPath || '/', why: `${bad} unreadable directory entries` });
    for (const e of list) {
      if (e.name === '.' || e.name === '..' || (depth === 0 && e.name === 'lost+found')) continue;
      const path = `${guestPath}/${e.name}`;
      const why = badName(e.name);
      if (why) { report.skipped.push({ path: JSON.stringify(path), why }); continue; }
      if (++entries > maxEntries) { report.skipped.push({ path, why: `more than ${maxEntries} entries` }); return; }
      const kind = KIND[e.mode & S_IFMT] ?? 'unknown type';
      const to = join(hostPath, e.name);
      if (kind === 'dir') {
        if (depth + 1 > maxDepth) { report.skipped.push({ path, why: `deeper than ${maxDepth}` }); continue; }
        if (seen.has(e.ino)) { report.skipped.push({ path, why: 'directory loop (corrupt filesystem)' }); continue; }
        seen.add(e.ino);
        dirs.push(to);
        if (depth === 0) report.names.push(e.name);
        await walk(e.ino, path, to, depth + 1);
      } else if (kind === 'file') {
        if (report.bytes + e.size > limits.maxBytes) { report.skipped.push({ path, why: `${e.size} bytes: past the ${limits.maxBytes} bytes the disk holds (sparse or corrupt)` }); continue; }
        report.bytes += e.size;
        report.files++;
        dumps.push({ ino: e.ino, to });
        if (depth === 0) report.names.push(e.name);
      } else {
        report.skipped.push({ path, why: `${kind}: not copied` });
      }
    }
  };
  await walk(2, '', dest, 0);
  // Dump every file into a private directory of ours, by inode, in one debugfs run.
  if (/["\n\\]/.test(dest)) throw new SandboxError('SANDBOX_OUTPUT_FAILED', `output directory ${JSON.stringify(dest)} has a quote, backslash or line break`);
  const tmp = mkdtempSync(join(dest, '.lodger-copy-'));
  try {
    if (dumps.length) {
      const cmds = join(tmp, 'cmds');
      writeFileSync(cmds, dumps.map((d, i) => `dump <${d.ino}> "${join(tmp, String(i))}"\n`).join(''));
      try {
        await run('debugfs', ['-f', cmds, image], { maxBuffer: 64 << 20 });
      } catch (e) {
        throw new SandboxError('HOST_TOOL_FAILED', `debugfs dump: ${((e as { stderr?: string }).stderr ?? String(e)).trim()}`, { cause: e });
      }
    }
    for (const d of dirs) place(d, 'dir', owner);
    dumps.forEach((d, i) => {
      const from = join(tmp, String(i));
      if (!lstatSync(from, { throwIfNoEntry: false })?.isFile()) return void report.skipped.push({ path: d.to, why: 'debugfs could not read it' });
      place(d.to, 'file', owner, from);
    });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return report;
}

/** Puts a directory or file at `to`: whatever is there already and is not a plain directory is replaced, never followed. */
function place(to: string, kind: 'dir' | 'file', owner: { uid: number; gid: number }, from?: string): void {
  const there = lstatSync(to, { throwIfNoEntry: false });
  if (kind === 'dir') {
    if (there && !there.isDirectory()) rmSync(to, { force: true });
    if (!there?.isDirectory()) mkdirSync(to, { mode: 0o755 });
    chmodSync(to, 0o755);
  } else {
    if (there?.isDirectory()) rmSync(to, { recursive: true, force: true });
    renameSync(from!, to); // replaces a symlink at `to` itself, does not follow it
    chmodSync(to, 0o644);
  }
  chownSync(to, owner.uid, owner.gid);
}
