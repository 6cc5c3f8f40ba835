// Applies image layers (plain tar streams) to a root directory, in order, with the OCI
// whiteout rules: `.wh.NAME` removes NAME of the layers below, `.wh..wh..opq` empties its
// directory of what the layers below put there. Entries are created by this code alone
// (node-tar only parses), each resolved inside the root (paths.ts): `..` names, writes
// through links that lead out, and hard links to outside are refused. Device nodes and
// FIFOs are skipped (a job's /dev is the guest's own). The fs calls are synchronous, in the
// parser's entry callbacks: that keeps the entries in order and bounds what is buffered.
import {
  closeSync, constants, fchmodSync, fchownSync, futimesSync, linkSync, lchownSync, lstatSync, lutimesSync, mkdirSync, openSync, readdirSync,
  rmSync, symlinkSync, unlinkSync, writeSync, chmodSync, chownSync, utimesSync,
} from 'node:fs';
import { join } from 'node:path';
import { Parser, type ReadEntry } from 'tar';
import { ImageError } from './errors.ts';
import { entryComponents, resolveInRoot } from './paths.ts';

/** Where the guest mounts things inside a job's root; made when the image lacks them. */
export const ROOT_MOUNTPOINTS = ['proc', 'sys', 'dev', 'tmp', 'output'];

export interface RootStats {
  files: number;
  bytes: number;
  /** Entries not created, with why (device nodes, FIFOs). */
  skipped: string[];
}

interface DirMeta {
  mode: number;
  uid: number;
  gid: number;
  mtime: Date | undefined;
}

const exists = (p: string): ReturnType<typeof lstatSync> | undefined => {
  try {
    return lstatSync(p);
  } catch {
    return undefined;
  }
};

/** Removes whatever is at `p` (not following a link), a directory with its contents. */
function remove(p: string): void {
  const st = exists(p);
  if (!st) return;
  if (st.isDirectory()) rmSync(p, { recursive: true, force: true });
  else unlinkSync(p);
}

export class RootBuilder {
  readonly stats: RootStats = { files: 0, bytes: 0, skipped: [] };
  private readonly dirs = new Map<string, DirMeta>();
  private readonly chown: boolean;

  constructor(private readonly root: string, private readonly opts: { maxBytes: number; chown?: boolean }) {
    this.chown = opts.chown ?? process.getuid?.() === 0;
    mkdirSync(root, { recursive: true, mode: 0o755 });
  }

  /** Applies one layer, given as a plain (decompressed) tar stream. `what` names it in errors. */
  async applyLayer(tar: AsyncIterable<Buffer>, what: string): Promise<void> {
    const written = new Set<string>();
    let failure: unknown = null;
    // An empty layer (only the end-of-archive zero blocks) is valid; node-tar calls it unrecognised.
    let entries = 0;
    let allZero = true;
    const bad = (code: string, message: string | Error): void => {
      if (code === 'TAR_BAD_ARCHIVE' && entries === 0 && allZero) return;
      failure ??= new ImageError('IMAGE_BAD_LAYER', `${what}: not a valid tar (${code}: ${String(message instanceof Error ? message.message : message)})`);
    };
    const parser = new Parser({ onwarn: (code, message) => bad(code, message) });
    parser.on('error', (e: Error & { code?: string }) => bad(e.code ?? 'TAR_ERROR', e));
    parser.on('entry', (e: ReadEntry) => {
      entries++;
      if (failure) return void e.resume();
      try {
        this.entry(e, written, what, (err) => { failure ??= err; });
      } catch (err) {
        failure ??= err;
        e.resume();
      }
    });
    const ended = new Promise<void>((resolve) => parser.on('end', () => resolve()));
    try {
      for await (const chunk of tar) {
        if (failure) break;
        if (allZero && entries === 0 && chunk.some((b) => b !== 0)) allZero = false;
        if (!parser.write(chunk)) await new Promise((r) => parser.once('drain', r));
      }
    } catch (e) {
      throw failure ?? e;
    }
    if (!failure) {
      parser.end();
      await ended;
    }
    if (failure) throw failure instanceof ImageError ? failure : new ImageError('IMAGE_BAD_LAYER', `${what}: ${(failure as Error).message}`, { cause: failure });
  }

