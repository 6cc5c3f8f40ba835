// A private containerd (Debian's, its own config, root, state and sockets) with Lodger's
// shim on its PATH, and a busybox-static image built by hand as an OCI layout: what the
// shim test and bench:ctr share. Everything is stopped by its pid: containerd, and each
// shim found by its command line naming this instance's directory.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

const repo = join(import.meta.dirname, '..');

export const haveContainerd = spawnSync('sh', ['-c', 'command -v containerd && command -v ctr']).status === 0;

export interface RunResult { code: number | null; stdout: string; stderr: string }

/** Runs a command to its end, bounded: a hang shows as a failure with what was printed. */
export function runCmd(cmd: string, args: string[], timeoutMs = 240_000): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b) => { stdout += b; });
    child.stderr.on('data', (b) => { stderr += b; });
    const timer = setTimeout(() => { stderr += `\n[${cmd} killed after ${timeoutMs} ms]`; child.kill('SIGKILL'); }, timeoutMs);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

/** An OCI image layout built by hand (one layer, a busybox-static root, sha256 digests), as a tar for `ctr images import`. */
export function buildBusyboxImage(dir: string, name: string): string {
  const rootfs = join(dir, 'image-rootfs');
  for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev']) mkdirSync(join(rootfs, d), { recursive: true });
  cpSync('/bin/busybox', join(rootfs, 'bin', 'busybox'));
  for (const app of ['sh', 'echo', 'sleep', 'cat', 'ls']) symlinkSync('busybox', join(rootfs, 'bin', app));
  writeFileSync(join(rootfs, 'etc', 'passwd'), 'root:x:0:0:root:/:/bin/sh\n');
  const layout = join(dir, 'layout');
  const blobs = join(layout, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  const layerTar = join(dir, 'layer.tar');
  const tar = spawnSync('tar', ['-C', rootfs, '--numeric-owner', '--owner=0', '--group=0', '-cf', layerTar, '.'], { encoding: 'utf8' });
  if (tar.status !== 0) throw new Error(`tar: ${tar.stderr}`);
  const blob = (data: Buffer): { digest: string; size: number } => {
    const hex = createHash('sha256').update(data).digest('hex');
    writeFileSync(join(blobs, hex), data);
    return { digest: `sha256:${hex}`, size: data.length };
  };
  const layer = blob(readFileSync(layerTar));
  const config = blob(Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux', config: { Env: ['PATH=/bin'], Cmd: ['sh'] }, rootfs: { type: 'layers', diff_ids: [layer.digest] },
  })));
  const manifest = blob(Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
  })));
  writeFileSync(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(join(layout, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': 'lodger' } }],
  }));
  const archive = join(dir, 'image.tar');
  const t2 = spawnSync('tar', ['-C', layout, '-cf', archive, '.'], { encoding: 'utf8' });
  if (t2.status !== 0) throw new Error(`tar: ${t2.stderr}`);
  return archive;
}

export interface PrivateContainerdOptions {
  /** Its own directory (short: its sockets and the shims' must fit in 108 bytes). */
  dir: string;
  /** The lodgerd the shims talk to (LODGER_SOCKET in containerd's environment, passed on to them). */
  lodgerSocket: string;
  /** The CRI plugin's pause image. */
  sandboxImage: string;
}

export class PrivateContainerd {
  proc: ChildProcess | null = null;
  log = '';
  readonly socket: string;
  readonly shimLogFile: string;
  private readonly binDir: string;

  constructor(private readonly o: PrivateContainerdOptions) {
    this.socket = join(o.dir, 'cd.sock');
    this.shimLogFile = join(o.dir, 'shims.log');
    this.binDir = join(o.dir, 'bin');
  }

