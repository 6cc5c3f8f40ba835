import test from 'ava';
import { spawnSync } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { constants, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TtrpcClient, TtrpcError } from '../../lib/index.ts';
import type { ApiClient } from '../cli/index.ts';
import { ArgsError, BundleError, encodeForward, jobFromConfig, jobIdFor, mountArgs, parseArgs, shimChecks, socketPath, TASK_SERVICE, taskCodecs } from './index.ts';
import { shimServer } from './service.ts';

test('the command line containerd 1.6 writes parses; a bad one says why', (t) => {
  t.like(parseArgs(['-namespace', 'k8s.io', '-address', '/run/containerd/containerd.sock', '-publish-binary', '/usr/bin/containerd', '-id', 'abc', '-debug', 'start']),
    { namespace: 'k8s.io', address: '/run/containerd/containerd.sock', publishBinary: '/usr/bin/containerd', id: 'abc', debug: true, action: 'start' });
  t.like(parseArgs(['--namespace=default', '-address', 'a', '-publish-binary', 'b', '-id', 'x', '-bundle', '/b', 'delete']), { namespace: 'default', bundle: '/b', action: 'delete' });
  t.throws(() => parseArgs(['-namespace', 'n', '-id', 'x', 'frobnicate']), { instanceOf: ArgsError, message: /start or delete/ });
  t.throws(() => parseArgs(['-namespace', 'n', '-nope', 'x', 'start']), { instanceOf: ArgsError, message: /unknown flag -nope/ });
  t.throws(() => parseArgs(['-namespace']), { instanceOf: ArgsError, message: /needs a value/ });
  t.throws(() => parseArgs(['-id', 'x', 'start']), { instanceOf: ArgsError, message: /-namespace and -id/ });
  const long = socketPath({ address: '/x'.repeat(200), namespace: 'n'.repeat(100), id: 'i'.repeat(76) }, '/run/lodger/shim');
  t.true(long.length < 108);
  t.not(long, socketPath({ address: '/x', namespace: 'n', id: 'other' }, '/run/lodger/shim'));
});

test('config.json becomes a job spec: args, env, cwd, user, root, limits; what Lodger cannot carry is listed', (t) => {
  const { spec, ignored } = jobFromConfig({
    process: { args: ['sh', '-c', 'echo hi'], env: ['PATH=/bin', 'A=b=c', 'bad-name=1', 'EMPTY'], cwd: '/work', user: { uid: 1000, gid: 100, additionalGids: [5] } },
    root: { path: 'rootfs' },
    linux: { resources: { memory: { limit: 300 * 1024 * 1024 + 5 }, cpu: { quota: 150_000, period: 100_000 } } },
  }, '/b', 'c1');
  t.deepEqual(spec, {
    name: 'c1', command: ['sh', '-c', 'echo hi'], env: { PATH: '/bin', A: 'b=c', EMPTY: '' }, workdir: '/work', user: '1000:100', rootfs: '/b/rootfs',
    vcpus: { min: 1, max: 2 }, memoryMib: { min: 300, max: 300 },
  });
  t.deepEqual(ignored, ['env "bad-name" (not a variable name Lodger passes)', 'process.user.additionalGids']);
  t.like(jobFromConfig({ process: { args: ['true'] }, root: { path: '/abs/root' } }, '/b', 'c').spec, { rootfs: '/abs/root', workdir: '/', user: '0:0', memoryMib: { min: 256, max: 512 } });
  t.throws(() => jobFromConfig({ process: { args: [] } }, '/b', 'c'), { instanceOf: BundleError, message: /must name a program/ });
  t.throws(() => jobFromConfig({ process: { args: ['sh'], terminal: true } }, '/b', 'c'), { instanceOf: BundleError, message: /terminal/ });
  t.throws(() => jobFromConfig({ process: { args: ['sh'], cwd: 'rel' } }, '/b', 'c'), { instanceOf: BundleError, message: /cwd must be absolute/ });
  t.throws(() => jobFromConfig({ process: { args: ['sh'], user: { uid: -1 } } }, '/b', 'c'), { instanceOf: BundleError, message: /uid and gid/ });
  t.throws(() => jobFromConfig([], '/b', 'c'), { instanceOf: BundleError });
});

