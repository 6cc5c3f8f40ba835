import test from 'ava';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create } from 'tar';
import { ImageError } from './errors.ts';
import { sha256, tarBytes, writeDockerDir, writeLayout } from './fixtures.ts';
import { openImage, parseRef, verifyLayers } from './image.ts';

const layer = tarBytes([{ path: 'bin/hello', body: 'hi\n', mode: 0o755 }, { path: 'etc/motd', body: 'motd\n' }]);
const tmp = (): string => mkdtempSync(join(tmpdir(), 'lodger-image-'));

async function code(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (e) {
    if (e instanceof ImageError) return { code: e.code, message: e.message };
    throw e;
  }
  throw new Error('did not fail');
}

test('refs: skopeo transports and bare paths', (t) => {
  t.deepEqual(parseRef('oci:/a/b:v1'), { kind: 'oci', path: '/a/b', tag: 'v1' });
  t.deepEqual(parseRef('oci-archive:/x.tar'), { kind: 'oci-archive', path: '/x.tar', tag: '' });
  t.deepEqual(parseRef('docker-archive:/x.tar:busybox:latest'), { kind: 'docker-archive', path: '/x.tar', tag: 'busybox:latest' });
  t.deepEqual(parseRef('/plain/dir'), { kind: 'auto', path: '/plain/dir', tag: '' });
});

test('an OCI layout opens with its config; the image ID is the config digest; layers verify', async (t) => {
  const d = tmp();
  const l = writeLayout(join(d, 'img'), [layer], { config: { Entrypoint: ['/bin/hello'], Cmd: ['x'], Env: ['A=1'], WorkingDir: '/w', User: '7' }, tag: 'v1' });
  for (const ref of [join(d, 'img'), `oci:${join(d, 'img')}:v1`]) {
    const img = await openImage(ref, join(d, 'work'));
    t.is(img.id, l.configDigest);
    t.is(img.manifestDigest, l.manifestDigest);
    t.deepEqual(img.config, { Entrypoint: ['/bin/hello'], Cmd: ['x'], Env: ['A=1'], WorkingDir: '/w', User: '7' });
    t.is(img.layers[0]!.compression, 'gzip');
    await verifyLayers(img);
  }
  const e = await code(openImage(`oci:${join(d, 'img')}:v2`, join(d, 'work')));
  t.is(e.code, 'IMAGE_NOT_FOUND');
  t.regex(e.message, /no manifest is named "v2" \(names: v1\)/);
  rmSync(d, { recursive: true, force: true });
});

test('bad images are refused with what is wrong: missing blob, digest mismatch, not an image, tampered config', async (t) => {
  const d = tmp();
  const fresh = (name: string): ReturnType<typeof writeLayout> & { dir: string } => ({ ...writeLayout(join(d, name), [layer]), dir: join(d, name) });

  const missing = fresh('missing');
  unlinkSync(missing.layerFiles[0]!);
  let e = await code(openImage(missing.dir, join(d, 'w1')));
  t.is(e.code, 'IMAGE_BLOB_MISSING');
  t.true(e.message.includes(missing.layerDigests[0]!), e.message);

  const flipped = fresh('flipped');
  const blob = readFileSync(flipped.layerFiles[0]!);
  blob[blob.length - 10] ^= 0xff; // same size, other content
  writeFileSync(flipped.layerFiles[0]!, blob);
  const img = await openImage(flipped.dir, join(d, 'w2'));
  e = await code(verifyLayers(img));
  t.is(e.code, 'IMAGE_DIGEST_MISMATCH');
  t.true(e.message.includes(`blob ${flipped.layerDigests[0]!} has digest sha256:`), e.message);

  const cfg = fresh('cfg');
  writeFileSync(cfg.configFile, readFileSync(cfg.configFile, 'utf8').replace('/bin/sh', '/bin/xx'));
  e = await code(openImage(cfg.dir, join(d, 'w3')));
  t.is(e.code, 'IMAGE_DIGEST_MISMATCH');
  t.regex(e.message, /config sha256:[0-9a-f]{64}: its content has digest/);

  mkdirSync(join(d, 'plain'));
  e = await code(openImage(join(d, 'plain'), join(d, 'w4')));
  t.is(e.code, 'IMAGE_NOT_AN_IMAGE');
  t.regex(e.message, /no oci-layout file/);

  writeFileSync(join(d, 'junk.tar'), 'not a tar at all '.repeat(200));
  mkdirSync(join(d, 'w5'));
  e = await code(openImage(join(d, 'junk.tar'), join(d, 'w5')));
  t.is(e.code, 'IMAGE_NOT_AN_IMAGE');

  e = await code(openImage(join(d, 'nothing-here'), join(d, 'w6')));
  t.is(e.code, 'IMAGE_NOT_FOUND');
  rmSync(d, { recursive: true, force: true });
});

test('a docker-archive opens: config named by its digest, layers checked against diff_ids', async (t) => {
  const d = tmp();
  const { configDigest } = writeDockerDir(join(d, 'src'), [layer], { tag: 'test/hello:1', config: { Cmd: ['/bin/hello'] } });
  await create({ file: join(d, 'img.tar'), cwd: join(d, 'src') }, ['.']);
  mkdirSync(join(d, 'work'));
  const img = await openImage(join(d, 'img.tar'), join(d, 'work'));
  t.is(img.kind, 'docker-archive');
  t.is(img.id, configDigest);
  t.deepEqual(img.config.Cmd, ['/bin/hello']);
  await verifyLayers(img);
  // A layer whose content is not its diff_id.
  writeFileSync(join(d, 'src', 'l0', 'layer.tar'), tarBytes([{ path: 'bin/hello', body: 'HI\n' }]));
  await create({ file: join(d, 'bad.tar'), cwd: join(d, 'src') }, ['.']);
  mkdirSync(join(d, 'work2'));
  const bad = await openImage(`docker-archive:${join(d, 'bad.tar')}:test/hello:1`, join(d, 'work2'));
  const e = await code(verifyLayers(bad));
  t.is(e.code, 'IMAGE_DIGEST_MISMATCH');
  t.true(e.message.includes(`the config's diff_id is ${sha256(layer)}`), e.message);
  rmSync(d, { recursive: true, force: true });
});

test('an archive member named with .. is refused', async (t) => {
  const d = tmp();
  writeFileSync(join(d, 'evil.tar'), tarBytes([{ path: '../escaped', body: 'x' }, { path: 'oci-layout', body: '{}' }]));
  mkdirSync(join(d, 'work'));
  const e = await code(openImage(join(d, 'evil.tar'), join(d, 'work')));
  t.is(e.code, 'IMAGE_UNSAFE_PATH');
  rmSync(d, { recursive: true, force: true });
});
