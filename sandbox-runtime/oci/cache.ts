// The image cache: one entry per image ID (the config digest), holding the unpacked root
// and, for QEMU, the read-only ext4 image packed from it; every sandbox that runs the image
// shares it. Entries are built in a temporary directory and renamed into place, so a crash
// or a bad image never leaves a half-built entry; temporary directories of processes that
// are gone are removed when the cache opens. The cache is bounded: after a build it evicts
// the least recently used entries that no sandbox holds (a lease) until it fits. Last use is
// the entry directory's mtime, so the order survives restarts.
import { randomBytes } from 'node:crypto';
import {
  chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { makeRootfsImage } from '../disks.ts';
import { ImageError } from './errors.ts';
import { layerTar, openImage, verifyLayers, type ImageKind, type ImageRunConfig, type OpenedImage } from './image.ts';
import { RootBuilder } from './unpack.ts';

export interface ImageCacheOptions {
  /** The cache's own directory (lodgerd: `<stateDir>/images`); made 0700. */
  dir: string;
  /** Bound on the bytes the entries take on disk. */
  maxBytes: number;
  /** Also pack each root into the ext4 image QEMU attaches. */
  ext4: boolean;
  log?: (m: string) => void;
}

export interface EntryMeta {
  id: string;
  /** The ref it was first built from (another ref of the same image shares the entry). */
  ref: string;
  kind: ImageKind;
  manifestDigest: string | null;
  config: ImageRunConfig;
  /** Bytes on disk (allocated blocks), root and ext4 image together. */
  bytes: number;
  builtAt: number;
  /** Unpacking, and packing the ext4 image, when it was built. */
  unpackMs: number;
  packMs: number | null;
  /** Entries not created (device nodes, FIFOs). */
  skipped: string[];
}

export interface CachedImage {
  id: string;
  rootfsDir: string;
  /** The ext4 image, when the cache packs them. */
  rootfsImage: string | null;
  meta: EntryMeta;
}

export interface ImageLease extends CachedImage {
  /** The entry was there already: nothing was unpacked or packed. */
  fromCache: boolean;
  ms: number;
  /** Lets the entry be evicted again once no lease holds it. */
  release(): void;
}

export interface ImageInfo {
  id: string;
  kind: ImageKind;
  manifestDigest: string | null;
  config: ImageRunConfig;
  cached: boolean;
}

const entryName = (id: string): string => id.replace(':', '-');

/** Bytes a tree takes on disk (allocated blocks: the ext4 image is sparse). */
function diskBytes(p: string): number {
  const st = lstatSync(p);
  let total = st.blocks * 512;
  if (st.isDirectory()) for (const n of readdirSync(p)) total += diskBytes(join(p, n));
  return total;
}

function pidAlive(pid: number): boolean {
  if (pid === process.pid) return false; // ours from before a restart with the same pid: nothing of ours runs yet
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class ImageCache {
  private readonly entriesDir: string;
  private readonly tmpDir: string;
  private readonly leases = new Map<string, number>();
  private readonly pending = new Map<string, Promise<CachedImage>>();
  private readonly log: (m: string) => void;

  private constructor(private readonly o: ImageCacheOptions) {
    this.entriesDir = join(o.dir, 'entries');
    this.tmpDir = join(o.dir, 'tmp');
    this.log = o.log ?? (() => {});
  }

  /** Opens (making) the cache and removes what earlier processes left half-done. */
  static open(o: ImageCacheOptions): ImageCache {
    const c = new ImageCache(o);
    mkdirSync(c.entriesDir, { recursive: true, mode: 0o700 });
    mkdirSync(c.tmpDir, { recursive: true, mode: 0o700 });
    // Image roots may hold set-uid files: nobody but lodgerd reaches them.
    chmodSync(o.dir, 0o700);
    c.cleanStale();
    return c;
  }

  private cleanStale(): void {
    for (const n of readdirSync(this.tmpDir)) {
      const pid = Number(/^(\d+)-/.exec(n)?.[1]);
      if (Number.isInteger(pid) && pid > 0 && pidAlive(pid)) continue;
      rmSync(join(this.tmpDir, n), { recursive: true, force: true });
      this.log(`image cache: removed ${n}, left half-built by an earlier process`);
    }
    for (const n of readdirSync(this.entriesDir)) {
      const dir = join(this.entriesDir, n);
      if (!existsSync(join(dir, 'meta.json'))) {
        rmSync(dir, { recursive: true, force: true });
        continue;
      }
      for (const f of readdirSync(dir)) {
        const pid = Number(/^rootfs\.img\.tmp-(\d+)-/.exec(f)?.[1]);
        if (Number.isInteger(pid) && pid > 0 && !pidAlive(pid)) rmSync(join(dir, f), { force: true });
      }
    }
  }

  private workDir(): string {
    const d = join(this.tmpDir, `${process.pid}-${randomBytes(6).toString('hex')}`);
    mkdirSync(d, { mode: 0o700 });
    return d;
  }

  /** The entry of image `id`, when it is complete for this cache (with its ext4 image when packing them). */
  lookup(id: string): CachedImage | null {
    const dir = join(this.entriesDir, entryName(id));
    let meta: EntryMeta;
    try {
      meta = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8')) as EntryMeta;
    } catch {
      return null;
    }
    const img = join(dir, 'rootfs.img');
    if (this.o.ext4 && !existsSync(img)) return null;
    return { id, rootfsDir: join(dir, 'rootfs'), rootfsImage: this.o.ext4 ? img : null, meta };
  }

  /**
   * Opens `ref` and checks it: the index, manifest and config against their digests and
   * every layer too, also when its entry is cached (hashing is cheap next to unpacking, and a
   * corrupt copy of a cached image is still reported). What a submission calls, so a bad
   * image is refused before it is queued.
   */
  async inspect(ref: string): Promise<ImageInfo> {
    const work = this.workDir();
    try {
      const img = await this.openImage(ref, work);
      const cached = this.lookup(img.id) !== null;
      await verifyLayers(img);
      return { id: img.id, kind: img.kind, manifestDigest: img.manifestDigest, config: img.config, cached };
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }

  private async openImage(ref: string, work: string): Promise<OpenedImage> {
    try {
      return await openImage(ref, work);
    } catch (e) {
      if (e instanceof ImageError) throw e;
      throw new ImageError('IMAGE_CACHE_FAILED', `${ref}: ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * The entry of the image, built when it is not cached, held by a lease until released.
   * With `id`, a cached entry is used without opening `ref` at all; when it must be built,
   * the image at `ref` must still be that one (IMAGE_CHANGED otherwise).
   */
  async acquire(ref: string, id?: string): Promise<ImageLease> {
    const t0 = performance.now();
    const hit = id ? this.lookup(id) : null;
    if (hit) return this.lease(hit, true, t0);
    const work = this.workDir();
    try {
      const img = await this.openImage(ref, work);
      if (id && img.id !== id) throw new ImageError('IMAGE_CHANGED', `${ref} is now image ${img.id}; the job was submitted with ${id}`);
      const cached = this.lookup(img.id);
      if (cached) return this.lease(cached, true, t0);
      let build = this.pending.get(img.id);
      if (!build) {
        build = this.build(img, work).finally(() => this.pending.delete(img.id));
        this.pending.set(img.id, build);
      }
      const built = await build;
      return this.lease(built, false, t0);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }

  /** A lease on a cached entry without building (a job taken up after a restart); null when it is gone. */
  hold(id: string): ImageLease | null {
    const hit = this.lookup(id);
    return hit ? this.lease(hit, true, performance.now()) : null;
  }

  private lease(c: CachedImage, fromCache: boolean, t0: number): ImageLease {
    this.leases.set(c.id, (this.leases.get(c.id) ?? 0) + 1);
    const now = new Date();
    try {
      utimesSync(join(this.entriesDir, entryName(c.id)), now, now);
    } catch { /* evicted by another process meanwhile: the files stay open for this one */ }
    let released = false;
    return {
      ...c, fromCache, ms: performance.now() - t0,
      release: () => {
        if (released) return;
        released = true;
        const n = (this.leases.get(c.id) ?? 1) - 1;
        if (n > 0) this.leases.set(c.id, n);
        else this.leases.delete(c.id);
      },
    };
  }

  private async build(img: OpenedImage, work: string): Promise<CachedImage> {
    const name = entryName(img.id);
    const final = join(this.entriesDir, name);
    const entry = join(work, name);
    const rootfs = join(entry, 'rootfs');
    const t0 = performance.now();
    const existing = existsSync(join(final, 'meta.json')) ? JSON.parse(readFileSync(join(final, 'meta.json'), 'utf8')) as EntryMeta : null;
    try {
      let unpackMs = existing?.unpackMs ?? 0;
      let skipped = existing?.skipped ?? [];
      if (!existing) {
        const b = new RootBuilder(rootfs, { maxBytes: this.o.maxBytes });
        for (const [i, l] of img.layers.entries()) await b.applyLayer(layerTar(l, `${img.ref}: layer ${i}`), `${img.ref}: layer ${i}`);
        skipped = b.finish().skipped;
        unpackMs = performance.now() - t0;
      }
      let packMs: number | null = existing?.packMs ?? null;
      if (this.o.ext4) {
        const t1 = performance.now();
        // An entry unpacked for gVisor gets its image next to it, renamed in when complete.
        const src = existing ? join(final, 'rootfs') : rootfs;
        const out = existing ? join(final, `rootfs.img.tmp-${process.pid}-${randomBytes(4).toString('hex')}`) : join(entry, 'rootfs.img');
        try {
          await makeRootfsImage(src, out);
          chmodSync(out, 0o444);
          if (existing) renameSync(out, join(final, 'rootfs.img'));
        } catch (e) {
          if (existing) rmSync(out, { force: true });
          throw e;
        }
        packMs = performance.now() - t1;
      }
      const meta: EntryMeta = {
        id: img.id, ref: existing?.ref ?? img.ref, kind: existing?.kind ?? img.kind, manifestDigest: existing?.manifestDigest ?? img.manifestDigest,
        config: img.config, bytes: 0, builtAt: Date.now(), unpackMs, packMs, skipped,
      };
      if (existing) {
        meta.bytes = diskBytes(final);
        writeFileSync(join(work, 'meta.json'), JSON.stringify(meta));
        renameSync(join(work, 'meta.json'), join(final, 'meta.json'));
      } else {
        meta.bytes = diskBytes(entry);
        writeFileSync(join(entry, 'meta.json'), JSON.stringify(meta));
        try {
          renameSync(entry, final);
        } catch (e) {
          // Another process built it meanwhile: use theirs.
          const code = (e as NodeJS.ErrnoException).code;
          if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
        }
      }
      this.log(`image ${img.id.slice(0, 19)}: unpacked in ${unpackMs.toFixed(0)} ms${packMs !== null ? `, ext4 packed in ${packMs.toFixed(0)} ms` : ''}, ${(meta.bytes / 1048576).toFixed(1)} MiB${skipped.length ? `, skipped ${skipped.length} entries (${skipped.slice(0, 3).join(', ')})` : ''}`);
      this.evict(img.id);
      const c = this.lookup(img.id);
      if (!c) throw new ImageError('IMAGE_CACHE_FAILED', `image ${img.id}: its entry is not complete after the build`);
      return c;
    } catch (e) {
      if (e instanceof ImageError) throw e;
      throw new ImageError('IMAGE_CACHE_FAILED', `${img.ref}: building its root: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Every complete entry, least recently used first. */
  entries(): { id: string; bytes: number; lastUsed: number; leases: number }[] {
    const out: { id: string; bytes: number; lastUsed: number; leases: number }[] = [];
    for (const n of readdirSync(this.entriesDir)) {
      try {
        const meta = JSON.parse(readFileSync(join(this.entriesDir, n, 'meta.json'), 'utf8')) as EntryMeta;
        out.push({ id: meta.id, bytes: meta.bytes, lastUsed: statSync(join(this.entriesDir, n)).mtimeMs, leases: this.leases.get(meta.id) ?? 0 });
      } catch { /* being evicted */ }
    }
    return out.sort((a, b) => a.lastUsed - b.lastUsed);
  }

  /** Evicts least recently used entries nobody holds until the cache fits; `keep` is never evicted. */
  evict(keep?: string): string[] {
    const all = this.entries();
    let total = all.reduce((a, e) => a + e.bytes, 0);
    const gone: string[] = [];
    for (const e of all) {
      if (total <= this.o.maxBytes) break;
      if (e.id === keep || e.leases > 0) continue;
      // Renamed out first: the entry disappears at once, then its files go.
      const doomed = join(this.tmpDir, `${process.pid}-evict-${randomBytes(4).toString('hex')}`);
      try {
        renameSync(join(this.entriesDir, entryName(e.id)), doomed);
      } catch {
        continue;
      }
      rmSync(doomed, { recursive: true, force: true });
      total -= e.bytes;
      gone.push(e.id);
      this.log(`image cache: evicted ${e.id.slice(0, 19)} (${(e.bytes / 1048576).toFixed(1)} MiB, least recently used)`);
    }
    if (total > this.o.maxBytes) this.log(`image cache: ${(total / 1048576).toFixed(1)} MiB, over its ${(this.o.maxBytes / 1048576).toFixed(1)} MiB: the rest is in use`);
    return gone;
  }
}
