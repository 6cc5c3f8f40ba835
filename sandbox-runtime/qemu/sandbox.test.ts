// QemuSandbox's lifecycle through fakes of QMP and the agent, with a shell loop standing
// in for the QEMU process (so pids, identity checks and exits are real).
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SandboxError, VmmExitedError } from '../errors.ts';
import { fakeQemuOptions } from './fakes.ts';
import { sandboxPaths } from './record.ts';
import { QemuRuntime, type HostedSandbox } from './runtime.ts';
import { canTransition, checkTransition, TRANSITIONS, type Phase } from './states.ts';

const spec = { id: 'u1', vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 512 };

async function booted(t: ExecutionContext, id = 'u1') {
  const f = fakeQemuOptions();
  const rt = new QemuRuntime(f.opts);
  const sb = await rt.create({ ...spec, id });
  await sb.start();
  // Whatever the test does, its stand-in VMM does not outlive it.
  const pid = sb.pid;
  t.teardown(() => { if (pid) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } } });
  const qmp = f.qmps.at(-1)!;
  // With fakes start() is done at once: wait until the launcher shell has exec'd the stand-in.
  for (let i = 0; i < 400 && readFileSync(`/proc/${sb.pid}/cmdline`, 'utf8').split('\0')[1] !== f.opts.host.qemuBinary; i++) await new Promise((r) => setTimeout(r, 5));
  // QMP quit ends QEMU: the stand-in ends the same way.
  qmp.onQuit = () => { if (sb.pid) process.kill(sb.pid, 'SIGTERM'); };
  return { ...f, rt, sb, qmp, agent: f.agents.at(-1)! };
}

const killLater = (sb: HostedSandbox): void => {
  if (sb.pid) { try { process.kill(sb.pid, 'SIGKILL'); } catch { /* gone */ } }
};

test('start boots through QMP and the agent; resizes go step by step through the vCPU strategy and virtio-mem', async (t) => {
  const { sb, agent } = await booted(t);
  try {
    t.is(sb.status().state, 'running');
    t.truthy(sb.pid);
    t.is(sb.vcpuUnplugMode, 'offline');
    const up = await sb.update({ vcpus: 2, memoryMiB: 384 });
    t.deepEqual(up.steps.map((s) => s.kind), ['vcpu-online', 'memory']);
    t.is(up.vcpus, 2);
    t.is(up.memoryMiB, 384);
    t.deepEqual(agent.calls.filter((c) => c.startsWith('setCpus')), ['setCpus 2']);
    const down = await sb.update({ vcpus: 1 });
    t.is(down.steps[0]!.kind, 'vcpu-offline');
    const e = await t.throwsAsync(sb.update({ memoryMiB: 385 }), { instanceOf: SandboxError });
    t.is(e?.code, 'SANDBOX_BAD_SPEC', 'not a 2 MiB step');
  } finally {
    await sb.stop({ graceMs: 0 });
  }
});

test('a resize is refused while the sandbox is being suspended; a failed save puts it back running, as SANDBOX_SUSPEND_FAILED', async (t) => {
  const { sb, qmp } = await booted(t);
  try {
    const suspending = sb.suspend();
    while (sb.status().state !== 'suspending') await new Promise((r) => setTimeout(r, 1));
    const refused = await t.throwsAsync(sb.update({ vcpus: 2 }), { instanceOf: SandboxError });
    t.is(refused?.code, 'SANDBOX_BAD_STATE');
    t.regex(refused!.message, /suspending/);
    qmp.migration = { status: 'failed', 'error-desc': 'disk full' };
    const failed = await t.throwsAsync(suspending, { instanceOf: SandboxError });
    t.is(failed?.code, 'SANDBOX_SUSPEND_FAILED');
    t.regex(failed!.message, /disk full/);
    t.is(sb.status().state, 'running');
    t.true(qmp.calls.includes('migrate_cancel'));
    t.is((await sb.update({ vcpus: 2 })).vcpus, 2, 'resizes work again');
  } finally {
    await sb.stop({ graceMs: 0 });
  }
});

