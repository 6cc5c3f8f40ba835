import test from 'ava';
import { deepStrictEqual, equal } from 'node:assert';
import fc from 'fast-check';
import { existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tarBytes, type TarEntry } from './fixtures.ts';
import { RootBuilder } from './unpack.ts';

async function* once(b: Buffer): AsyncGenerator<Buffer> {
  // In pieces, as a stream would give them.
  for (let i = 0; i < b.length; i += 700) yield b.subarray(i, i + 700);
}

async function build(layers: TarEntry[][], root: string): Promise<RootBuilder> {
  const b = new RootBuilder(root, { maxBytes: 1 << 30 });
  for (const [i, l] of layers.entries()) await b.applyLayer(once(tarBytes(l)), `layer ${i}`);
  b.finish();
  return b;
}

/** Every path under root with its kind, mountpoints left out. */
function tree(root: string, rel = ''): Record<string, string> {
  const out: Record<string, string> = {};
  for (const n of readdirSync(join(root, rel)).sort()) {
    const p = rel ? `${rel}/${n}` : n;
    if (!rel && ['proc', 'sys', 'dev', 'tmp', 'output'].includes(n)) continue;
    const st = lstatSync(join(root, p));
    if (st.isDirectory()) {
      out[p] = 'dir';
      Object.assign(out, tree(root, p));
    } else out[p] = st.isSymbolicLink() ? `link:${readlinkSync(join(root, p))}` : `file:${readFileSync(join(root, p), 'utf8')}`;
  }
  return out;
}

const tmp = (): string => mkdtempSync(join(tmpdir(), 'lodger-unpack-'));

test('whiteouts remove what the layers below put there; an opaque directory keeps only its own layer', async (t) => {
  const d = tmp();
  const root = join(d, 'root');
  await build([
    [{ path: 'a/', type: 'Directory' }, { path: 'a/x', body: 'x' }, { path: 'a/y', body: 'y' }, { path: 'b/z', body: 'z' }, { path: 'o/old', body: 'old' }, { path: 'o/sub/deep', body: 'd' }],
    [{ path: 'a/.wh.x' }, { path: '.wh.b' }, { path: 'o/', type: 'Directory' }, { path: 'o/.wh..wh..opq' }, { path: 'o/new', body: 'new' }, { path: 'c/f', body: 'f' }, { path: 'c/.wh.f' }],
  ], root);
  t.deepEqual(tree(root), { a: 'dir', 'a/y': 'file:y', c: 'dir', 'c/f': 'file:f', o: 'dir', 'o/new': 'file:new' });
  t.true(statSync(join(root, 'tmp')).isDirectory());
  rmSync(d, { recursive: true, force: true });
});

test('files keep their mode and owner; devices and FIFOs are skipped and said so', async (t) => {
  const d = tmp();
  const root = join(d, 'root');
  const b = await build([[{ path: 'bin/su', body: '#!', mode: 0o4755, uid: 1234, gid: 99 }, { path: 'dev/null', type: 'CharacterDevice' }, { path: 'p', type: 'FIFO' }]], root);
  const st = statSync(join(root, 'bin/su'));
  t.is(st.mode & 0o7777, 0o4755);
  if (process.getuid?.() === 0) t.deepEqual([st.uid, st.gid], [1234, 99]);
  t.deepEqual(b.stats.skipped, ['dev/null (CharacterDevice)', 'p (FIFO)']);
  t.false(existsSync(join(root, 'p')));
  rmSync(d, { recursive: true, force: true });
});

