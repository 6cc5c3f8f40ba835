// Jobs from OCI images against a real lodgerd on real QEMU sandboxes: a busybox-static
// image built here with umoci (two layers, the second deleting a file: a real whiteout),
// converted by skopeo to an oci-archive and a docker-archive, run with `lodger submit
// --image`; bad images are refused with the reason and leave nothing in the cache.
// Every process started here is stopped by pid.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, rmdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, TestDaemon } from '../bench/index.ts';
import { CgroupManager } from '../sandbox-runtime/index.ts';

const dir = mkdtempSync(join(tmpdir(), 'lodger-image-'));
const socket = join(dir, 'lodgerd.sock');
const state = join(dir, 'state');
const cgroupParent = `lodger-image-test-${process.pid}`;
const lodgerd = new TestDaemon(socket, ['--state-dir', state, '--policy-dir', join(dir, 'policies')]);
const lodger = (args: string[]): ReturnType<TestDaemon['lodger']> => lodgerd.lodger(args);
const haveTools = ['umoci', 'skopeo'].every((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status === 0);

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}

/** The image: busybox-static, a user, a file the second layer deletes. */
function buildImage(): { layout: string; ociArchive: string; dockerArchive: string } {
  const layout = join(dir, 'layout');
  const bundle = join(dir, 'bundle');
  sh('umoci', ['init', '--layout', layout]);
  sh('umoci', ['new', '--image', `${layout}:base`]);
  sh('umoci', ['unpack', '--image', `${layout}:base`, bundle]);
  const rfs = join(bundle, 'rootfs');
  mkdirSync(join(rfs, 'bin'), { recursive: true });
  mkdirSync(join(rfs, 'etc'), { recursive: true });
  mkdirSync(join(rfs, 'work'), { recursive: true });
  copyFileSync('/bin/busybox', join(rfs, 'bin', 'busybox'));
  for (const a of ['sh', 'echo', 'cat', 'id', 'pwd', 'test']) symlinkSync('busybox', join(rfs, 'bin', a));
  writeFileSync(join(rfs, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nworker:x:1234:1235::/work:/bin/sh\n');
  writeFileSync(join(rfs, 'etc', 'group'), 'root:x:0:\nworker:x:1235:\n');
  writeFileSync(join(rfs, 'etc', 'msg'), 'from the image\n');
  writeFileSync(join(rfs, 'etc', 'deleted'), 'must not be seen\n');
  // --refresh-bundle: the next repack diffs against this layer (else it replaces it).
  sh('umoci', ['repack', '--refresh-bundle', '--image', `${layout}:base`, bundle]);
  unlinkSync(join(rfs, 'etc', 'deleted'));
  sh('umoci', ['repack', '--image', `${layout}:base`, bundle]);
  sh('umoci', ['config', '--image', `${layout}:base`, '--config.cmd', 'sh', '--config.cmd', '-c',
    '--config.cmd', 'echo "hello $GREETING in $(pwd) as $(id -u):$(id -g)"; cat /etc/msg; test -e /etc/deleted || echo whiteout-applied',
    '--config.env', 'GREETING=image', '--config.workingdir', '/work', '--config.user', 'worker']);
  const ociArchive = join(dir, 'img.oci.tar');
  const dockerArchive = join(dir, 'img.docker.tar');
  sh('skopeo', ['--insecure-policy', 'copy', '-q', `oci:${layout}:base`, `oci-archive:${ociArchive}`]);
  sh('skopeo', ['--insecure-policy', 'copy', '-q', `oci:${layout}:base`, `docker-archive:${dockerArchive}:lodger/test:1`]);
  return { layout, ociArchive, dockerArchive };
}

function startDaemon(port: number): Promise<void> {
  const cfg = join(dir, 'lodgerd.yaml');
  writeFileSync(cfg, `warmPoolSize: 0\ncgroupParent: ${cgroupParent}\n`);
  mkdirSync(join(dir, 'policies'), { recursive: true });
  return lodgerd.start(['--config', cfg, '--metrics-address', `127.0.0.1:${port}`], 120_000);
}

const reasons = async (id: string): Promise<string> => {
  const jobs = JSON.parse((await lodger(['ps', '--all', '--json'])).stdout) as { id: string; transitions: { reason: string }[] }[];
  return jobs.find((j) => j.id === id)!.transitions.map((x) => x.reason).join(' | ');
};

test.after.always(async () => {
  await lodgerd.end();
  // A stopped lodgerd keeps its cgroup parent (and its sandboxes' groups, ended above).
  for (const p of new CgroupManager({ host: { root: '/sys/fs/cgroup', proc: '/proc' }, parent: cgroupParent }).parents.values()) {
    if (!existsSync(p)) continue;
    for (const d of readdirSync(p, { withFileTypes: true })) if (d.isDirectory()) try { rmdirSync(join(p, d.name)); } catch { /* busy */ }
    try { rmdirSync(p); } catch { /* busy */ }
  }
  rmSync(dir, { recursive: true, force: true });
});

test.serial('jobs run from an oci-archive and a docker-archive; the image config gives command, env, workdir and user; a cached image is not packed again', async (t) => {
  if (!haveTools) return t.fail('umoci and skopeo are needed (npm run setup installs them)');
  const img = buildImage();
  await startDaemon(await freePort());

  const a = await lodger(['submit', '--id', 'from-oci', '--image', `oci-archive:${img.ociArchive}`]);
  t.is(a.code, 0, a.stderr);
  t.is((await lodger(['wait', 'from-oci'])).code, 0, lodgerd.log);
  t.is((await lodger(['logs', 'from-oci'])).stdout, 'hello image in /work as 1234:1235\nfrom the image\nwhiteout-applied\n');
  t.regex(await reasons('from-oci'), /image sha256:[0-9a-f]{12} unpacked and packed in \d+ ms/);

  // The same image again: its root comes from the cache.
  await lodger(['submit', '--id', 'again', '--image', `oci-archive:${img.ociArchive}`, '--', 'sh', '-c', 'echo again']);
  t.is((await lodger(['wait', 'again'])).code, 0);
  t.regex(await reasons('again'), /from the cache in \d+ ms/);

  // A docker-archive; the job's command, env, workdir and user override the image's.
  const d = await lodger(['submit', '--id', 'from-docker', '--image', `docker-archive:${img.dockerArchive}`, '-e', 'GREETING=override', '--workdir', '/tmp', '--user', '0',
    '--', 'sh', '-c', 'echo "docker $GREETING in $(pwd) as $(id -u)"; cat /etc/msg; exit 7']);
  t.is(d.code, 0, d.stderr);
  t.is((await lodger(['wait', 'from-docker'])).code, 7);
  t.is((await lodger(['logs', 'from-docker'])).stdout, 'docker override in /tmp as 0\nfrom the image\n');
  const entries = readdirSync(join(state, 'images', 'entries'));
  t.true(entries.length >= 1 && entries.length <= 2, entries.join(','));
  t.deepEqual(readdirSync(join(state, 'images', 'tmp')), []);
});

test.serial('bad images are refused at submission with what is wrong, and nothing half-built stays in the cache', async (t) => {
  if (!haveTools || !lodgerd.running) return t.fail('needs the first test\'s daemon');
  const before = readdirSync(join(state, 'images', 'entries')).sort();
  const copy = (name: string): string => {
    const p = join(dir, name);
    cpSync(join(dir, 'layout'), p, { recursive: true });
    return p;
  };
  const manifest = (layout: string): { layers: { digest: string }[] } => {
    const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string; annotations?: Record<string, string> }[] };
    const base = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === 'base')!;
    return JSON.parse(readFileSync(join(layout, 'blobs', 'sha256', base.digest.slice(7)), 'utf8')) as { layers: { digest: string }[] };
  };
  const missing = copy('missing');
  const gone = manifest(missing).layers[0]!.digest;
  unlinkSync(join(missing, 'blobs', 'sha256', gone.slice(7)));
  const flipped = copy('flipped');
  const ls = manifest(flipped).layers;
  t.is(ls.length, 2, 'two layers: the second whites out /etc/deleted');
  const bad = ls[ls.length - 1]!.digest;
  const blobFile = join(flipped, 'blobs', 'sha256', bad.slice(7));
  const blob = readFileSync(blobFile);
  blob[Math.floor(blob.length / 2)] ^= 0xff;
  writeFileSync(blobFile, blob);
  mkdirSync(join(dir, 'plain'));
  writeFileSync(join(dir, 'junk.tar'), 'not an archive '.repeat(100));
  const cases: [string, RegExp][] = [
    [`oci:${missing}:base`, new RegExp(`IMAGE_BLOB_MISSING: .*layer 0 blob ${gone} is missing`)],
    [`oci:${flipped}:base`, new RegExp(`IMAGE_DIGEST_MISMATCH: .*blob ${bad} has digest sha256:`)],
    [join(dir, 'plain'), /IMAGE_NOT_AN_IMAGE: .*no oci-layout file/],
    [join(dir, 'junk.tar'), /IMAGE_NOT_AN_IMAGE: /],
    [`oci:${join(dir, 'layout')}:nosuchtag`, /IMAGE_NOT_FOUND: .*no manifest is named "nosuchtag" \(names: base\)/],
    [join(dir, 'does-not-exist'), /IMAGE_NOT_FOUND: .*does not exist/],
  ];
  for (const [ref, want] of cases) {
    const r = await lodger(['submit', '--image', ref, '--', 'true']);
    t.is(r.code, 1, `${ref}: ${r.stderr}`);
    t.regex(r.stderr, want, ref);
  }
  const ps = JSON.parse((await lodger(['ps', '--all', '--json'])).stdout) as unknown[];
  t.is(ps.length, 3, 'no bad image was queued');
  t.deepEqual(readdirSync(join(state, 'images', 'entries')).sort(), before);
  t.deepEqual(readdirSync(join(state, 'images', 'tmp')), []);
  await lodgerd.stop('SIGTERM');
});
