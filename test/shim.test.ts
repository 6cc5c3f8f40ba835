// containerd-shim-lodger-v2 against a real containerd (Debian's 1.6, a private instance
// with its own config, root and sockets), a real lodgerd and real QEMU sandboxes: an image
// built here from busybox-static is imported with ctr and run with `--runtime
// io.containerd.lodger.v2`, and a pod goes through containerd's CRI with runtime handler
// `lodger` (a grpc-js client standing in for the kubelet). Every process this test causes
// (containerd, each shim, lodgerd, each VMM) is stopped by its pid, also when a test fails.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildBusyboxImage, freePort, haveContainerd, mountsUnder, passableTmpDir, PrivateContainerd, runCmd as run, stopChild, TestDaemon } from '../bench/index.ts';
import { connect, type ApiClient } from '../daemon/index.ts';

const repo = join(import.meta.dirname, '..');
// Short: containerd's and the shims' unix socket paths must fit in 108 bytes.
const dir = passableTmpDir('/tmp/lshim-');
const lodgerSocket = join(dir, 'lodgerd.sock');
const NS = 'lodger-test';
const IMAGE = 'docker.io/lodger/busybox:shim-test';
const isRoot = process.getuid?.() === 0;

const containerd = new PrivateContainerd({ dir, lodgerSocket, sandboxImage: IMAGE });
const cdSocket = containerd.socket;
const lodgerd = new TestDaemon(lodgerSocket, ['--state-dir', join(dir, 'state'), '--policy-dir', join(dir, 'policies')]);
let api: ApiClient | null = null;

const shimPids = (): number[] => containerd.shimPids();

const ctr = (args: string[], timeoutMs?: number) => containerd.ctr(NS, args, timeoutMs);
const shimLog = (): string => containerd.shimLog();
const why = (r: { stdout: string; stderr: string }): string => `stdout: ${r.stdout}\nstderr: ${r.stderr}\nshims:\n${shimLog()}\nlodgerd:\n${lodgerd.log.slice(-4000)}`;