test('job ids fit lodgerd\'s rule and differ per run; mounts become mount(8) arguments', (t) => {
  const a = jobIdFor('k8s.io', `${'x'.repeat(70)}/y`);
  t.regex(a, /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/);
  t.not(jobIdFor('default', 'c'), jobIdFor('default', 'c'));
  t.regex(jobIdFor('_ns', 'c'), /^c/);
  t.deepEqual(mountArgs({ type: 'overlay', source: 'overlay', options: ['index=off', 'workdir=/w', 'upperdir=/u', 'lowerdir=/l1:/l2'] }, '/t'),
    ['-t', 'overlay', '-o', 'index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2', 'overlay', '/t']);
  t.deepEqual(mountArgs({ type: 'bind', source: '/snap', options: ['rbind', 'rw'] }, '/t'), ['-o', 'rbind,rw', '/snap', '/t']);
  t.deepEqual(mountArgs({ type: 'bind', source: '/snap', options: [] }, '/t'), ['-o', 'bind', '/snap', '/t']);
  t.throws(() => mountArgs({ type: 'overlay', source: 'o', options: ['a,b'] }, '/t'), { instanceOf: BundleError });
});

test('a task event is a ForwardRequest containerd\'s Events service reads (checked with the vendored events.proto)', async (t) => {
  const protoLoader = await import('@grpc/proto-loader');
  const def = protoLoader.loadSync('github.com/containerd/containerd/api/services/ttrpc/events/v1/events.proto', {
    includeDirs: [join(import.meta.dirname, 'proto')], keepCase: false, longs: Number, defaults: true,
  });
  const forward = (def['containerd.services.events.ttrpc.v1.Events'] as unknown as Record<string, { requestDeserialize(b: Buffer): unknown }>).Forward!;
  const req = forward.requestDeserialize(encodeForward('ns1', { topic: '/tasks/exit', containerId: 'c1', pid: 42, exitStatus: 3, exitedAtMs: 1_700_000_000_123 }, 1_700_000_000_500)) as {
    envelope: { timestamp: { seconds: number; nanos: number }; namespace: string; topic: string; event: { typeUrl?: string; type_url?: string; value: Buffer } };
  };
  t.like(req.envelope, { namespace: 'ns1', topic: '/tasks/exit', timestamp: { seconds: 1_700_000_000, nanos: 500_000_000 } });
  t.is(req.envelope.event.typeUrl ?? req.envelope.event.type_url, 'containerd.events.TaskExit');
  // TaskExit{container_id 1, id 2, pid 3, exit_status 4, exited_at 5}
  const v = req.envelope.event.value;
  t.true(v.includes(Buffer.from([0x0a, 0x02, 0x63, 0x31, 0x12, 0x02, 0x63, 0x31, 0x18, 42, 0x20, 3, 0x2a])));
});

/** A fake lodgerd: SubmitJob, StreamLogs (the given output, then its end), WaitJob, SignalJob. */
function fakeApi(exitCode: number) {
  const calls: string[] = [];
  let finish!: () => void;
  const finished = new Promise<void>((r) => { finish = r; });
  const api = {
    call: async (method: string, req: { id?: string; signal?: number }) => {
      calls.push(`${method}${req.signal ? ` ${req.signal}` : ''}`);
      if (method === 'WaitJob') {
        await finished;
        return { id: req.id, state: exitCode ? 'failed' : 'succeeded', exitCode, hasExitCode: true, error: '' };
      }
      if (method === 'SignalJob') finish();
      if (method === 'GetJobStats') return { id: req.id, cpuUsageNs: 12345, memoryUsedBytes: 1 << 20, memoryLimitBytes: 256 << 20 };
      return { id: req.id, state: 'running' };
    },
    stream: (method: string, req: { id?: string; command?: string[] }) => {
      const s = new EventEmitter();
      if (method === 'ExecInJob') {
        calls.push(`ExecInJob ${req.id} ${JSON.stringify(req.command)}`);
        setImmediate(() => {
          s.emit('data', { stream: 'stdout', data: Buffer.from('probe\n') });
          s.emit('data', { stream: 'exit', exitCode: 4 });
          s.emit('end');
        });
        return s;
      }
      setImmediate(() => {
        s.emit('data', { stream: 'stdout', data: Buffer.from('out\n') });
        s.emit('data', { stream: 'stderr', data: Buffer.from('err\n') });
        void finished.then(() => s.emit('end'));
      });
      return s;
    },
    close: () => {},
  };
  return { api: api as unknown as ApiClient, calls, finish };
}

