// Opens an image given by a ref: an OCI image layout directory, an oci-archive (a tar of
// one) or a docker-archive (`docker save`, skopeo's docker-archive:). Every JSON document
// is read bounded and checked against the digest it is referred to by; layers are
// streamed through their digest (as stored) and their diff_id (as unpacked), and fail
// the build on a mismatch. Nothing in the image is trusted: archive members are only
// regular files, named without `..`; blobs are opened without following links.
import { createHash } from 'node:crypto';
import { closeSync, constants, createReadStream, fstatSync, lstatSync, mkdirSync, openSync, readSync, writeSync } from 'node:fs';
import { join, posix } from 'node:path';
import { pipeline, Transform } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { Parser, type ReadEntry } from 'tar';
import { ImageError } from './errors.ts';
import { entryComponents } from './paths.ts';

/** The JSON documents of an image are small: past this they are refused. */
const MAX_JSON_BYTES = 4 << 20;

export type ImageKind = 'oci' | 'oci-archive' | 'docker-archive';

export interface ImageRef {
  kind: ImageKind | 'auto';
  path: string;
  /** A tag or name inside the layout or archive (`org.opencontainers.image.ref.name`, a docker RepoTag). */
  tag: string;
}

/** What the image config says a container runs (OCI image-spec `config`). */
export interface ImageRunConfig {
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  Env?: string[] | null;
  WorkingDir?: string;
  User?: string;
}

export interface Layer {
  /** Host file of the blob as stored. */
  file: string;
  /** Its digest as stored (null where the docker-archive names it by path only). */
  digest: string | null;
  size: number | null;
  /** Digest of the uncompressed tar, from the config's rootfs.diff_ids. */
  diffId: string;
  compression: 'gzip' | 'none' | 'detect';
  mediaType: string;
}

export interface OpenedImage {
  ref: string;
  kind: ImageKind;
  /** The config's digest: the image ID. The root depends only on it (through diff_ids), so it is the cache key. */
  id: string;
  manifestDigest: string | null;
  config: ImageRunConfig;
  architecture: string;
  os: string;
  layers: Layer[];
}

const DIGEST = /^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$/;

export function parseDigest(d: unknown, what: string): { alg: 'sha256' | 'sha512'; hex: string; digest: string } {
  if (typeof d !== 'string' || !DIGEST.test(d)) throw new ImageError('IMAGE_BAD_MANIFEST', `${what}: ${JSON.stringify(d)} is not a sha256 or sha512 digest`);
  const [alg, hex] = d.split(':') as ['sha256' | 'sha512', string];
  return { alg, hex, digest: d };
}

/**
 * `oci:PATH[:TAG]`, `oci-archive:PATH[:TAG]`, `docker-archive:PATH[:NAME:TAG]` (skopeo's
 * transports), or a bare PATH whose kind is detected (a directory with `oci-layout`, or an
 * archive holding `oci-layout` or `manifest.json`).
 */
export function parseRef(ref: string): ImageRef {
  const m = /^(oci|oci-archive|docker-archive):(.*)$/.exec(ref);
  if (!m) return { kind: 'auto', path: ref, tag: '' };
  const kind = m[1] as ImageKind;
  const rest = m[2]!;
  // The path ends at the first ':' after which what is left is not a path that exists (a tag).
  const i = rest.indexOf(':');
  if (i < 0) return { kind, path: rest, tag: '' };
  const path = rest.slice(0, i);
  return { kind, path, tag: rest.slice(i + 1) };
}

function statOrNull(p: string): ReturnType<typeof lstatSync> | null {
  try {
    return lstatSync(p);
  } catch {
    return null;
  }
}

