// lodgerd end to end: the real daemon on a temporary state directory and socket, real
// QEMU sandboxes, driven with the real CLI. Every process started here is stopped by pid.
import test from 'ava';
import { execSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { type CliResult, endSandboxes, freePort, passableTmpDir, TestDaemon } from '../bench/index.ts';
import { runscInstalled } from './helpers.ts';

const root = join(import.meta.dirname, '..');
const dir = passableTmpDir('lodger-daemon-');
const socket = join(dir, 'lodgerd.sock');
const policyDir = join(dir, 'policies');
mkdirSync(policyDir);
let metricsPort = 0;
const lodgerd = new TestDaemon(socket, ['--state-dir', join(dir, 'state'), '--policy-dir', policyDir]);
const startDaemon = (extra: string[] = []): Promise<void> => lodgerd.start(['--metrics-address', `127.0.0.1:${metricsPort}`, ...extra]);
const lodger = (args: string[], endpoint?: string[]): Promise<CliResult> => lodgerd.lodger(args, endpoint);

test.after.always(() => lodgerd.end());

test.serial('three jobs submitted with the CLI run to their exit codes, with logs and output files', async (t) => {
  metricsPort = await freePort();
  await startDaemon();
  const out = join(dir, 'out-a');
  const a = await lodger(['submit', '--id', 'job-a', '--output', out, '-e', 'GREETING=hi', '--', 'sh', '-c', 'echo "alpha $GREETING"; echo result > $LODGER_OUTPUT/a.txt']);
  t.is(a.code, 0, a.stderr);
  t.is(a.stdout.trim(), 'job-a');
  const b = await lodger(['submit', '--id', 'job-b', '--priority', '5', '--', 'sh', '-c', 'echo beta >&2; exit 3']);
  const c = await lodger(['submit', '--', 'sh', '-c', 'seq 1 5']);
  const cid = c.stdout.trim();
  t.regex(cid, /^sh-[0-9a-f]{8}$/);
  // Submitting the same id again with the same spec is a no-op.
  t.is((await lodger(['submit', '--id', 'job-b', '--priority', '5', '--', 'sh', '-c', 'echo beta >&2; exit 3'])).stdout.trim(), 'job-b');
  t.is(b.code, 0);

  t.is((await lodger(['wait', 'job-a'])).code, 0);
  t.is((await lodger(['wait', 'job-b'])).code, 3);
  t.is((await lodger(['wait', cid])).code, 0);
  t.is((await lodger(['logs', 'job-a'])).stdout, 'alpha hi\n');
  t.is((await lodger(['logs', 'job-b'])).stderr, 'beta\n');
  t.is((await lodger(['logs', cid])).stdout, '1\n2\n3\n4\n5\n');
  t.is(readFileSync(join(out, 'a.txt'), 'utf8'), 'result\n');

  const ps = JSON.parse((await lodger(['ps', '--all', '--json'])).stdout) as { id: string; state: string; transitions: { state: string }[] }[];
  t.deepEqual(ps.map((j) => j.id).sort(), [cid, 'job-a', 'job-b'].sort());
  t.deepEqual(ps.find((j) => j.id === 'job-b')!.transitions.map((x) => x.state), ['queued', 'starting', 'running', 'failed']);
});

test.serial('invalid requests get INVALID_ARGUMENT with the reason; unknown jobs NOT_FOUND', async (t) => {
  const bad = await lodger(['submit', '--memory', '100M', '--', 'true']);
  t.is(bad.code, 1);
  t.regex(bad.stderr, /spec\.memory 100:100 MiB: min must be >= 128/);
  const clash = await lodger(['submit', '--id', 'job-a', '--', 'false']);
  t.regex(clash.stderr, /job job-a exists with a different spec/);
  const missing = await lodger(['wait', 'no-such-job']);
  t.is(missing.code, 1);
  t.regex(missing.stderr, /no job no-such-job/);
  const status = JSON.parse((await lodger(['status', '--json'])).stdout) as { accelerator: string; jobsByState: Record<string, number> };
  t.regex(status.accelerator, /^(tcg|kvm)$/);
  t.is(status.jobsByState.succeeded, 2);
});

test.serial('Prometheus metrics: jobs by state, boot latency, transitions, the daemon\'s own process', async (t) => {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  t.regex(text, /^lodger_jobs\{state="succeeded"\} 2$/m);
  t.regex(text, /^lodger_jobs\{state="failed"\} 1$/m);
  t.regex(text, /^lodger_sandbox_boot_duration_seconds_count 3$/m);
  // The first job boots cold while the pool fills; the next ones take warm sandboxes.
  t.regex(text, /^lodger_job_start_seconds_count\{source="pool"\} [1-9]/m);
  t.regex(text, /^lodger_job_transitions_total\{state="running"\} 3$/m);
  t.regex(text, /^process_resident_memory_bytes \d+/m);
  t.regex(text, /^# HELP lodger_service_latency_seconds /m);
  // The node's batch capacity, for a cluster's extended-resource updater; the same in lodger status.
  const cpus = Number(/^lodger_batch_capacity_cpus ([\d.]+)$/m.exec(text)?.[1]);
  t.true(cpus >= 0 && cpus <= availableParallelism(), text.match(/^lodger_batch_capacity.*$/gm)?.join('\n'));
  t.regex(text, /^lodger_batch_capacity_memory_bytes [1-9]\d*$/m);
  t.regex((await lodger(['status'])).stdout, /^BATCH CAPACITY +[\d.]+ CPUs, \d+ MiB \(.+\)$/m);
});

(runscInstalled ? test.serial : test.serial.skip)('a job submitted with --runtime gvisor runs under gVisor beside the QEMU jobs of the same lodgerd; ps names each backend', async (t) => {
  const g = await lodger(['submit', '--id', 'on-gvisor', '--runtime', 'gvisor', '--', 'sh', '-c', 'echo "from $(uname -r)"']);
  t.is(g.code, 0, g.stderr);
  t.is((await lodger(['wait', 'on-gvisor'])).code, 0);
  // gVisor's sentry reports its own kernel release (4.4.0), the QEMU guest Lodger's kernel.
  t.regex((await lodger(['logs', 'on-gvisor'])).stdout, /^from 4\.4\.0/);
  const ps = JSON.parse((await lodger(['ps', '--all', '--json'])).stdout) as { id: string; backend: string }[];
  t.is(ps.find((j) => j.id === 'on-gvisor')?.backend, 'gvisor');
  t.is(ps.find((j) => j.id === 'job-a')?.backend, 'qemu');
  t.regex((await lodger(['ps', '--all'])).stdout, /on-gvisor +succeeded +0 +\S+ +gvisor /);
  t.true(existsSync(join(dir, 'state', 'run-gvisor')), 'the gVisor backend was opened on first use, with a run directory of its own');
});

test.serial('a second lodgerd on the same state directory is refused: the job store is locked, the message says so; the first serves on', async (t) => {
  const second = new TestDaemon(join(dir, 'second.sock'), ['--state-dir', join(dir, 'state'), '--policy-dir', policyDir]);
  try {
    const e = await t.throwsAsync(second.start(['--metrics-address', '']));
    t.regex(e!.message, /the job store .*jobs\.db is locked by another process/);
    t.not(second.proc?.exitCode, 0);
  } finally {
    await second.end();
  }
  t.is((await lodger(['status'])).code, 0);
  t.true(existsSync(socket), 'the first lodgerd\'s socket is untouched');
});

test.serial('lodger exec runs one more command in a running job\'s sandbox: its output apart from the job\'s, its exit code; a job not running is refused with the reason', async (t) => {
  t.is((await lodger(['submit', '--id', 'exec-host', '--', 'sh', '-c', 'echo started; sleep 60'])).code, 0);
  for (let i = 0; i < 600 && !/started/.test((await lodger(['logs', 'exec-host'])).stdout); i++) await new Promise((r) => setTimeout(r, 100));
  const r = await lodger(['exec', 'exec-host', '-e', 'WHO=probe', '--', 'sh', '-c', 'echo "$WHO sees $(ps | grep -c "sleep 60")"; echo err >&2; exit 3']);
  t.is(r.code, 3, r.stderr);
  t.regex(r.stdout, /^probe sees [1-9]/, 'it runs beside the job\'s command, in its sandbox');
  t.is(r.stderr, 'err\n');
  t.is((await lodger(['logs', 'exec-host'])).stdout, 'started\n', 'the job\'s log holds its own output only');
  const done = await lodger(['exec', 'job-a', '--', 'true']);
  t.is(done.code, 1);
  t.regex(done.stderr, /job job-a is succeeded: no sandbox runs a command for it/);
  t.regex((await lodger(['exec', 'no-such-job', '--', 'true'])).stderr, /no job no-such-job/);
  t.regex((await lodger(['exec', 'exec-host', '-e', '1X=y', '--', 'true'])).stderr, /env: "1X" is not a variable name/);
  t.is((await lodger(['cancel', 'exec-host'])).code, 0);
});

test.serial('lodger events streams job state changes as they happen', async (t) => {
  const child = spawn(process.execPath, [join(root, 'bin', 'lodger.js'), '--socket', socket, 'events', '--json'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let stdout = '';
  child.stdout.on('data', (b) => { stdout += b; });
  try {
    await new Promise((r) => setTimeout(r, 1500)); // let the stream open
    await lodger(['submit', '--id', 'watched', '--', 'true']);
    t.is((await lodger(['wait', 'watched'])).code, 0);
    for (let i = 0; i < 50 && !stdout.includes('"succeeded"'); i++) await new Promise((r) => setTimeout(r, 100));
  } finally {
    child.kill('SIGTERM');
  }
  const seen = stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { kind: string; jobId: string; state: string });
  t.deepEqual(seen.filter((e) => e.kind === 'job' && e.jobId === 'watched').map((e) => e.state), ['starting', 'running', 'succeeded']);
});

test.serial('policies reload on change and on SIGHUP; an invalid file is rejected with file:line and the previous policy stays', async (t) => {
  const { writeFileSync, unlinkSync } = await import('node:fs');
  const services = async (): Promise<string[]> => (JSON.parse((await lodger(['status', '--json'])).stdout) as { services: { name: string }[] }).services.map((x) => x.name);
  const web = 'apiVersion: lodger.dev/v1\nkind: OnlineService\nmetadata: { name: web }\nspec:\n  slo: { target: 50ms }\n  probe: { tcp: { address: "127.0.0.1:9" } }\n';
  writeFileSync(join(policyDir, 'web.yaml'), web);
  for (let i = 0; i < 50 && !(await services()).includes('web'); i++) await new Promise((r) => setTimeout(r, 100));
  t.deepEqual(await services(), ['web'], 'picked up on change');
  writeFileSync(join(policyDir, 'broken.yaml'), 'apiVersion: lodger.dev/v1\nkind: OnlineService\nmetadata: { name: x }\nspec:\n  slo: { target: soon }\n  probe: { tcp: { address: "127.0.0.1:9" } }\n');
  for (let i = 0; i < 50 && !lodgerd.log.includes('broken.yaml:5:'); i++) await new Promise((r) => setTimeout(r, 100));
  t.regex(lodgerd.log, /policy not reloaded \(changed on disk\): .*broken\.yaml:5:18: \/spec\/slo\/target: "soon" is not in the expected form/);
  t.deepEqual(await services(), ['web'], 'the previous policy stays in force');
  unlinkSync(join(policyDir, 'broken.yaml'));
  unlinkSync(join(policyDir, 'web.yaml'));
  lodgerd.proc!.kill('SIGHUP');
  for (let i = 0; i < 50 && (await services()).length; i++) await new Promise((r) => setTimeout(r, 100));
  t.regex(lodgerd.log, /policies loaded \((SIGHUP|changed on disk)\)/);
  t.deepEqual(await services(), []);
});

const killNine = (backend: 'qemu' | 'gvisor'): void => {
  const reg = backend === 'gvisor' && !runscInstalled ? test.serial.skip : test.serial;
  reg(`kill -9 of lodgerd while a job runs (${backend}): a restarted lodgerd takes the job up again, its output whole and nothing run twice`, async (t) => {
    const id = `long-${backend}`;
    const out = join(dir, `out-${id}`);
    // Writes while lodgerd is down too: that output must come back once, in order.
    await lodger(['submit', '--id', id, '--runtime', backend, '--output', out, '--', 'sh', '-c',
      'for i in $(seq 1 40); do echo "line $i"; echo "err $i" >&2; sleep 0.1; done; echo finished > $LODGER_OUTPUT/r.txt; exit 7']);
    for (let i = 0; i < 600 && !(await lodger(['logs', id])).stdout.includes('line 3\n'); i++) await new Promise((r) => setTimeout(r, 100));
    const { sandboxId } = JSON.parse((await lodger(['ps', '--all', '--json'])).stdout).find((j: { id: string }) => j.id === id) as { sandboxId: string };
    const vmm = Number(new RegExp(`\\[sandbox ${sandboxId}( gvisor)?\\] ready in \\d+ ms \\([^)]*pid (\\d+)\\)`).exec(lodgerd.log)?.[2]);
    t.true(vmm > 0 && existsSync(`/proc/${vmm}`), `the job's VMM runs (sandbox ${sandboxId})`);
    t.is((JSON.parse((await lodger(['ps', '--all', '--json'])).stdout) as { id: string; backend: string }[]).find((j) => j.id === id)?.backend, backend);
    await lodgerd.stop('SIGKILL');
    const before = (await lodger(['logs', id])).code; // the CLI cannot reach a dead daemon
    t.not(before, 0);
    await new Promise((r) => setTimeout(r, 1500));
    t.true(existsSync(`/proc/${vmm}`), 'the sandbox outlives the daemon');
    await startDaemon();
    t.true(lodgerd.log.includes(`job ${id}: taking up sandbox ${sandboxId}`));
    const w = await lodger(['wait', id, '--json']);
    const job = JSON.parse(w.stdout) as { state: string; attempts: number; exitCode: number; transitions: { state: string; reason: string }[] };
    t.is(job.state, 'failed', JSON.stringify(job.transitions));
    t.is(job.exitCode, 7);
    t.is(job.attempts, 1, 'not run a second time');
    t.is(job.transitions.filter((x) => x.state === 'starting').length, 1);
    const seq = Array.from({ length: 40 }, (_, i) => i + 1);
    const logs = await lodger(['logs', id]);
    t.is(logs.stdout, seq.map((i) => `line ${i}\n`).join(''), 'stdout whole, once, in order');
    t.is(logs.stderr, seq.map((i) => `err ${i}\n`).join(''), 'stderr whole, once, in order');
    t.is(readFileSync(join(out, 'r.txt'), 'utf8'), 'finished\n');
    for (let i = 0; i < 50 && existsSync(`/proc/${vmm}`); i++) await new Promise((r) => setTimeout(r, 100));
    t.false(existsSync(`/proc/${vmm}`), 'the VMM was stopped at the job\'s end');
    t.false(readFileSync('/proc/self/cgroup', 'utf8').split('\n').some((l) => existsSync(join('/sys/fs/cgroup', l.split(':')[1]?.split(',')[0] ?? 'x', l.split(':')[2] ?? '', 'lodger', `${backend === 'gvisor' ? 'gv' : 'sb'}-${sandboxId}`))),
      'and its cgroup removed');
  });
};
killNine('qemu');
killNine('gvisor');

test.serial('TCP listener: mutual TLS only; a client with a certificate from the CA gets in, others do not', async (t) => {
  const pki = join(dir, 'pki');
  mkdirSync(pki);
  const ssl = (args: string): void => { execSync(`openssl ${args}`, { cwd: pki, stdio: 'pipe' }); };
  for (const ca of ['ca', 'rogue-ca']) ssl(`req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=${ca} -keyout ${ca}.key -out ${ca}.pem`);
  writeFileSync(join(pki, 'san.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  for (const [name, ca] of [['server', 'ca'], ['client', 'ca'], ['rogue', 'rogue-ca']] as const) {
    ssl(`req -newkey rsa:2048 -nodes -subj /CN=${name} -keyout ${name}.key -out ${name}.csr`);
    ssl(`x509 -req -in ${name}.csr -CA ${ca}.pem -CAkey ${ca}.key -CAcreateserial -days 1 -out ${name}.pem${name === 'server' ? ' -extfile san.cnf' : ''}`);
  }
  const port = await freePort();
  const cfg = join(dir, 'tls.yaml');
  writeFileSync(cfg, `tlsCert: pki/server.pem\ntlsKey: pki/server.key\ntlsClientCa: pki/ca.pem\nwarmPoolSize: 0\n`);
  // TCP without TLS is refused at start, with the reason.
  writeFileSync(join(dir, 'plain.yaml'), `tcpAddress: 127.0.0.1:${port}\n`);
  const plain = spawnSync(process.execPath, [join(root, 'bin', 'lodgerd.js'), '--config', join(dir, 'plain.yaml'), '--state-dir', join(dir, 'state2'), '--socket', join(dir, 'plain.sock')], { encoding: 'utf8', timeout: 30_000 });
  t.is(plain.status, 2);
  t.regex(plain.stderr, /tcpAddress needs tlsCert, tlsKey and tlsClientCa/);

  await lodgerd.stop('SIGTERM');
  await startDaemon(['--config', cfg, '--tcp-address', `127.0.0.1:${port}`]);
  t.regex(lodgerd.log, new RegExp(`API also on 127.0.0.1:${port} \\(TCP, mutual TLS\\)`));
  const tcp = (who: string): string[] => ['--socket', `127.0.0.1:${port}`, '--tls-ca', join(pki, 'ca.pem'), '--tls-cert', join(pki, `${who}.pem`), '--tls-key', join(pki, `${who}.key`)];
  const ok = await lodger(['status', '--json'], tcp('client'));
  t.is(ok.code, 0, ok.stderr);
  t.truthy(JSON.parse(ok.stdout).jobsByState, 'status came back over TLS');
  const rogue = await lodger(['status', '--json'], tcp('rogue'));
  t.not(rogue.code, 0, 'a certificate from another CA is refused');
  const bare = await lodger(['status'], ['--socket', `127.0.0.1:${port}`]);
  t.is(bare.code, 1);
  t.regex(bare.stderr, /give --tls-ca, --tls-cert and --tls-key/);
  // The unix socket still serves.
  t.is((await lodger(['status', '--json'])).code, 0);
});

/** Pids of processes whose command line mentions `s` (a state directory of this suite). */
function vmmsOf(s: string): number[] {
  return readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number).filter((p) => {
    try { return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(`${s}/`) && readFileSync(`/proc/${p}/cmdline`, 'utf8').startsWith('qemu'); } catch { return false; }
  });
}

const stopDaemon = (sig: NodeJS.Signals): Promise<void> => lodgerd.stop(sig);

test.serial('stop semantics: SIGTERM stops the warm pool (also a sandbox still booting); a start after the state directory was removed still removes what a killed lodgerd left; lodger shutdown --drain lets the running job finish and leaves nothing', async (t) => {
  await stopDaemon('SIGTERM');
  const s1 = join(dir, 'stop-1');
  await startDaemon(['--state-dir', s1]);
  for (let i = 0; i < 100 && vmmsOf(s1).length === 0; i++) await new Promise((r) => setTimeout(r, 50));
  await stopDaemon('SIGTERM'); // the pool's first sandbox is still booting
  for (let i = 0; i < 50 && vmmsOf(s1).length; i++) await new Promise((r) => setTimeout(r, 100));
  t.deepEqual(vmmsOf(s1), [], 'no pool VMM outlives a SIGTERM');

  const s2 = join(dir, 'stop-2');
  await startDaemon(['--state-dir', s2]);
  for (let i = 0; i < 600 && !/\[sandbox pool-[0-9a-f]+\] ready/.test(lodgerd.log); i++) await new Promise((r) => setTimeout(r, 100));
  const [pool] = vmmsOf(s2);
  t.truthy(pool, 'the pool sandbox runs');
  await stopDaemon('SIGKILL');
  rmSync(s2, { recursive: true, force: true }); // the operator removes the state directory
  t.true(existsSync(`/proc/${pool}`), 'a killed lodgerd leaves its pool VMM');
  await startDaemon(['--state-dir', s2]);
  for (let i = 0; i < 50 && existsSync(`/proc/${pool}/cmdline`) && readFileSync(`/proc/${pool}/cmdline`, 'utf8').includes(s2); i++) await new Promise((r) => setTimeout(r, 100));
  t.false(existsSync(`/proc/${pool}/cmdline`) && readFileSync(`/proc/${pool}/cmdline`, 'utf8').includes(s2), 'the next start found it in /proc and removed it');

  await lodger(['submit', '--id', 'drained', '--', 'sh', '-c', 'sleep 3; echo drained']);
  for (let i = 0; i < 600 && !lodgerd.log.includes('job drained: running'); i++) await new Promise((r) => setTimeout(r, 100));
  const d = lodgerd.proc!;
  const exited = new Promise<number | null>((r) => d.once('exit', (code) => r(code)));
  const sd = await lodger(['shutdown', '--drain']);
  t.is(sd.code, 0, sd.stderr);
  t.regex(sd.stdout, /lodgerd stopped/);
  t.is(await exited, 0);
  t.regex(lodgerd.log, /job drained: succeeded \(exit 0\)/);
  t.regex(lodgerd.log, /shut down: no sandbox, cgroup or pool VMM left/);
  t.deepEqual(vmmsOf(s2), [], 'no VMM left');
});

test.serial('lodgerd --end-sandboxes ends what a killed lodgerd left, by id, and is refused while a lodgerd runs on the state directory', async (t) => {
  const s3 = join(dir, 'stop-3');
  await startDaemon(['--state-dir', s3]);
  for (let i = 0; i < 600 && !/\[sandbox pool-[0-9a-f]+\] ready/.test(lodgerd.log); i++) await new Promise((r) => setTimeout(r, 100));
  const [pool] = vmmsOf(s3);
  t.truthy(pool, 'the pool sandbox runs');
  const refused = await endSandboxes(['--state-dir', s3, '--policy-dir', policyDir]);
  t.is(refused.code, 1);
  t.regex(refused.log, /jobs\.db is locked by another process/);
  t.true(existsSync(`/proc/${pool}`), 'a running lodgerd\'s sandbox is left alone');
  await stopDaemon('SIGKILL');
  t.true(existsSync(`/proc/${pool}`), 'a killed lodgerd leaves its pool sandbox');
  const ended = await endSandboxes(['--state-dir', s3, '--policy-dir', policyDir]);
  t.is(ended.code, 0, ended.log);
  t.regex(ended.log, /sandbox pool-[0-9a-f]+ ended/);
  t.regex(ended.log, /1 sandbox\(es\) ended/);
  t.deepEqual(vmmsOf(s3), [], 'no VMM left');
  const again = await endSandboxes(['--state-dir', s3, '--policy-dir', policyDir]);
  t.regex(again.log, /0 sandbox\(es\) ended/, 'repeated, it finds nothing');
});