  async start(): Promise<void> {
    const { dir } = this.o;
    mkdirSync(this.binDir, { recursive: true });
    // containerd finds the shim as containerd-shim-lodger-v2 on its PATH, as setup installs it.
    symlinkSync(join(repo, 'bin', 'containerd-shim-lodger-v2.js'), join(this.binDir, 'containerd-shim-lodger-v2'));
    const config = join(dir, 'containerd.toml');
    writeFileSync(config, [
      'version = 2',
      `root = "${join(dir, 'cd-root')}"`,
      `state = "${join(dir, 'cd-state')}"`,
      // CRI: the Lodger runtime as handler `lodger`; pods on the host network, so no CNI is used.
      '[plugins."io.containerd.grpc.v1.cri"]', `  sandbox_image = "${this.o.sandboxImage}"`, '  restrict_oom_score_adj = true',
      // A config naming runtimes replaces the built-in list: runc (the default handler) is named too.
      '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]', '  runtime_type = "io.containerd.runc.v2"',
      '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.lodger]', '  runtime_type = "io.containerd.lodger.v2"',
      '[plugins."io.containerd.grpc.v1.cri".cni]', `  bin_dir = "${join(dir, 'cni-bin')}"`, `  conf_dir = "${join(dir, 'cni-conf')}"`,
      '[grpc]', `  address = "${this.socket}"`,
      '[ttrpc]', `  address = "${join(dir, 'cd-ttrpc.sock')}"`,
      '[debug]', '  level = "debug"',
      '',
    ].join('\n'));
    const cd = spawn('containerd', ['--config', config], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: {
        ...process.env, PATH: `${this.binDir}:${dirname(process.execPath)}:${process.env.PATH}`,
        LODGER_SOCKET: this.o.lodgerSocket, LODGER_SHIM_RUN_DIR: join(dir, 's'), LODGER_SHIM_LOG: this.shimLogFile,
      },
    });
    this.proc = cd;
    cd.stderr!.on('data', (b) => { this.log += b; });
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (cd.exitCode !== null) throw new Error(`containerd exited:\n${this.log}`);
      if (existsSync(this.socket) && (await runCmd('ctr', ['-a', this.socket, 'version'], 10_000)).code === 0) return;
      if (Date.now() > deadline) throw new Error(`containerd not serving within 60 s:\n${this.log.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  ctr(ns: string, args: string[], timeoutMs?: number): Promise<RunResult> {
    return runCmd('ctr', ['-a', this.socket, '-n', ns, ...args], timeoutMs);
  }

  shimLog(): string {
    return existsSync(this.shimLogFile) ? readFileSync(this.shimLogFile, 'utf8') : '(no shim log)';
  }

  /** Lodger shims of this instance still running (by their command line naming its bin directory). */
  shimPids(): number[] {
    return processesNaming(join(this.binDir, 'containerd-shim-lodger-v2')).filter((p) => p !== process.pid);
  }

  /** containerd first (it would start shims again), then every shim of ours, by pid. */
  async stop(): Promise<void> {
    await stopChild(this.proc, 'SIGTERM', 15_000);
    for (const pid of this.shimPids()) killPid(pid);
  }
}

/** Live (not zombie) processes whose command line holds `pattern`. */
export function processesNaming(pattern: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8');
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      if (cmd.includes(pattern) && !/\) Z /.test(stat)) out.push(Number(p));
    } catch { /* gone */ }
  }
  return out;
}

/** Mount points at or under `dir` (this process's mount table), outermost first. */
export function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(dir));
}

export function killPid(pid: number): void {
  try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
}

/** Waits for a child to exit (after `sig`, if given), at most `ms`; then SIGKILL by its pid. */
export async function stopChild(c: ChildProcess | null, sig: NodeJS.Signals | null, ms: number): Promise<void> {
  if (!c?.pid || c.exitCode !== null || c.signalCode !== null) return;
  const gone = new Promise<void>((r) => c.once('exit', () => r()));
  if (sig) c.kill(sig);
  await Promise.race([gone, new Promise((r) => setTimeout(r, ms))]);
  if (c.exitCode === null && c.signalCode === null) killPid(c.pid);
}