/** Reads a regular file without following a link, at most `max` bytes. */
function readBounded(file: string, max: number, what: string): Buffer {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new ImageError('IMAGE_BLOB_MISSING', `${what} is missing (${file})`);
    throw new ImageError('IMAGE_NOT_AN_IMAGE', `${what}: cannot open ${file}: ${code === 'ELOOP' ? 'it is a link' : (e as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new ImageError('IMAGE_NOT_AN_IMAGE', `${what}: ${file} is not a regular file`);
    if (st.size > max) throw new ImageError('IMAGE_BAD_MANIFEST', `${what}: ${st.size} bytes, more than the ${max} allowed`);
    const buf = Buffer.alloc(st.size);
    let off = 0;
    while (off < buf.length) {
      const n = readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off);
  } finally {
    closeSync(fd);
  }
}

function parseJson(buf: Buffer, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(buf.toString('utf8'));
  } catch (e) {
    throw new ImageError('IMAGE_BAD_MANIFEST', `${what} is not JSON: ${(e as Error).message}`);
  }
  if (!v || typeof v !== 'object') throw new ImageError('IMAGE_BAD_MANIFEST', `${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { architecture?: string; os?: string };
}

function descriptor(v: unknown, what: string): Descriptor {
  const d = v as Partial<Descriptor> | null;
  if (!d || typeof d !== 'object') throw new ImageError('IMAGE_BAD_MANIFEST', `${what} is not a descriptor`);
  parseDigest(d.digest, `${what}.digest`);
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) throw new ImageError('IMAGE_BAD_MANIFEST', `${what}.size is not a size`);
  return { mediaType: typeof d.mediaType === 'string' ? d.mediaType : '', digest: d.digest!, size: d.size, annotations: d.annotations, platform: d.platform };
}

/** A blob of an OCI layout: its file, checked to exist as a regular file. */
function blobFile(layout: string, digest: string): string {
  const { alg, hex } = parseDigest(digest, 'blob');
  return join(layout, 'blobs', alg, hex);
}

/** Reads a JSON blob, checking its size and digest against the descriptor. */
function readJsonBlob(file: string, d: { digest: string; size: number | null }, what: string): { json: Record<string, unknown>; bytes: Buffer } {
  const bytes = readBounded(file, MAX_JSON_BYTES, `${what} ${d.digest}`);
  const { alg } = parseDigest(d.digest, what);
  const got = `${alg}:${createHash(alg).update(bytes).digest('hex')}`;
  if (got !== d.digest) throw new ImageError('IMAGE_DIGEST_MISMATCH', `${what} ${d.digest}: its content has digest ${got}`);
  if (d.size !== null && bytes.length !== d.size) throw new ImageError('IMAGE_DIGEST_MISMATCH', `${what} ${d.digest}: ${bytes.length} bytes, the descriptor says ${d.size}`);
  return { json: parseJson(bytes, `${what} ${d.digest}`), bytes };
}

const goArch = (): string => ({ x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x' } as Record<string, string>)[process.arch] ?? process.arch;

const INDEX_TYPES = new Set(['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json']);
const MANIFEST_TYPES = new Set(['application/vnd.oci.image.manifest.v1+json', 'application/vnd.docker.distribution.manifest.v2+json']);

function layerCompression(mediaType: string, what: string): Layer['compression'] {
  if (/\+zstd$|\.zstd$/.test(mediaType)) throw new ImageError('IMAGE_UNSUPPORTED', `${what}: zstd layers (${mediaType}) are not supported`);
  if (/tar\+gzip$|tar\.gzip$|\.tar\.gz$/.test(mediaType)) return 'gzip';
  if (/(\.|\/)tar$|vnd\.oci\.image\.layer\.v1\.tar$/.test(mediaType) || mediaType.endsWith('.tar')) return 'none';
  throw new ImageError('IMAGE_UNSUPPORTED', `${what}: media type ${JSON.stringify(mediaType)} is not a layer Lodger can unpack`);
}

function parseConfig(json: Record<string, unknown>, what: string, layerCount: number): { run: ImageRunConfig; diffIds: string[]; architecture: string; os: string } {
  const rootfs = json.rootfs as { type?: string; diff_ids?: unknown } | undefined;
  if (!rootfs || rootfs.type !== 'layers' || !Array.isArray(rootfs.diff_ids)) throw new ImageError('IMAGE_BAD_MANIFEST', `${what}: no rootfs.diff_ids: not an image config`);
  const diffIds = rootfs.diff_ids.map((d, i) => parseDigest(d, `${what}: rootfs.diff_ids[${i}]`).digest);
  if (diffIds.length !== layerCount) throw new ImageError('IMAGE_BAD_MANIFEST', `${what}: ${diffIds.length} diff_ids for ${layerCount} layers`);
  const c = (json.config ?? {}) as Record<string, unknown>;
  const strings = (v: unknown, k: string): string[] | null => {
    if (v === undefined || v === null) return null;
    if (!Array.isArray(v) || v.some((s) => typeof s !== 'string' || s.includes('\0'))) throw new ImageError('IMAGE_BAD_MANIFEST', `${what}: config.${k} is not a list of strings`);
    return v as string[];
  };
  const str = (v: unknown, k: string): string | undefined => {
    if (v === undefined || v === null || v === '') return undefined;
    if (typeof v !== 'string' || v.includes('\0')) throw new ImageError('IMAGE_BAD_MANIFEST', `${what}: config.${k} is not a string`);
    return v;
  };
  return {
    run: { Entrypoint: strings(c.Entrypoint, 'Entrypoint'), Cmd: strings(c.Cmd, 'Cmd'), Env: strings(c.Env, 'Env'), WorkingDir: str(c.WorkingDir, 'WorkingDir'), User: str(c.User, 'User') },
    diffIds, architecture: typeof json.architecture === 'string' ? json.architecture : '', os: typeof json.os === 'string' ? json.os : '',
  };
}

function checkPlatform(img: { architecture: string; os: string }, what: string): void {
  if (img.os && img.os !== 'linux') throw new ImageError('IMAGE_UNSUPPORTED', `${what}: built for os ${img.os}, not linux`);
  if (img.architecture && img.architecture !== goArch()) throw new ImageError('IMAGE_UNSUPPORTED', `${what}: built for ${img.architecture}, this host is ${goArch()}`);
}

/** The manifest an OCI layout's index.json names for `tag` (the only one when no tag is given). */
function openLayout(layout: string, tag: string, ref: string, kind: ImageKind): OpenedImage {
  const marker = statOrNull(join(layout, 'oci-layout'));
  if (!marker?.isFile()) throw new ImageError('IMAGE_NOT_AN_IMAGE', `${ref}: no oci-layout file: not an OCI image layout`);
  const layoutJson = parseJson(readBounded(join(layout, 'oci-layout'), 4096, `${ref}: oci-layout`), `${ref}: oci-layout`);
  if (typeof layoutJson.imageLayoutVersion !== 'string') throw new ImageError('IMAGE_NOT_AN_IMAGE', `${ref}: oci-layout has no imageLayoutVersion`);
  const index = parseJson(readBounded(join(layout, 'index.json'), MAX_JSON_BYTES, `${ref}: index.json`), `${ref}: index.json`);
  if (!Array.isArray(index.manifests)) throw new ImageError('IMAGE_BAD_MANIFEST', `${ref}: index.json has no manifests list`);
  const all = index.manifests.map((m, i) => descriptor(m, `${ref}: index.json manifests[${i}]`));
  const names = (d: Descriptor): string[] => [d.annotations?.['org.opencontainers.image.ref.name'], d.annotations?.['io.containerd.image.name']].filter((x): x is string => !!x);
  let chosen: Descriptor;
  if (tag) {
    const hit = all.filter((d) => names(d).some((n) => n === tag || n.endsWith(`:${tag}`)));
    if (hit.length !== 1) {
      const known = all.flatMap(names);
      throw new ImageError('IMAGE_NOT_FOUND', `${ref}: ${hit.length ? 'several manifests are' : 'no manifest is'} named ${JSON.stringify(tag)} (names: ${known.length ? known.join(', ') : 'none'})`);
    }
    chosen = hit[0]!;
  } else {
    if (all.length !== 1) throw new ImageError('IMAGE_NOT_FOUND', `${ref}: index.json lists ${all.length} manifests; name one as ${kind}:PATH:TAG (names: ${all.flatMap(names).join(', ') || 'none'})`);
    chosen = all[0]!;
  }
  // An image index (multi-platform): this host's platform.
  for (let depth = 0; INDEX_TYPES.has(chosen.mediaType); depth++) {
    if (depth > 2) throw new ImageError('IMAGE_BAD_MANIFEST', `${ref}: image indexes nested too deep`);
    const { json } = readJsonBlob(blobFile(layout, chosen.digest), chosen, `${ref}: image index`);
    const list = Array.isArray(json.manifests) ? json.manifests.map((m, i) => descriptor(m, `${ref}: index ${chosen.digest} manifests[${i}]`)) : [];
    const mine = list.find((d) => d.platform?.os === 'linux' && d.platform?.architecture === goArch());
    if (!mine) throw new ImageError('IMAGE_UNSUPPORTED', `${ref}: index ${chosen.digest} has no manifest for linux/${goArch()}`);
    chosen = mine;
  }
  if (chosen.mediaType && !MANIFEST_TYPES.has(chosen.mediaType)) throw new ImageError('IMAGE_NOT_AN_IMAGE', `${ref}: ${chosen.digest} is a ${chosen.mediaType}, not an image manifest`);
  const { json: manifest } = readJsonBlob(blobFile(layout, chosen.digest), chosen, `${ref}: manifest`);
  if (manifest.schemaVersion !== 2) throw new ImageError('IMAGE_BAD_MANIFEST', `${ref}: manifest ${chosen.digest} has schemaVersion ${JSON.stringify(manifest.schemaVersion)}, not 2`);
  const cfgDesc = descriptor(manifest.config, `${ref}: manifest ${chosen.digest} config`);
  if (!Array.isArray(manifest.layers)) throw new ImageError('IMAGE_BAD_MANIFEST', `${ref}: manifest ${chosen.digest} has no layers list`);
  const layerDescs = manifest.layers.map((l, i) => descriptor(l, `${ref}: manifest layers[${i}]`));
  const { json: cfgJson } = readJsonBlob(blobFile(layout, cfgDesc.digest), cfgDesc, `${ref}: config`);
  const cfg = parseConfig(cfgJson, `${ref}: config ${cfgDesc.digest}`, layerDescs.length);
  checkPlatform(cfg, ref);
  const layers = layerDescs.map((d, i): Layer => {
    const file = blobFile(layout, d.digest);
    const st = statOrNull(file);
    if (!st) throw new ImageError('IMAGE_BLOB_MISSING', `${ref}: layer ${i} blob ${d.digest} is missing`);
    if (!st.isFile()) throw new ImageError('IMAGE_NOT_AN_IMAGE', `${ref}: layer ${i} blob ${d.digest} is not a regular file`);
    if (st.size !== d.size) throw new ImageError('IMAGE_DIGEST_MISMATCH', `${ref}: layer ${i} blob ${d.digest} has ${st.size} bytes, the manifest says ${d.size}`);
    return { file, digest: d.digest, size: d.size, diffId: cfg.diffIds[i]!, compression: layerCompression(d.mediaType, `${ref}: layer ${i}`), mediaType: d.mediaType };
  });
  return { ref, kind, id: cfgDesc.digest, manifestDigest: chosen.digest, config: cfg.run, architecture: cfg.architecture, os: cfg.os, layers };
}

/** A `docker save` archive, unpacked: manifest.json, the config, the layer tars. */
function openDockerArchive(dir: string, aliases: Map<string, string>, tag: string, ref: string): OpenedImage {
  const member = (name: unknown, what: string): string => {
    if (typeof name !== 'string') throw new ImageError('IMAGE_BAD_MANIFEST', `${ref}: ${what} is not a file name`);
    let parts = entryComponents(name, `${ref}: ${what}`);
    const alias = aliases.get(parts.join('/'));
    if (alias) parts = alias.split('/');
    return join(dir, ...parts);
  };
  const list = JSON.parse(readBounded(join(dir, 'manifest.json'), MAX_JSON_BYTES, `${ref}: manifest.json`).toString('utf8')) as unknown;
  if (!Array.isArray(list) || !list.length) throw new ImageError('IMAGE_BAD_MANIFEST', `${ref}: manifest.json is not a list of images`);
  const entries = list as { Config?: unknown; RepoTags?: unknown; Layers?: unknown }[];
  const tags = (e: (typeof entries)[number]): string[] => (Array.isArray(e.RepoTags) ? e.RepoTags.filter((t): t is string => typeof t === 'string') : []);
  let e: (typeof entries)[number];
  if (tag) {
    const hit = entries.filter((x) => tags(x).some((t) => t === tag || t.endsWith(`:${tag}`) || t === `${tag}:latest`));
    if (hit.length !== 1) throw new ImageError('IMAGE_NOT_FOUND', `${ref}: ${hit.length ? 'several images are' : 'no image is'} tagged ${JSON.stringify(tag)} (tags: ${entries.flatMap(tags).join(', ') || 'none'})`);
    e = hit[0]!;
  } else {
    if (entries.length !== 1) throw new ImageError('IMAGE_NOT_FOUND', `${ref}: the archive holds ${entries.length} images; name one as docker-archive:PATH:NAME:TAG (tags: ${entries.flatMap(tags).join(', ')})`);
    e = entries[0]!;
  }
  const cfgFile = member(e.Config, 'Config');
  // The config is named by its digest (`<hex>.json`, or `blobs/sha256/<hex>` in newer archives).
  const named = /(?:^|\/)([0-9a-f]{64})(?:\.json)?$/.exec(String(e.Config));
  const bytes = readBounded(cfgFile, MAX_JSON_BYTES, `${ref}: config ${String(e.Config)}`);
  const id = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  if (named && `sha256:${named[1]}` !== id) throw new ImageError('IMAGE_DIGEST_MISMATCH', `${ref}: config ${String(e.Config)}: its content has digest ${id}`);
  if (!Array.isArray(e.Layers)) throw new ImageError('IMAGE_BAD_MANIFEST', `${ref}: manifest.json has no Layers list`);
  const cfg = parseConfig(parseJson(bytes, `${ref}: config`), `${ref}: config ${id}`, e.Layers.length);
  checkPlatform(cfg, ref);
  const layers = (e.Layers as unknown[]).map((name, i): Layer => {
    const file = member(name, `Layers[${i}]`);
    const st = statOrNull(file);
    if (!st) throw new ImageError('IMAGE_BLOB_MISSING', `${ref}: layer ${i} (${String(name)}) is missing`);
    const byDigest = /(?:^|\/)(?:blobs\/sha256\/)?([0-9a-f]{64})(?:\.tar)?$/.exec(String(name));
    return { file, digest: byDigest ? `sha256:${byDigest[1]}` : null, size: null, diffId: cfg.diffIds[i]!, compression: 'detect', mediaType: 'application/vnd.docker.image.rootfs.diff.tar' };
  });
  return { ref, kind: 'docker-archive', id, manifestDigest: null, config: cfg.run, architecture: cfg.architecture, os: cfg.os, layers };
}

/**
 * Unpacks an archive's members into `dir`: regular files and directories only, names
 * without `..`. Links are not created; they become aliases for name look-ups (docker
 * archives link duplicate layers).
 */
async function extractArchive(file: string, dir: string, ref: string): Promise<Map<string, string>> {
  const aliases = new Map<string, string>();
  let failure: ImageError | null = null;
  const bad = (code: string, message: string | Error): void => {
    failure ??= new ImageError('IMAGE_NOT_AN_IMAGE', `${ref}: not an image archive (${code}: ${String(message instanceof Error ? message.message : message)})`);
  };
  const parser = new Parser({ onwarn: (code, message) => bad(code, message) });
  parser.on('error', (e: Error & { code?: string }) => bad(e.code ?? 'TAR_ERROR', e));
  parser.on('entry', (e: ReadEntry) => {
    try {
      if (failure) return void e.resume();
      const parts = entryComponents(e.path, `${ref}: member`);
      if (!parts.length) return void e.resume();
      const target = join(dir, ...parts);
      if (e.type === 'Directory') {
        mkdirSync(target, { recursive: true });
        return void e.resume();
      }
      if (e.type === 'SymbolicLink' || e.type === 'Link') {
        const base = e.type === 'Link' ? [] : parts.slice(0, -1);
        // `dir/../x` is fine as long as it stays inside the archive.
        const to = entryComponents(posix.normalize([...base, e.linkpath ?? ''].join('/').replace(/^\/+/, '')), `${ref}: link target`);
        aliases.set(parts.join('/'), to.join('/'));
        return void e.resume();
      }
      if (e.type !== 'File' && e.type !== 'OldFile' && e.type !== 'ContiguousFile') return void e.resume();
      mkdirSync(join(dir, ...parts.slice(0, -1)), { recursive: true });
      const fd = openSync(target, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, 0o600);
      e.on('data', (c: Buffer) => writeSync(fd, c));
      e.on('end', () => closeSync(fd));
    } catch (err) {
      failure ??= err instanceof ImageError ? err : new ImageError('IMAGE_CACHE_FAILED', `${ref}: unpacking the archive: ${(err as Error).message}`, { cause: err });
      e.resume();
    }
  });
  const done = new Promise<void>((resolve) => parser.on('end', () => resolve()));
  for await (const chunk of createReadStream(file)) {
    if (failure) break;
    if (!parser.write(chunk as Buffer)) await new Promise((r) => parser.once('drain', r));
  }
  if (!failure) {
    parser.end();
    await done;
  }
  if (failure) throw failure;
  return aliases;
}

/**
 * Opens `ref`. Archives are unpacked into `workDir` (a fresh directory the caller removes);
 * a layout directory is read where it is.
 */
export async function openImage(refText: string, workDir: string): Promise<OpenedImage> {
  const ref = parseRef(refText);
  if (!ref.path) throw new ImageError('IMAGE_NOT_FOUND', `${refText}: no path`);
  const st = statOrNull(ref.path);
  if (!st) throw new ImageError('IMAGE_NOT_FOUND', `${refText}: ${ref.path} does not exist`);
  if (st.isDirectory()) {
    if (ref.kind !== 'auto' && ref.kind !== 'oci') throw new ImageError('IMAGE_NOT_AN_IMAGE', `${refText}: ${ref.path} is a directory, not a ${ref.kind}`);
    return openLayout(ref.path, ref.tag, refText, 'oci');
  }
  if (!st.isFile()) throw new ImageError('IMAGE_NOT_AN_IMAGE', `${refText}: ${ref.path} is neither a directory nor a file`);
  if (ref.kind === 'oci') throw new ImageError('IMAGE_NOT_AN_IMAGE', `${refText}: ${ref.path} is a file, not an OCI layout directory`);
  const aliases = await extractArchive(ref.path, workDir, refText);
  const isOci = !!statOrNull(join(workDir, 'oci-layout'));
  const isDocker = !!statOrNull(join(workDir, 'manifest.json'));
  const kind: ImageKind = ref.kind !== 'auto' ? ref.kind : isOci ? 'oci-archive' : 'docker-archive';
  if (kind === 'oci-archive') {
    if (!isOci) throw new ImageError('IMAGE_NOT_AN_IMAGE', `${refText}: the archive has no oci-layout: not an oci-archive`);
    return { ...openLayout(workDir, ref.tag, refText, 'oci-archive'), kind };
  }
  if (!isDocker) throw new ImageError('IMAGE_NOT_AN_IMAGE', `${refText}: the archive has neither oci-layout nor manifest.json: not an image`);
  return openDockerArchive(workDir, aliases, ref.tag, refText);
}

/**
 * Streams a layer as a plain tar. The stored digest and the diff_id are checked when the
 * stream ends: a consumer that reads to the end gets IMAGE_DIGEST_MISMATCH for a layer that
 * is not what the image says (what it had made of it must then be thrown away).
 */
export async function* layerTar(layer: Layer, what: string): AsyncGenerator<Buffer> {
  let fd: number;
  try {
    fd = openSync(layer.file, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    throw new ImageError('IMAGE_BLOB_MISSING', `${what} (${layer.digest ?? layer.file}): ${(e as Error).message}`);
  }
  let compression = layer.compression;
  if (compression === 'detect') {
    const magic = Buffer.alloc(4);
    const n = readSync(fd, magic, 0, 4, 0);
    if (n >= 4 && magic.readUInt32BE(0) === 0x28b52ffd) throw new ImageError('IMAGE_UNSUPPORTED', `${what}: zstd layers are not supported`);
    compression = n >= 2 && magic[0] === 0x1f && magic[1] === 0x8b ? 'gzip' : 'none';
  }
  const stored = layer.digest ? parseDigest(layer.digest, what) : null;
  const rawHash = createHash(stored?.alg ?? 'sha256');
  const plainHash = createHash(parseDigest(layer.diffId, `${what} diff_id`).alg);
  let rawBytes = 0;
  const tap = new Transform({
    transform(c: Buffer, _enc, cb) {
      rawHash.update(c);
      rawBytes += c.length;
      cb(null, c);
    },
  });
  const file = createReadStream('', { fd, autoClose: true });
  const out = compression === 'gzip' ? pipeline(file, tap, createGunzip(), () => {}) : pipeline(file, tap, () => {});
  try {
    for await (const chunk of out) {
      plainHash.update(chunk as Buffer);
      yield chunk as Buffer;
    }
  } catch (e) {
    if (e instanceof ImageError) throw e;
    // A blob that does not decompress is most likely not the blob the manifest means: say so.
    if (stored) {
      const h = createHash(stored.alg);
      for await (const c of createReadStream('', { fd: openSync(layer.file, constants.O_RDONLY | constants.O_NOFOLLOW) })) h.update(c as Buffer);
      const got = `${stored.alg}:${h.digest('hex')}`;
      if (got !== stored.digest) throw new ImageError('IMAGE_DIGEST_MISMATCH', `${what}: blob ${stored.digest} has digest ${got}`);
    }
    throw new ImageError(compression === 'gzip' ? 'IMAGE_BAD_LAYER' : 'IMAGE_CACHE_FAILED', `${what} (${layer.digest ?? layer.file}): ${(e as Error).message}`, { cause: e });
  } finally {
    out.destroy();
  }
  const raw = `${stored?.alg ?? 'sha256'}:${rawHash.digest('hex')}`;
  if (stored && raw !== stored.digest) throw new ImageError('IMAGE_DIGEST_MISMATCH', `${what}: blob ${stored.digest} has digest ${raw}`);
  if (layer.size !== null && rawBytes !== layer.size) throw new ImageError('IMAGE_DIGEST_MISMATCH', `${what}: blob ${layer.digest} has ${rawBytes} bytes, the manifest says ${layer.size}`);
  const plain = `${parseDigest(layer.diffId, what).alg}:${plainHash.digest('hex')}`;
  if (plain !== layer.diffId) throw new ImageError('IMAGE_DIGEST_MISMATCH', `${what}: unpacked, it has digest ${plain}, the config's diff_id is ${layer.diffId}`);
}

/** Reads every layer through its digests without unpacking it: what a submission checks. */
export async function verifyLayers(img: OpenedImage): Promise<void> {
  for (const [i, l] of img.layers.entries()) {
    for await (const chunk of layerTar(l, `${img.ref}: layer ${i}`)) void chunk;
  }
}