  private entry(e: ReadEntry, written: Set<string>, what: string, fail: (err: unknown) => void): void {
    const parts = entryComponents(e.path, `${what}: entry`);
    if (!parts.length) return void e.resume(); // the root itself
    const base = parts[parts.length - 1]!;
    if (base.startsWith('.wh.')) {
      e.resume();
      let at: ReturnType<typeof resolveInRoot>;
      try {
        at = resolveInRoot(this.root, parts, e.path);
      } catch (err) {
        // Under a file there is nothing to hide; a way out of the root is still refused.
        if ((err as ImageError).code === 'IMAGE_BAD_LAYER') return;
        throw err;
      }
      if (at.missingFrom === null) this.whiteout(at.dir, base, written);
      return;
    }
    const { dir, missingFrom } = resolveInRoot(this.root, parts, e.path);
    if (missingFrom !== null) {
      for (let i = missingFrom; i < dir.length; i++) mkdirSync(join(this.root, ...dir.slice(0, i + 1)), { mode: 0o755 });
    }
    const rel = [...dir, base].join('/');
    const target = join(this.root, rel);
    const uid = e.uid ?? 0;
    const gid = e.gid ?? 0;
    const mode = (e.mode ?? 0o644) & 0o7777;
    switch (e.type) {
      case 'Directory': {
        const st = exists(target);
        if (!st?.isDirectory()) {
          remove(target);
          mkdirSync(target, { mode: 0o755 });
        }
        this.dirs.set(rel, { mode, uid, gid, mtime: e.mtime });
        e.resume();
        break;
      }
      case 'File':
      case 'OldFile':
      case 'ContiguousFile': {
        remove(target);
        const fd = openSync(target, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
        let closed = false;
        const close = (): void => {
          if (!closed) closeSync(fd);
          closed = true;
        };
        e.on('data', (c: Buffer) => {
          if (closed) return;
          try {
            this.stats.bytes += c.length;
            if (this.stats.bytes > this.opts.maxBytes) throw new ImageError('IMAGE_TOO_LARGE', `${what}: the unpacked root passes ${this.opts.maxBytes} bytes (the image cache's size)`);
            writeSync(fd, c);
          } catch (err) {
            close();
            fail(err);
          }
        });
        e.on('end', () => {
          if (closed) return;
          try {
            if (this.chown) fchownSync(fd, uid, gid);
            fchmodSync(fd, mode);
            if (e.mtime) futimesSync(fd, e.mtime, e.mtime);
          } catch (err) {
            fail(err);
          }
          close();
        });
        this.stats.files++;
        break;
      }
      case 'SymbolicLink': {
        remove(target);
        // Stored as written: the guest resolves it inside its own root; the host never follows it.
        symlinkSync(e.linkpath ?? '', target);
        if (this.chown) lchownSync(target, uid, gid);
        if (e.mtime) lutimesSync(target, e.mtime, e.mtime);
        e.resume();
        break;
      }
      case 'Link': {
        const lparts = entryComponents(e.linkpath ?? '', `${what}: hard link ${JSON.stringify(e.path)} to`);
        if (!lparts.length) throw new ImageError('IMAGE_UNSAFE_PATH', `${what}: hard link ${JSON.stringify(e.path)} to the root`);
        const l = resolveInRoot(this.root, lparts, e.linkpath ?? '');
        const src = join(this.root, ...l.dir, lparts[lparts.length - 1]!);
        const st = l.missingFrom === null ? exists(src) : undefined;
        if (!st) throw new ImageError('IMAGE_BAD_LAYER', `${what}: hard link ${JSON.stringify(e.path)} to ${JSON.stringify(e.linkpath)}, which is not in the image`);
        if (st.isDirectory()) throw new ImageError('IMAGE_UNSAFE_PATH', `${what}: hard link ${JSON.stringify(e.path)} to a directory`);
        if (src !== target) {
          remove(target);
          linkSync(src, target);
        }
        e.resume();
        break;
      }
      default:
        this.stats.skipped.push(`${e.path} (${e.type})`);
        e.resume();
        return;
    }
    written.add(rel);
  }

  /** `.wh.NAME` or `.wh..wh..opq` in directory `dir`: what the layers below put there goes. */
  private whiteout(dir: string[], base: string, written: Set<string>): void {
    const d = join(this.root, ...dir);
    if (!exists(d)?.isDirectory()) return;
    // This layer's own entries, and the directories that lead to them, stay.
    const ownBelow = (rel: string): boolean => written.has(rel) || [...written].some((w) => w.startsWith(`${rel}/`));
    if (base === '.wh..wh..opq') {
      const prune = (rel: string): void => {
        for (const child of readdirSync(join(this.root, rel))) {
          const c = rel ? `${rel}/${child}` : child;
          if (!ownBelow(c)) {
            remove(join(this.root, c));
            this.forget(c);
          } else if (lstatSync(join(this.root, c)).isDirectory()) prune(c);
        }
      };
      prune(dir.join('/'));
      return;
    }
    if (base.startsWith('.wh..wh.')) return; // other aufs metadata: nothing to apply
    const name = base.slice('.wh.'.length);
    const rel = [...dir, name].join('/');
    // A whiteout hides the layers below only, never an entry of its own layer.
    if (ownBelow(rel)) return;
    remove(join(d, name));
    this.forget(rel);
  }

  private forget(rel: string): void {
    for (const k of this.dirs.keys()) if (k === rel || k.startsWith(`${rel}/`)) this.dirs.delete(k);
  }

  /** Adds the guest's mountpoints and gives directories their modes, owners and times (last: entries below changed them). */
  finish(): RootStats {
    for (const m of ROOT_MOUNTPOINTS) {
      const p = join(this.root, m);
      if (!exists(p)) mkdirSync(p, { mode: m === 'tmp' ? 0o1777 : 0o755 });
      if (m === 'tmp' && exists(p)?.isDirectory()) chmodSync(p, 0o1777);
    }
    const deepestFirst = [...this.dirs.entries()].sort((a, b) => b[0].split('/').length - a[0].split('/').length);
    for (const [rel, m] of deepestFirst) {
      const p = join(this.root, rel);
      if (!exists(p)?.isDirectory()) continue;
      if (this.chown) chownSync(p, m.uid, m.gid);
      chmodSync(p, m.mode);
      if (m.mtime) utimesSync(p, m.mtime, m.mtime);
    }
    return this.stats;
  }
}