test('a layer cannot write outside the root: .. names, links leading out, hard links to outside', async (t) => {
  const d = tmp();
  const root = join(d, 'root');
  const outside = join(d, 'outside');
  const refuse = async (entries: TarEntry[], code: string, msg: RegExp): Promise<void> => {
    rmSync(root, { recursive: true, force: true });
    const e = await t.throwsAsync(build([entries], root));
    t.is((e as { code?: string }).code, code, e?.message);
    t.regex(e!.message, msg);
  };
  await refuse([{ path: '../outside/x', body: 'evil' }], 'IMAGE_UNSAFE_PATH', /'\.\.' would leave the root/);
  await refuse([{ path: 'l', type: 'SymbolicLink', linkpath: '../outside' }, { path: 'l/x', body: 'evil' }], 'IMAGE_UNSAFE_PATH', /leads out of the root/);
  await refuse([{ path: 'a/l', type: 'SymbolicLink', linkpath: '../../../../..' }, { path: 'a/l/x', body: 'evil' }], 'IMAGE_UNSAFE_PATH', /leads out/);
  await refuse([{ path: 'h', type: 'Link', linkpath: '../outside/secret' }], 'IMAGE_UNSAFE_PATH', /'\.\.'/);
  await refuse([{ path: 'h', type: 'Link', linkpath: join(outside, 'secret') }], 'IMAGE_BAD_LAYER', /not in the image/);
  // An absolute link is the guest's: writing through it lands inside the root.
  rmSync(root, { recursive: true, force: true });
  await build([[{ path: 'abs', type: 'SymbolicLink', linkpath: outside }, { path: 'abs/x', body: 'inside' }, { path: 'etc', type: 'SymbolicLink', linkpath: '/' }, { path: 'h', type: 'Link', linkpath: 'etc/abs/x' }]], root);
  t.false(existsSync(outside));
  t.is(readFileSync(join(root, outside, 'x'), 'utf8'), 'inside');
  t.is(statSync(join(root, 'h')).ino, statSync(join(root, outside, 'x')).ino);
  t.is(readlinkSync(join(root, 'abs')), outside);
  rmSync(d, { recursive: true, force: true });
});

test('a layer past the size bound is refused', async (t) => {
  const d = tmp();
  const b = new RootBuilder(join(d, 'root'), { maxBytes: 1000 });
  const e = await t.throwsAsync(b.applyLayer(once(tarBytes([{ path: 'big', body: Buffer.alloc(5000) }])), 'layer 0'));
  t.is((e as { code?: string }).code, 'IMAGE_TOO_LARGE');
  rmSync(d, { recursive: true, force: true });
});

test('a stream that is not a tar is refused', async (t) => {
  const d = tmp();
  const b = new RootBuilder(join(d, 'root'), { maxBytes: 1 << 20 });
  const e = await t.throwsAsync(b.applyLayer(once(Buffer.from('this is not a tar archive '.repeat(100))), 'layer 0'));
  t.is((e as { code?: string }).code, 'IMAGE_BAD_LAYER');
  rmSync(d, { recursive: true, force: true });
});

// The overlay model the layers are checked against: path -> 'dir' | file body.
function model(layers: TarEntry[][]): Record<string, string> {
  const m = new Map<string, string>();
  const drop = (p: string): void => {
    for (const k of [...m.keys()]) if (k === p || k.startsWith(`${p}/`)) m.delete(k);
  };
  for (const layer of layers) {
    const own = new Set<string>();
    for (const e of layer) {
      const parts = e.path.split('/').filter(Boolean);
      const base = parts[parts.length - 1]!;
      const dir = parts.slice(0, -1).join('/');
      // Own: an entry of this layer or a directory on the way to one.
      const mine = (k: string): boolean => [...own].some((o) => o === k || o.startsWith(`${k}/`));
      if (base === '.wh..wh..opq') {
        if (dir === '' || m.get(dir) === 'dir') for (const k of [...m.keys()]) if ((dir === '' || k.startsWith(`${dir}/`)) && !mine(k)) m.delete(k);
        continue;
      }
      if (base.startsWith('.wh.')) {
        const p = dir ? `${dir}/${base.slice(4)}` : base.slice(4);
        if (!mine(p) && (dir === '' || m.get(dir) === 'dir')) drop(p);
        continue;
      }
      for (let i = 1; i < parts.length; i++) {
        const p = parts.slice(0, i).join('/');
        if (m.has(p) && m.get(p) !== 'dir') throw new Error('an entry under a file');
        m.set(p, 'dir');
      }
      const p = parts.join('/');
      if (e.type === 'Directory') {
        if (m.get(p) !== 'dir') {
          drop(p);
          m.set(p, 'dir');
        }
      } else {
        drop(p);
        m.set(p, `file:${String(e.body ?? '')}`);
      }
      own.add(p);
    }
  }
  return Object.fromEntries([...m.entries()].sort(([a], [b]) => (a < b ? -1 : 1)));
}

