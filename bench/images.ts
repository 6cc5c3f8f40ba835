// npm run bench:images -- [--json] [--rounds N] [--mib N]
// Image pack time, cold against cached: an image built here with umoci (busybox-static
// plus N MiB of files in 1000 files), as an OCI layout and as skopeo's oci-archive, through
// the real image cache. Cold: unpack every layer (digests checked) and pack the ext4 image
// QEMU attaches, in a fresh cache. Cached: what a job start does with the image ID stored
// at submission (a lookup), and with only the ref (the image opened again, archives
// unpacked to a temp dir to read them). Submit: what a submission checks (every digest).
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ImageCache } from '../sandbox-runtime/index.ts';
import { passableTmpDir } from './tmp.ts';

const { values } = parseArgs({ options: { json: { type: 'boolean', default: false }, rounds: { type: 'string', default: '3' }, mib: { type: 'string', default: '64' } } });
const rounds = Number(values.rounds);
const mib = Number(values.mib);
const say = (m: string): void => { if (!values.json) console.error(m); };
const sh = (cmd: string, args: string[]): void => {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
};

const dir = passableTmpDir('lodger-bench-images-');
try {
  const layout = join(dir, 'layout');
  const bundle = join(dir, 'bundle');
  sh('umoci', ['init', '--layout', layout]);
  sh('umoci', ['new', '--image', `${layout}:bench`]);
  sh('umoci', ['unpack', '--image', `${layout}:bench`, bundle]);
  const rfs = join(bundle, 'rootfs');
  mkdirSync(join(rfs, 'bin'), { recursive: true });
  copyFileSync('/bin/busybox', join(rfs, 'bin', 'busybox'));
  symlinkSync('busybox', join(rfs, 'bin', 'sh'));
  for (let d = 0; d < 10; d++) {
    mkdirSync(join(rfs, 'data', String(d)), { recursive: true });
    // Half random (does not compress), half text.
    for (let f = 0; f < 100; f++) writeFileSync(join(rfs, 'data', String(d), `f${f}`), f % 2 ? randomBytes(mib * 1048576 / 1000) : Buffer.alloc(mib * 1048576 / 1000, 'lodger '));
  }
  sh('umoci', ['repack', '--image', `${layout}:bench`, bundle]);
  sh('umoci', ['config', '--image', `${layout}:bench`, '--config.cmd', '/bin/sh']);
  const archive = join(dir, 'bench.oci.tar');
  sh('skopeo', ['--insecure-policy', 'copy', '-q', `oci:${layout}:bench`, `oci-archive:${archive}`]);

  const results: Record<string, Record<string, number[]>> = {};
  for (const [kind, ref] of [['oci layout', `oci:${layout}:bench`], ['oci-archive', `oci-archive:${archive}`]] as const) {
    const r: Record<string, number[]> = { cold: [], cachedById: [], cachedByRef: [], submitCheck: [] };
    for (let i = 0; i < rounds; i++) {
      const cdir = join(dir, `cache-${kind.replace(/\W/g, '')}-${i}`);
      const cache = ImageCache.open({ dir: cdir, maxBytes: 4 * 1024 ** 3, ext4: true });
      let t0 = performance.now();
      const cold = await cache.acquire(ref);
      r.cold!.push(performance.now() - t0);
      if (cold.fromCache) throw new Error('a fresh cache had the image');
      cold.release();
      t0 = performance.now();
      const byId = await cache.acquire(ref, cold.id);
      r.cachedById!.push(performance.now() - t0);
      byId.release();
      t0 = performance.now();
      const byRef = await cache.acquire(ref);
      r.cachedByRef!.push(performance.now() - t0);
      if (!byId.fromCache || !byRef.fromCache) throw new Error('not from the cache');
      byRef.release();
      t0 = performance.now();
      await cache.inspect(ref);
      r.submitCheck!.push(performance.now() - t0);
      say(`${kind} round ${i + 1}: cold ${r.cold!.at(-1)!.toFixed(0)} ms (unpack ${cold.meta.unpackMs.toFixed(0)}, ext4 ${cold.meta.packMs?.toFixed(0)}), cached by id ${r.cachedById!.at(-1)!.toFixed(2)} ms, by ref ${r.cachedByRef!.at(-1)!.toFixed(0)} ms, submit check ${r.submitCheck!.at(-1)!.toFixed(0)} ms`);
      rmSync(cdir, { recursive: true, force: true });
    }
    results[kind] = r;
  }
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const summary = Object.fromEntries(Object.entries(results).map(([k, r]) => [k, Object.fromEntries(Object.entries(r).map(([m, xs]) => [m, Math.round(median(xs) * 100) / 100]))]));
  if (values.json) console.log(JSON.stringify({ date: new Date().toISOString(), cpus: cpus().length, cpu: cpus()[0]?.model, mib, rounds, medianMs: summary, all: results }, null, 2));
  else {
    console.log(`image of ${mib} MiB in 1000 files + busybox; medians of ${rounds} rounds (ms):`);
    for (const [k, s] of Object.entries(summary)) console.log(`  ${k.padEnd(11)} cold ${s.cold}  cached by id ${s.cachedById}  cached by ref ${s.cachedByRef}  submit check ${s.submitCheck}`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
