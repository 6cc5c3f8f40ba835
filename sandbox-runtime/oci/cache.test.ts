import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImageCache } from './cache.ts';
import { tarBytes, writeLayout } from './fixtures.ts';

const tmp = (): string => mkdtempSync(join(tmpdir(), 'lodger-cache-'));
const image = (dir: string, name: string, size = 1000): ReturnType<typeof writeLayout> =>
  writeLayout(dir, [tarBytes([{ path: 'bin/sh', body: 'sh', mode: 0o755 }, { path: `data/${name}`, body: Buffer.alloc(size, name) }])], { config: { Cmd: ['/bin/sh'], Env: [`NAME=${name}`] } });

test('an image is built once: the second acquire is from the cache, also by id without opening the ref', async (t) => {
  const d = tmp();
  const l = image(join(d, 'a'), 'a');
  const cache = ImageCache.open({ dir: join(d, 'cache'), maxBytes: 1 << 30, ext4: true });
  const first = await cache.acquire(join(d, 'a'));
  t.false(first.fromCache);
  t.is(first.id, l.configDigest);
  t.is(readFileSync(join(first.rootfsDir, 'data', 'a'), 'utf8'), 'a'.repeat(1000));
  t.true(statSync(first.rootfsImage!).size > 0);
  t.is(statSync(first.rootfsImage!).mode & 0o777, 0o444);
  const second = await cache.acquire(join(d, 'a'));
  t.true(second.fromCache);
  t.is(second.rootfsImage, first.rootfsImage);
  // By id: the ref is not even read.
  const third = await cache.acquire('/nonexistent/ref', l.configDigest);
  t.true(third.fromCache);
  t.deepEqual(readdirSync(join(d, 'cache', 'tmp')), []);
  // Reopened (a restart): still there.
  t.truthy(ImageCache.open({ dir: join(d, 'cache'), maxBytes: 1 << 30, ext4: true }).lookup(l.configDigest));
  rmSync(d, { recursive: true, force: true });
});

test('a bad image leaves nothing behind; the image at a ref must still be the one submitted', async (t) => {
  const d = tmp();
  const l = image(join(d, 'a'), 'a');
  const cache = ImageCache.open({ dir: join(d, 'cache'), maxBytes: 1 << 30, ext4: false });
  const blob = readFileSync(l.layerFiles[0]!);
  blob[blob.length - 12] ^= 0x55;
  writeFileSync(l.layerFiles[0]!, blob);
  const e = await t.throwsAsync(cache.acquire(join(d, 'a')));
  t.is((e as { code?: string }).code, 'IMAGE_DIGEST_MISMATCH');
  t.deepEqual(readdirSync(join(d, 'cache', 'entries')), []);
  t.deepEqual(readdirSync(join(d, 'cache', 'tmp')), []);
  const inspect = await t.throwsAsync(cache.inspect(join(d, 'a')));
  t.is((inspect as { code?: string }).code, 'IMAGE_DIGEST_MISMATCH');
  image(join(d, 'b'), 'b');
  const changed = await t.throwsAsync(cache.acquire(join(d, 'b'), l.configDigest));
  t.is((changed as { code?: string }).code, 'IMAGE_CHANGED');
  rmSync(d, { recursive: true, force: true });
});

test('opening removes what dead processes left half-built, and keeps what live ones are building', async (t) => {
  const d = tmp();
  const dir = join(d, 'cache');
  ImageCache.open({ dir, maxBytes: 1 << 30, ext4: false });
  const dead = spawnSync('true').pid!;
  mkdirSync(join(dir, 'tmp', `${dead}-abc`, 'sha256-x', 'rootfs'), { recursive: true });
  mkdirSync(join(dir, 'tmp', `${process.ppid}-live`));
  mkdirSync(join(dir, 'entries', 'sha256-nometa'));
  ImageCache.open({ dir, maxBytes: 1 << 30, ext4: false });
  t.deepEqual(readdirSync(join(dir, 'tmp')), [`${process.ppid}-live`]);
  t.deepEqual(readdirSync(join(dir, 'entries')), []);
  rmSync(d, { recursive: true, force: true });
});

test('the cache stays within its size: least recently used first, never an entry in use', async (t) => {
  const d = tmp();
  const dir = join(d, 'cache');
  const imgs = ['a', 'b', 'c', 'e'].map((n) => ({ n, ...image(join(d, n), n, 200_000) }));
  // Room for two entries of ~200 KB.
  const cache = ImageCache.open({ dir, maxBytes: 500_000, ext4: false });
  const a = await cache.acquire(join(d, 'a'));
  a.release();
  const b = await cache.acquire(join(d, 'b'));
  b.release();
  // a used after b: b is the least recently used.
  const past = new Date(Date.now() - 60_000);
  utimesSync(join(dir, 'entries', b.id.replace(':', '-')), past, past);
  (await cache.acquire(join(d, 'a'))).release();
  const c = await cache.acquire(join(d, 'c'));
  const ids = (): string[] => cache.entries().map((e) => e.id).sort();
  t.deepEqual(ids(), [imgs[0]!.configDigest, imgs[2]!.configDigest].sort());
  // c is held: building e evicts a, not c.
  (await cache.acquire(join(d, 'e'))).release();
  t.true(ids().includes(c.id));
  t.false(ids().includes(a.id));
  c.release();
  // A new cache on the same directory keeps the order (mtimes) and the bound.
  const again = ImageCache.open({ dir, maxBytes: 250_000, ext4: false });
  t.deepEqual(again.evict().length, 1);
  t.is(again.entries().length, 1);
  t.true(cache.entries().reduce((s, e) => s + e.bytes, 0) <= 250_000);
  rmSync(d, { recursive: true, force: true });
});

test('an entry without its ext4 image (unpacked for gVisor) gets one added, atomically', async (t) => {
  const d = tmp();
  image(join(d, 'a'), 'a');
  const dirOnly = ImageCache.open({ dir: join(d, 'cache'), maxBytes: 1 << 30, ext4: false });
  const x = await dirOnly.acquire(join(d, 'a'));
  t.is(x.rootfsImage, null);
  const withExt4 = ImageCache.open({ dir: join(d, 'cache'), maxBytes: 1 << 30, ext4: true });
  t.is(withExt4.lookup(x.id), null);
  const y = await withExt4.acquire(join(d, 'a'));
  t.false(y.fromCache);
  t.true(existsSync(y.rootfsImage!));
  t.true(y.meta.bytes > x.meta.bytes);
  t.deepEqual(readdirSync(join(d, 'cache', 'entries', x.id.replace(':', '-'))).sort(), ['meta.json', 'rootfs', 'rootfs.img']);
  unlinkSync(y.rootfsImage!);
  rmSync(d, { recursive: true, force: true });
});