async function until<T>(what: string, fn: () => Promise<T | null | undefined | false> | T | null | undefined | false, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms\nshims:\n${shimLog()}\ncontainerd:\n${containerd.log.slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function startLodgerd(): Promise<void> {
  mkdirSync(join(dir, 'policies'));
  // No services and no CPU reserved: the controller grows a job's sandbox whenever the host has a CPU spare.
  writeFileSync(join(dir, 'policies', 'pool.yaml'), `apiVersion: lodger.dev/v1
kind: BatchPool
metadata: { name: shim-test }
spec:
  reserve: { cpus: 0, memory: 128Mi }
  sandbox: { minVcpus: 1, maxVcpus: 2, minMemory: 256Mi, maxMemory: 512Mi }
  growth: { cooldown: 1s }
`);
  const metrics = await freePort();
  // Its own cgroup parent (a Shutdown removes it) and no warm pool (the test starts its jobs cold).
  const config = join(dir, 'lodgerd.yaml');
  writeFileSync(config, `cgroupParent: lodger-shim-test-${process.pid}\nwarmPoolSize: 0\n`);
  await lodgerd.start(['-c', config, '--metrics-address', `127.0.0.1:${metrics}`], 60_000);
  api = connect(lodgerSocket);
}

test.before(async () => {
  if (!haveContainerd || !isRoot) return;
  await startLodgerd();
  await containerd.start();
});

test.after.always(async () => {
  // containerd first (it would start shims again), then shims, lodgerd with its sandboxes, VMMs.
  await containerd.stop();
  if (api) {
    await api.call('Shutdown', { drain: false }, 20_000).catch(() => {});
    api.close();
  }
  await stopChild(lodgerd.proc, null, 30_000);
  await lodgerd.end();
  for (const m of mountsUnder(dir).reverse()) spawnSync('umount', ['-l', m]);
  if (!process.env.LODGER_KEEP_TEST_DIR) rmSync(dir, { recursive: true, force: true });
});

const jobs = async (): Promise<{ id: string; state: string; exitCode: number; backend: string; error: string }[]> =>
  (await api!.call<{ jobs: { id: string; state: string; exitCode: number; backend: string; error: string }[] }>('ListJobs', { limit: 1000 })).jobs;

test.serial('an image built from busybox-static imports into the private containerd', async (t) => {
  if (!haveContainerd) return t.fail('containerd and ctr are needed (npm run setup installs Debian\'s containerd)');
  if (!isRoot) return t.fail('the shim mounts the container rootfs: run as root');
  const r = await ctr(['images', 'import', buildBusyboxImage(dir, IMAGE)]);
  t.is(r.code, 0, why(r));
  t.true((await ctr(['images', 'ls', '-q'])).stdout.split('\n').includes(IMAGE));
});

test.serial('ctr run --runtime io.containerd.lodger.v2 prints the output and returns the exit code of a Lodger job; nothing is left', async (t) => {
  if (!haveContainerd || !isRoot) return t.fail('see the first test');
  const r = await ctr(['run', '--runtime', 'io.containerd.lodger.v2', '--rm', IMAGE, 'hello', 'sh', '-c', 'echo hi; echo oops >&2; exit 3']);
  t.is(r.code, 3, why(r));
  t.is(r.stdout, 'hi\n', why(r));
  t.regex(r.stderr, /oops/);
  const job = (await jobs()).find((j) => j.id.startsWith(`${NS}.hello-`));
  t.truthy(job, 'the container ran as a lodgerd job');
  t.like(job, { state: 'failed', exitCode: 3, backend: 'qemu' });
  t.deepEqual((await ctr(['containers', 'ls', '-q'])).stdout.trim(), '');
  await until('the shim exited', () => shimPids().length === 0, 30_000);
  t.deepEqual(mountsUnder(dir), []);
  const status = await api!.call<{ sandboxes: unknown[] }>('GetStatus', {});
  t.deepEqual(status.sandboxes, []);
  t.regex(shimLog(), /← Wait ok \{"exitStatus":3/);
  t.regex(shimLog(), /exiting: Shutdown/);
});

test.serial('a long-running task shows in lodgerd while it runs and is grown by the controller; ctr task exec runs beside it; ctr task metrics reads its sandbox; ctr task kill ends it with SIGTERM; nothing is left', async (t) => {
  if (!haveContainerd || !isRoot) return t.fail('see the first test');
  const r = await ctr(['run', '-d', '--null-io', '--runtime', 'io.containerd.lodger.v2', IMAGE, 'sleeper', 'sleep', '600']);
  t.is(r.code, 0, why(r));
  const job = await until('the job runs', async () => (await jobs()).find((j) => j.id.startsWith(`${NS}.sleeper-`) && j.state === 'running'));
  // In the control loop like any job: with a CPU to spare, the controller grows its sandbox to its most vCPUs.
  const grown = await until('the controller grew the sandbox', async () => {
    const st = await api!.call<{ sandboxes: { jobId: string; backend: string; vcpus: number; maxVcpus: number }[] }>('GetStatus', {});
    return st.sandboxes.find((s) => s.jobId === job.id && s.vcpus === 2);
  });
  t.like(grown, { backend: 'qemu', maxVcpus: 2 });
  t.regex((await lodgerd.lodger(['ps'])).stdout, new RegExp(`^${job.id.replaceAll('.', '\\.')} +running `, 'm'), 'lodger ps lists it');
  t.regex((await ctr(['task', 'ls'])).stdout, /sleeper\s+\d+\s+RUNNING/);
  t.is(shimPids().length, 1);
  // An exec runs in the task's sandbox beside its command: its output and exit code come back, the task runs on.
  const ex = await ctr(['task', 'exec', '--exec-id', 'probe1', 'sleeper', 'sh', '-c', 'echo "from exec $(cat /proc/1/comm)"; echo oops >&2; exit 5']);
  t.is(ex.code, 5, why(ex));
  t.regex(ex.stdout, /^from exec \S+\n$/);
  t.regex(ex.stderr, /oops/);
  t.regex((await ctr(['task', 'ls'])).stdout, /sleeper\s+\d+\s+RUNNING/);
  // Metrics (the shim's Stats) are the sandbox's, as lodgerd measures them.
  const m = await ctr(['task', 'metrics', 'sleeper']);
  t.is(m.code, 0, why(m));
  t.regex(m.stdout, /memory\.usage_in_bytes\s+[1-9]\d*/, m.stdout);
  t.regex(m.stdout, /memory\.limit_in_bytes\s+[1-9]\d*/, m.stdout);
  t.regex(m.stdout, /cpuacct\.usage\s+[1-9]\d*/, m.stdout);
  const k = await ctr(['task', 'kill', 'sleeper']);
  t.is(k.code, 0, why(k));
  await until('the task stopped', async () => /sleeper\s+\d+\s+STOPPED/.test((await ctr(['task', 'ls'])).stdout));
  const del = await ctr(['task', 'delete', 'sleeper']);
  t.is(del.code, 0, why(del));
  t.regex(del.stderr, /exit code 143/); // ctr warns of the task's exit status (128 + SIGTERM)
  t.like((await jobs()).find((j) => j.id === job.id), { state: 'failed', exitCode: 128 + 15 });
  t.is((await ctr(['containers', 'rm', 'sleeper'])).code, 0);
  await until('the shim exited', () => shimPids().length === 0, 30_000);
  t.deepEqual(mountsUnder(dir), []);
  t.deepEqual((await api!.call<{ sandboxes: unknown[] }>('GetStatus', {})).sandboxes, []);
});

/** A CRI RuntimeService client on containerd's socket (the kubelet's side), from the vendored cri-api proto. */
function criClient(): { call: <T>(method: string, req: unknown) => Promise<T>; close: () => void } {
  const def = protoLoader.loadSync('k8s.io/cri-api/pkg/apis/runtime/v1/api.proto', {
    includeDirs: [join(repo, 'test', 'cri-proto')], keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { runtime: { v1: { RuntimeService: grpc.ServiceClientConstructor } } };
  const client = new pkg.runtime.v1.RuntimeService(`unix://${cdSocket}`, grpc.credentials.createInsecure());
  const c = client as unknown as Record<string, (req: unknown, meta: grpc.Metadata, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: unknown) => void) => void>;
  return {
    call: (method, req) => new Promise((resolve, reject) => {
      c[method]!.call(client, req, new grpc.Metadata(), { deadline: Date.now() + 120_000 }, (e, r) => (e ? reject(new Error(`${method}: ${e.details}`)) : resolve(r as never)));
    }),
    close: () => client.close(),
  };
}

test.serial('CRI: a pod with runtime_handler lodger runs a container to its exit code, its output in the CRI log file; ExecSync probes a running one and ContainerStats reads its sandbox; teardown leaves nothing', async (t) => {
  if (!haveContainerd || !isRoot) return t.fail('see the first test');
  const imp = await run('ctr', ['-a', cdSocket, '-n', 'k8s.io', 'images', 'import', join(dir, 'image.tar')]);
  t.is(imp.code, 0, why(imp));
  const cri = criClient();
  const logDir = join(dir, 'pods', 'pod1');
  mkdirSync(logDir, { recursive: true });
  const sandboxConfig = {
    metadata: { name: 'pod1', uid: 'uid-pod1', namespace: 'default', attempt: 0 }, hostname: 'pod1', logDirectory: logDir,
    linux: { securityContext: { namespaceOptions: { network: 'NODE', pid: 'NODE', ipc: 'NODE' } } },
  };
  try {
    const { podSandboxId } = await cri.call<{ podSandboxId: string }>('RunPodSandbox', { config: sandboxConfig, runtimeHandler: 'lodger' });
    t.truthy(podSandboxId);
    const { containerId } = await cri.call<{ containerId: string }>('CreateContainer', {
      podSandboxId, sandboxConfig,
      config: { metadata: { name: 'c1', attempt: 0 }, image: { image: IMAGE }, command: ['sh', '-c', 'echo from-cri; exit 7'], logPath: 'c1.log', linux: {} },
    });
    await cri.call('StartContainer', { containerId });
    const st = await until('the container exited', async () => {
      const r = await cri.call<{ status: { state: string; exitCode: number } }>('ContainerStatus', { containerId });
      return r.status.state === 'CONTAINER_EXITED' && r.status;
    }, 180_000);
    t.is(st.exitCode, 7);
    t.regex(readFileSync(join(logDir, 'c1.log'), 'utf8'), /stdout F from-cri\n/);
    t.like((await jobs()).find((j) => j.id.startsWith('k8s.io.')), { state: 'failed', exitCode: 7, backend: 'qemu' });
    t.is((await jobs()).filter((j) => j.id.startsWith('k8s.io.')).length, 1, 'the pod sandbox (pause) container is no job');
    await cri.call('RemoveContainer', { containerId });
    // An exec probe (ExecSync) on a running container: the kubelet's liveness and readiness checks.
    const { containerId: c2 } = await cri.call<{ containerId: string }>('CreateContainer', {
      podSandboxId, sandboxConfig,
      config: { metadata: { name: 'c2', attempt: 0 }, image: { image: IMAGE }, command: ['sleep', '600'], logPath: 'c2.log', linux: {} },
    });
    await cri.call('StartContainer', { containerId: c2 });
    await until('c2 running in lodgerd', async () => (await jobs()).some((j) => j.id.startsWith('k8s.io.') && j.state === 'running'));
    const probe = await cri.call<{ stdout: Buffer; stderr: Buffer; exitCode: number }>('ExecSync', { containerId: c2, cmd: ['sh', '-c', 'echo ready; exit 3'], timeout: 60 });
    t.is(probe.exitCode, 3);
    t.is(Buffer.from(probe.stdout).toString(), 'ready\n');
    const ok = await cri.call<{ stdout: Buffer; exitCode: number }>('ExecSync', { containerId: c2, cmd: ['sh', '-c', 'exit 0'], timeout: 60 });
    t.is(ok.exitCode, 0);
    // What the kubelet reads for the container (its eviction manager, kubectl top): the sandbox's CPU and memory.
    const { stats } = await cri.call<{ stats: { cpu: { usageCoreNanoSeconds: { value: number } | null }; memory: { workingSetBytes: { value: number } | null } } }>('ContainerStats', { containerId: c2 });
    t.true((stats.cpu.usageCoreNanoSeconds?.value ?? 0) > 0, JSON.stringify(stats));
    t.true((stats.memory.workingSetBytes?.value ?? 0) > 0, JSON.stringify(stats));
    await cri.call('StopContainer', { containerId: c2, timeout: 5 });
    await cri.call('RemoveContainer', { containerId: c2 });
    await cri.call('StopPodSandbox', { podSandboxId });
    await cri.call('RemovePodSandbox', { podSandboxId });
  } finally {
    cri.close();
  }
  await until('the shims exited', () => shimPids().length === 0, 30_000);
  t.deepEqual(mountsUnder(dir), []);
  t.deepEqual((await api!.call<{ sandboxes: unknown[] }>('GetStatus', {})).sandboxes, []);
});