test('suspend saves the VM and ends its VMM without ending the sandbox', async (t) => {
  const { sb, qmp, agent } = await booted(t);
  const pid = sb.pid!;
  qmp.migration = { status: 'completed' };
  const rep = await sb.suspend();
  t.is(rep.bytes, 4096);
  t.is(sb.status().state, 'suspended');
  t.is(sb.status().pid, null);
  t.false(existsSync(`/proc/${pid}/cmdline`) && spawnSync('kill', ['-0', String(pid)]).status === 0, 'the VMM is gone');
  t.is(agent.failure, null, 'what runs in the guest is not failed by the VMM going away');
  const early = await Promise.race([sb.wait().then(() => 'ended'), new Promise((r) => setTimeout(() => r('running on'), 300))]);
  t.is(early, 'running on');
  await sb.stop();
  t.true((await sb.wait()).expected);
  t.is(sb.status().state, 'stopped');
});

test('stop while paused goes straight to QMP quit (a paused guest cannot power off), without waiting out the grace', async (t) => {
  const { sb, qmp, agent } = await booted(t);
  await sb.pause();
  t.is(sb.status().state, 'paused');
  await t.throwsAsync(sb.exec({ argv: ['true'] }), { message: /paused/ });
  const t0 = performance.now();
  await sb.stop({ graceMs: 5000 });
  t.true(performance.now() - t0 < 2500, 'no grace period spent');
  t.false(agent.calls.includes('shutdown'), 'the paused guest was not asked to power off');
  t.true(qmp.calls.includes('quit'));
  t.is(sb.status().state, 'stopped');
  t.true((await sb.wait()).expected);
  t.false(existsSync(sb.paths.runDir), 'run files removed');
  await sb.stop(); // twice is fine
});

test('a VMM that dies is the sandbox\'s end: typed error to waiters, state failed, updates refused', async (t) => {
  const { sb, agent } = await booted(t);
  process.kill(sb.pid!, 'SIGKILL');
  const exit = await sb.wait();
  t.is(exit.signal, 'SIGKILL');
  t.false(exit.expected);
  t.is(sb.status().state, 'failed');
  t.true(agent.failure instanceof VmmExitedError);
  await t.throwsAsync(sb.update({ vcpus: 2 }), { instanceOf: VmmExitedError });
  await sb.stop();
  t.is(sb.status().state, 'failed');
});

test('attach to a dead pid, or to a live process that is not the sandbox\'s QEMU, is SANDBOX_GONE', async (t) => {
  const { opts } = fakeQemuOptions();
  const rt = new QemuRuntime(opts);
  const dead = spawnSync('true').pid!;
  for (const [id, pid] of [['dead', dead], ['impostor', process.pid]] as const) {
    const p = sandboxPaths(opts.host.runDir, id);
    mkdirSync(p.runDir, { recursive: true });
    writeFileSync(p.record, JSON.stringify({ spec: { ...spec, id }, limits: { maxVcpus: 2, maxMemoryMiB: 512 }, pid, state: 'running', vcpus: 1, memoryMiB: 256, baseMemTotalKiB: 0, wasPausedWhenSuspended: false }));
    const e = await t.throwsAsync(rt.attach(id), { instanceOf: SandboxError });
    t.is(e?.code, 'SANDBOX_GONE', id);
  }
  const none = await t.throwsAsync(rt.attach('never-was'), { instanceOf: SandboxError });
  t.is(none?.code, 'SANDBOX_GONE');
});

test('a new owner attaches to a released sandbox: same VMM, paused state kept', async (t) => {
  const { sb, rt, qmps } = await booted(t, 'adopt');
  await sb.pause();
  sb.release();
  const b = await rt.attach('adopt');
  try {
    t.is(b.pid, sb.pid);
    t.is(b.status().state, 'paused');
    t.deepEqual(qmps.at(-1)!.calls.slice(-2), ['cont', 'stop'], 'let run for the handshake, then paused again');
    await sb.stop(); // the released owner has nothing to stop
    t.is(b.status().state, 'paused');
  } finally {
    killLater(b);
  }
});