test('the Task service over ttrpc: Create, Wait before Start, Start, output to the FIFOs, Kill, exit status, Delete, Shutdown', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lodger-shim-unit-'));
  const bundle = join(dir, 'bundle');
  mkdirSync(join(bundle, 'rootfs', 'bin'), { recursive: true });
  writeFileSync(join(bundle, 'config.json'), JSON.stringify({ process: { args: ['sleep', '100'], env: ['PATH=/bin'], cwd: '/' }, root: { path: 'rootfs' } }));
  for (const f of ['stdin', 'stdout', 'stderr']) t.is(spawnSync('mkfifo', [join(dir, f)]).status, 0);
  const { api, calls } = fakeApi(143);
  let shutdown = 0;
  const log: string[] = [];
  const server = shimServer({ api, socket: '/fake', namespace: 'ns', log: (m) => log.push(m), publish: async () => {}, version: 'test', onShutdown: () => { shutdown++; } });
  const sock = join(dir, 'shim.sock');
  await server.listen(sock);
  const client = await TtrpcClient.connect(sock);
  const codecs = taskCodecs();
  const call = <T = Record<string, unknown>>(m: string, req: unknown): Promise<T> => client.unary<T>(TASK_SERVICE, m, codecs[m]!, req);
  // Read the FIFOs as containerd does: opened non-blocking, so neither side waits on the other.
  const read = (f: string): Promise<string> => new Promise((resolve) => {
    let s = '';
    const sock = new Socket({ fd: openSync(join(dir, f), constants.O_RDWR | constants.O_NONBLOCK), readable: true, writable: false });
    sock.on('data', (b) => {
      s += b;
      if (s.endsWith('\n')) {
        sock.destroy();
        resolve(s);
      }
    });
  });
  const out = read('stdout');
  const err = read('stderr');

  const created = await call<{ pid: number }>('Create', { id: 'c1', bundle, rootfs: [], stdin: join(dir, 'stdin'), stdout: join(dir, 'stdout'), stderr: join(dir, 'stderr') });
  t.is(created.pid, process.pid);
  t.like(await call('State', { id: 'c1' }), { id: 'c1', status: 'CREATED', pid: process.pid });
  const again = await t.throwsAsync(call('Create', { id: 'c2', bundle, rootfs: [] }), { instanceOf: TtrpcError });
  t.is(again?.code, 'ALREADY_EXISTS');
  const nf = await t.throwsAsync(call('State', { id: 'other' }), { instanceOf: TtrpcError });
  t.is(nf?.code, 'NOT_FOUND');
  const badExec = await t.throwsAsync(call('Exec', { id: 'c1', execId: 'e0', spec: { typeUrl: 'x', value: Buffer.from('not json') } }), { instanceOf: TtrpcError });
  t.is(badExec?.code, 'INVALID_ARGUMENT');
  t.regex(badExec!.message, /not JSON/);

  const waited = call<{ exitStatus: number }>('Wait', { id: 'c1' });
  await call('Start', { id: 'c1' });
  t.like(await call('State', { id: 'c1' }), { status: 'RUNNING' });
  const jobId = readFileSync(join(bundle, 'lodger-job'), 'utf8');
  t.regex(jobId, /^ns\.c1-[0-9a-f]{8}$/);
  t.is(await out, 'out\n');
  t.is(await err, 'err\n');

  // An exec (CRI's exec probe): run in the job's sandbox by lodgerd, its output to its own FIFO, its exit status kept.
  t.is(spawnSync('mkfifo', [join(dir, 'estdout')]).status, 0);
  const eout = read('estdout');
  const proc = { args: ['sh', '-c', 'echo probe; exit 4'], env: ['A=b'], cwd: '/', user: { uid: 0, gid: 0 } };
  await call('Exec', { id: 'c1', execId: 'e1', stdout: join(dir, 'estdout'), spec: { typeUrl: 'types.containerd.io/opencontainers/runtime-spec/1/Process', value: Buffer.from(JSON.stringify(proc)) } });
  const dup = await t.throwsAsync(call('Exec', { id: 'c1', execId: 'e1', spec: { value: Buffer.from(JSON.stringify(proc)) } }), { instanceOf: TtrpcError });
  t.is(dup?.code, 'ALREADY_EXISTS');
  t.like(await call('State', { id: 'c1', execId: 'e1' }), { execId: 'e1', status: 'CREATED' });
  const ewait = call<{ exitStatus: number }>('Wait', { id: 'c1', execId: 'e1' });
  await call('Start', { id: 'c1', execId: 'e1' });
  t.is(await eout, 'probe\n');
  t.is((await ewait).exitStatus, 4);
  t.like(await call('State', { id: 'c1', execId: 'e1' }), { status: 'STOPPED', exitStatus: 4 });
  t.like(await call('Delete', { id: 'c1', execId: 'e1' }), { exitStatus: 4 });
  const gone = await t.throwsAsync(call('State', { id: 'c1', execId: 'e1' }), { instanceOf: TtrpcError });
  t.is(gone?.code, 'NOT_FOUND');
  t.like(await call('State', { id: 'c1' }), { status: 'RUNNING' }, 'the task runs on');
  // Stats: the sandbox's use from lodgerd, as a cgroups v1 Metrics (CPUStat 3 > CPUUsage 1 > total 1 = 12345).
  const st = await call<{ stats: { type_url: string; value: Buffer } }>('Stats', { id: 'c1' });
  t.is(st.stats.type_url, 'io.containerd.cgroups.v1.Metrics');
  t.true(Buffer.from(st.stats.value).includes(Buffer.from([0x1a, 0x05, 0x0a, 0x03, 0x08, 0xb9, 0x60])), Buffer.from(st.stats.value).toString('hex'));
  const running = await t.throwsAsync(call('Delete', { id: 'c1' }), { instanceOf: TtrpcError });
  t.is(running?.code, 'FAILED_PRECONDITION');
  const badSignal = await t.throwsAsync(call('Kill', { id: 'c1', signal: 99 }), { instanceOf: TtrpcError });
  t.is(badSignal?.code, 'INVALID_ARGUMENT');
  await call('Kill', { id: 'c1', signal: 15 });
  t.is((await waited).exitStatus, 143);
  t.like(await call('State', { id: 'c1' }), { status: 'STOPPED', exitStatus: 143 });
  await call('Shutdown', { id: 'c1' });
  t.is(shutdown, 0, 'a shim with its task not deleted keeps serving');
  t.like(await call('Delete', { id: 'c1' }), { pid: process.pid, exitStatus: 143 });
  t.false(existsSync(join(bundle, 'lodger-job')), 'a deleted task leaves no job for `delete` to cancel');
  await call('Shutdown', { id: 'c1' });
  t.is(shutdown, 1);
  t.deepEqual(calls.filter((c) => c !== 'WaitJob'), ['GetStatus', 'SubmitJob', `ExecInJob ${jobId} ["sh","-c","echo probe; exit 4"]`, 'GetJobStats', 'SignalJob 15']);
  t.true(log.some((l) => l.startsWith('← Wait ok {"exitStatus":143')), log.join('\n'));
  client.close();
  await server.close();
});

