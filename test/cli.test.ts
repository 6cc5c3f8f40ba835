// `lodger run` and `lodger doctor` as a user runs them: the real CLI, real QEMU.
import test from 'ava';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const cli = join(import.meta.dirname, '..', 'bin', 'lodger.js');

function lodger(args: string[], timeoutMs = 180_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b) => { stdout += b; });
    child.stderr.on('data', (b) => { stderr += b; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      killVmm(stderr);
      resolve({ code, stdout, stderr });
    });
  });
}

/** `run --verbose` names the QEMU pid; make sure it is gone even when a test fails. */
function killVmm(stderr: string): void {
  const pid = Number(/pid (\d+)\)/.exec(stderr)?.[1]);
  if (pid > 0) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
  }
}

test.serial('lodger run: a job in its own root filesystem, its output dir, its exit code', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lodger-cli-'));
  const rootfs = join(dir, 'rootfs');
  mkdirSync(join(rootfs, 'bin'), { recursive: true });
  copyFileSync('/bin/busybox', join(rootfs, 'bin', 'busybox'));
  for (const a of ['sh', 'cat', 'ls', 'echo', 'touch']) symlinkSync('busybox', join(rootfs, 'bin', a));
  writeFileSync(join(rootfs, 'data.txt'), 'from the job root\n');
  const out = join(dir, 'out');
  const r = await lodger(['run', '--verbose', '--rootfs', rootfs, '--output', out, '--', '/bin/sh', '-c',
    'cat /data.txt; touch /nope 2>/dev/null || echo "root is read-only"; echo result > $LODGER_OUTPUT/r.txt; exit 5']);
  t.is(r.code, 5, r.stderr);
  t.regex(r.stderr, /accelerator (tcg|kvm): /);
  t.is(r.stdout, 'from the job root\nroot is read-only\n');
  t.is(readFileSync(join(out, 'r.txt'), 'utf8'), 'result\n');
});

test.serial('lodger run: bad arguments are refused before anything boots', async (t) => {
  const r = await lodger(['run', '--memory', '12 parsecs', '--', 'true'], 30_000);
  t.not(r.code, 0);
  t.regex(r.stderr, /not a size/);
  const v = await lodger(['run', '--vcpus', '4', '--max-vcpus', '2', '--', 'true'], 30_000);
  t.is(v.code, 125);
  t.regex(v.stderr, /maxVcpus.*SANDBOX_BAD_SPEC/);
});

test.serial('lodger doctor --json names the accelerator and why', async (t) => {
  const r = await lodger(['doctor', '--json'], 60_000);
  const report = JSON.parse(r.stdout) as { ok: boolean; checks: { name: string; ok: boolean; detail: string }[] };
  const accel = report.checks.find((c) => c.name === 'accelerator')!;
  t.regex(accel.detail, /^(KVM|TCG): .+/);
  t.truthy(report.checks.find((c) => c.name === 'cgroups'));
  t.is(r.code, report.ok ? 0 : 1);
});

test.serial('lodger run: Ctrl-C tears the sandbox down (VMM gone, cgroup removed)', async (t) => {
  const child = spawn(process.execPath, [cli, 'run', '--verbose', '--', 'sh', '-c', 'echo started; sleep 120'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b) => { stderr += b; });
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  try {
    await new Promise<void>((resolve) => child.stdout.on('data', (b) => { if (String(b).includes('started')) resolve(); }));
    const pid = Number(/pid (\d+)\)/.exec(stderr)?.[1]);
    t.true(pid > 0, stderr);
    const cgroupLine = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => /:cpu:/.test(l) || /^0::/.test(l))!;
    child.kill('SIGINT');
    t.is(await exited, 130);
    t.false(existsSync(`/proc/${pid}`), 'QEMU is gone');
    const rel = cgroupLine.split(':')[2]!;
    const dir = cgroupLine.startsWith('0::') ? join('/sys/fs/cgroup', rel) : join('/sys/fs/cgroup/cpu', rel);
    t.false(existsSync(dir), `${dir} removed`);
  } finally {
    child.kill('SIGKILL');
    killVmm(stderr);
  }
});

test.serial('lodger policy validate: the examples pass; a broken file prints file:line:column and fails', async (t) => {
  const ok = await lodger(['policy', 'validate', 'policies/nginx.yaml', 'policies/redis.yaml', 'policies/batch.yaml'], 30_000);
  t.is(ok.code, 0, ok.stderr);
  t.regex(ok.stdout, /nginx\.yaml: ok \(OnlineService web\)/);
  const dir = mkdtempSync(join(tmpdir(), 'lodger-pol-'));
  const bad = join(dir, 'bad.yaml');
  writeFileSync(bad, 'apiVersion: lodger.dev/v1\nkind: OnlineService\nmetadata: { name: web }\nspec:\n  slo: { target: 5 ms }\n  probe: { tcp: { address: "127.0.0.1:80" } }\n');
  const r = await lodger(['policy', 'validate', bad], 30_000);
  t.is(r.code, 1);
  t.is(r.stderr.trim(), `${bad}:5:18: /spec/slo/target: "5 ms" is not in the expected form (e.g. 500us, 5ms, 1s, 2m)`);
  // A misspelt key is named at its own line, not as the alternative it left missing.
  const typo = join(dir, 'typo.yaml');
  writeFileSync(typo, 'apiVersion: lodger.dev/v1\nkind: OnlineService\nmetadata: { name: web }\nspec:\n  slo: { target: 5ms }\n  probee: { tcp: { address: "127.0.0.1:80" } }\n');
  const tr = await lodger(['policy', 'validate', typo], 30_000);
  t.is(tr.code, 1);
  t.is(tr.stderr.trim(), `${typo}:6:3: unknown key "probee" at /spec (did you mean "probe"?)`);
});