const name = fc.constantFrom('a', 'b', 'c');
const path = fc.array(name, { minLength: 1, maxLength: 3 }).map((p) => p.join('/'));
const entry: fc.Arbitrary<TarEntry> = fc.oneof(
  fc.record({ path, body: fc.constantFrom('1', '2') }),
  path.map((p) => ({ path: `${p}/`, type: 'Directory' as const })),
  fc.tuple(fc.option(path, { nil: undefined }), name).map(([d, n]) => ({ path: d ? `${d}/.wh.${n}` : `.wh.${n}` })),
  path.map((p) => ({ path: `${p}/.wh..wh..opq` })),
);

test('property: files, directories and whiteouts over several layers give the overlay model\'s tree', async (t) => {
  await fc.assert(fc.asyncProperty(fc.array(fc.array(entry, { maxLength: 6 }), { minLength: 1, maxLength: 3 }), async (layers) => {
    const d = tmp();
    try {
      const root = join(d, 'root');
      let want: Record<string, string> | null = null;
      try {
        want = model(layers);
      } catch { /* the layers put an entry under a file: that is refused */ }
      if (want) {
        await build(layers, root);
        deepStrictEqual(tree(root), want);
      } else {
        const e = await build(layers, root).then(() => null, (x: unknown) => x);
        equal((e as { code?: string } | null)?.code, 'IMAGE_BAD_LAYER');
      }
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  }), { numRuns: 150 });
  t.pass();
});

const hostileTarget = fc.constantFrom('..', '../..', '../../outside', '/', '/etc', 'a', 'a/b', '.', 'OUT');
const hostile: fc.Arbitrary<TarEntry> = fc.oneof(
  fc.record({ path, body: fc.constant('evil') }),
  fc.tuple(path, hostileTarget).map(([p, l]) => ({ path: p, type: 'SymbolicLink' as const, linkpath: l })),
  fc.tuple(path, hostileTarget).map(([p, l]) => ({ path: p, type: 'Link' as const, linkpath: l })),
  fc.tuple(fc.constantFrom('..', '../outside', 'a/../..', '/..'), name).map(([p, n]) => ({ path: `${p}/${n}`, body: 'evil' })),
  path.map((p) => ({ path: `${p}/.wh..wh..opq` })),
);

test('property: whatever a layer holds, nothing outside the root is created, changed or removed', async (t) => {
  await fc.assert(fc.asyncProperty(fc.array(fc.array(hostile, { maxLength: 8 }), { minLength: 1, maxLength: 2 }), async (layers) => {
    const d = tmp();
    try {
      const root = join(d, 'root');
      const outside = join(d, 'outside');
      // 'OUT' names the outside directory by its absolute host path.
      const real = layers.map((l) => l.map((e) => (e.linkpath === 'OUT' ? { ...e, linkpath: outside } : e)));
      await build(real, root).catch((e: { code?: string }) => {
        if (!['IMAGE_UNSAFE_PATH', 'IMAGE_BAD_LAYER'].includes(e.code ?? '')) throw e;
      });
      deepStrictEqual(readdirSync(d).sort(), ['root']);
      for (const p of Object.keys(tree(root))) equal(p.split('/').pop()!.startsWith('.wh.'), false, p);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  }), { numRuns: 200 });
  t.pass();
});