test('Create refuses a bundle that cannot run, with the reason', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lodger-shim-unit-'));
  const { api } = fakeApi(0);
  const server = shimServer({ api, socket: '/fake', namespace: 'ns', log: () => {}, publish: async () => {}, version: 'test', onShutdown: () => {} });
  const sock = join(dir, 'shim.sock');
  await server.listen(sock);
  const client = await TtrpcClient.connect(sock);
  const codecs = taskCodecs();
  const create = (bundle: string, extra = {}) => client.unary(TASK_SERVICE, 'Create', codecs.Create!, { id: 'c', bundle, rootfs: [], ...extra });
  const missing = await t.throwsAsync(create(join(dir, 'nope')), { instanceOf: TtrpcError });
  t.is(missing?.code, 'INVALID_ARGUMENT');
  t.regex(missing!.message, /config\.json/);
  mkdirSync(join(dir, 'b', 'rootfs'), { recursive: true });
  writeFileSync(join(dir, 'b', 'config.json'), JSON.stringify({ process: { args: ['true'] } }));
  const empty = await t.throwsAsync(create(join(dir, 'b')), { instanceOf: TtrpcError });
  t.is(empty?.code, 'FAILED_PRECONDITION');
  t.regex(empty!.message, /rootfs .* is empty/);
  const tty = await t.throwsAsync(create(join(dir, 'b'), { terminal: true }), { instanceOf: TtrpcError });
  t.is(tty?.code, 'INVALID_ARGUMENT');
  client.close();
  await server.close();
});

test('doctor: the shim on PATH and the CRI runtime in containerd\'s config, each with what to do', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lodger-shim-doctor-'));
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  const cfg = join(dir, 'config.toml');
  writeFileSync(cfg, 'version = 2\n');
  const none = shimChecks({ path: `/nonexistent:${bin}`, containerdConfig: cfg });
  t.like(none[0], { name: 'shim', ok: false, required: false });
  t.truthy(none[0]!.fix);
  t.like(none[1], { name: 'containerd', ok: false });
  writeFileSync(join(bin, 'containerd-shim-lodger-v2'), '#!/bin/sh\n', { mode: 0o755 });
  writeFileSync(cfg, '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.lodger]\n  runtime_type = "io.containerd.lodger.v2"\n');
  const ok = shimChecks({ path: bin, containerdConfig: cfg });
  t.like(ok[0], { ok: true, detail: `containerd-shim-lodger-v2 at ${join(bin, 'containerd-shim-lodger-v2')}` });
  t.like(ok[1], { ok: true });
  const missing = shimChecks({ path: bin, containerdConfig: join(dir, 'missing.toml') })[1]!;
  t.false(missing.ok);
  t.regex(missing.detail, /not found/);
});