test('list() tells live VMMs from dead ones and half-started sandboxes; shutdown(id) removes what is left, idempotently', async (t) => {
  const { sb, rt, opts } = await booted(t, 'left');
  const pid = sb.pid!;
  sb.release(); // the owner crashed
  mkdirSync(join(opts.host.runDir, 'half'), { recursive: true });
  const listed = await rt.list();
  t.deepEqual(listed, [{ id: 'half', pid: null, state: null, alive: false }, { id: 'left', pid, state: 'running', alive: true }]);
  await rt.shutdown('left');
  t.not(spawnSync('kill', ['-0', String(pid)]).status, 0, 'the VMM is gone');
  t.false(existsSync(join(opts.host.runDir, 'left')));
  await rt.shutdown('left');
  await rt.shutdown('half');
  await rt.shutdown('no-such-sandbox');
  t.deepEqual(await rt.list(), []);
  const bad = await t.throwsAsync(rt.shutdown('../etc'), { instanceOf: SandboxError });
  t.is(bad?.code, 'SANDBOX_BAD_SPEC');
});

test('shutdown finds the VMM of a sandbox that had no record yet by its identity', async (t) => {
  const { sb, rt, opts } = await booted(t, 'early');
  const pid = sb.pid!;
  sb.release();
  const p = sandboxPaths(opts.host.runDir, 'early');
  spawnSync('rm', [p.record]);
  // No record, but its VMM runs from this run directory: list() finds it by its command line.
  t.deepEqual(await rt.list(), [{ id: 'early', pid, state: null, alive: true }]);
  await rt.shutdown('early');
  t.not(spawnSync('kill', ['-0', String(pid)]).status, 0);
});

test('state table: every state is reachable from created, terminal states lead nowhere, illegal moves are SANDBOX_BAD_STATE', async (t) => {
  const seen = new Set<Phase>(['created']);
  for (const todo: Phase[] = ['created']; todo.length;) {
    for (const n of TRANSITIONS[todo.pop()!]) if (!seen.has(n)) { seen.add(n); todo.push(n); }
  }
  t.deepEqual([...seen].sort(), Object.keys(TRANSITIONS).sort());
  for (const end of ['stopped', 'failed', 'released'] as const) t.deepEqual(TRANSITIONS[end], []);
  t.false(canTransition('suspended', 'running'), 'a suspended VM comes back only through resuming');
  const e = t.throws(() => checkTransition('x', 'stopped', 'running'), { instanceOf: SandboxError });
  t.is(e?.code, 'SANDBOX_BAD_STATE');
  // Through the sandbox: a second start, and pause before start, are refused.
  const { sb } = await booted(t, 'twice');
  try {
    t.is((await t.throwsAsync(sb.start(), { instanceOf: SandboxError }))?.code, 'SANDBOX_BAD_STATE');
    const fresh = await new QemuRuntime(fakeQemuOptions().opts).create(spec);
    t.is((await t.throwsAsync(fresh.pause(), { instanceOf: SandboxError }))?.code, 'SANDBOX_BAD_STATE');
  } finally {
    await sb.stop({ graceMs: 0 });
  }
});

test('a start that fails before QEMU runs ends the sandbox: wait() resolves and stop() returns', async (t) => {
  const { opts } = fakeQemuOptions();
  const sb = await new QemuRuntime(opts).create({ ...spec, id: 'nodisk', rootfsDir: '/nonexistent/rootfs' });
  const e = await t.throwsAsync(sb.start(), { instanceOf: SandboxError });
  t.is(e?.code, 'SANDBOX_BOOT_FAILED');
  t.is(sb.status().state, 'failed');
  t.false((await sb.wait()).expected);
  await sb.stop();
  t.is(sb.status().state, 'failed');
});
