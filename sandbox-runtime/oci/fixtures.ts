// Test fixtures: tar streams written header by header (so tests can say what no honest
// tool writes: `..` names, links out of the root), and OCI layouts and docker archives
// made from them. For the unit tests next to this file and the suites under test/.
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { Header } from 'tar';
import type { ImageRunConfig } from './image.ts';

export interface TarEntry {
  path: string;
  type?: 'File' | 'Directory' | 'SymbolicLink' | 'Link' | 'CharacterDevice' | 'FIFO';
  body?: string | Buffer;
  linkpath?: string;
  mode?: number;
  uid?: number;
  gid?: number;
}

export function tarBytes(entries: TarEntry[]): Buffer {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const type = e.type ?? 'File';
    const body = type === 'File' ? Buffer.from(e.body ?? '') : Buffer.alloc(0);
    const h = new Header({
      path: e.path, type, size: body.length, linkpath: e.linkpath, mode: e.mode ?? (type === 'Directory' ? 0o755 : 0o644),
      uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: new Date(1_700_000_000_000), devmaj: 0, devmin: 0,
    });
    const block = Buffer.alloc(512);
    h.encode(block, 0);
    blocks.push(block, body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

export const sha256 = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export interface LayoutResult {
  manifestDigest: string;
  configDigest: string;
  layerDigests: string[];
  /** Host file of each layer blob. */
  layerFiles: string[];
  configFile: string;
  manifestFile: string;
}

/** Writes an OCI image layout of these plain layer tars (gzipped unless told), one manifest named `tag`. */
export function writeLayout(dir: string, layers: Buffer[], o: { config?: ImageRunConfig; tag?: string; gzip?: boolean; architecture?: string } = {}): LayoutResult {
  const blobs = join(dir, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  const put = (b: Buffer): { digest: string; file: string } => {
    const digest = sha256(b);
    const file = join(blobs, digest.slice(7));
    writeFileSync(file, b);
    return { digest, file };
  };
  const gz = o.gzip ?? true;
  const stored = layers.map((l) => (gz ? gzipSync(l) : l));
  const layerBlobs = stored.map(put);
  const config = Buffer.from(JSON.stringify({
    architecture: o.architecture ?? 'amd64', os: 'linux', config: o.config ?? { Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: layers.map(sha256) },
  }));
  const cfg = put(config);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cfg.digest, size: config.length },
    layers: stored.map((b, i) => ({ mediaType: `application/vnd.oci.image.layer.v1.tar${gz ? '+gzip' : ''}`, digest: layerBlobs[i]!.digest, size: b.length })),
  }));
  const man = put(manifest);
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(join(dir, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{
      mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: man.digest, size: manifest.length,
      annotations: { 'org.opencontainers.image.ref.name': o.tag ?? 'latest' },
    }],
  }));
  return { manifestDigest: man.digest, configDigest: cfg.digest, layerDigests: layerBlobs.map((b) => b.digest), layerFiles: layerBlobs.map((b) => b.file), configFile: cfg.file, manifestFile: man.file };
}

/** The files of a `docker save` archive (to be tarred), legacy layout: `<n>/layer.tar`, `<hex>.json`. */
export function writeDockerDir(dir: string, layers: Buffer[], o: { config?: ImageRunConfig; tag?: string } = {}): { configDigest: string } {
  mkdirSync(dir, { recursive: true });
  const config = Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux', config: o.config ?? { Cmd: ['/bin/sh'] }, rootfs: { type: 'layers', diff_ids: layers.map(sha256) },
  }));
  const cfgName = `${sha256(config).slice(7)}.json`;
  writeFileSync(join(dir, cfgName), config);
  const names = layers.map((l, i) => {
    mkdirSync(join(dir, `l${i}`));
    writeFileSync(join(dir, `l${i}`, 'layer.tar'), l);
    return `l${i}/layer.tar`;
  });
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify([{ Config: cfgName, RepoTags: [o.tag ?? 'test/image:latest'], Layers: names }]));
  return { configDigest: sha256(config) };
}
