import test from 'ava';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ServiceProcesses } from './process.ts';

/** A /proc and a cgroup tree in a temp dir: pid 10 (nginx master) with worker 11 (two threads), pid 20 (other). */
function fakeHost(): { proc: string; cgroupRoot: string; set(tid: string, runNs: number, waitNs: number): void } {
  const root = mkdtempSync(join(tmpdir(), 'lodger-proc-'));
  const proc = join(root, 'proc');
  const task = (pid: number, tid: number): string => join(proc, String(pid), 'task', String(tid));
  const procs = [{ pid: 10, ppid: 1, comm: 'nginx', tids: [10] }, { pid: 11, ppid: 10, comm: 'nginx', tids: [11, 12] }, { pid: 20, ppid: 1, comm: 'redis-server', tids: [20] }];
  for (const p of procs) {
    mkdirSync(join(proc, String(p.pid)), { recursive: true });
    writeFileSync(join(proc, String(p.pid), 'comm'), `${p.comm}\n`);
    writeFileSync(join(proc, String(p.pid), 'stat'), `${p.pid} (${p.comm}) S ${p.ppid} 1 1 0 -1\n`);
    for (const t of p.tids) {
      mkdirSync(task(p.pid, t), { recursive: true });
      writeFileSync(join(task(p.pid, t), 'schedstat'), '0 0 0\n');
    }
  }
  const cgroupRoot = join(root, 'cgroup');
  mkdirSync(join(cgroupRoot, 'cpu', 'system.slice', 'redis.service'), { recursive: true });
  writeFileSync(join(cgroupRoot, 'cpu', 'system.slice', 'redis.service', 'cgroup.procs'), '20\n');
  writeFileSync(join(root, 'nginx.pid'), '10\n');
  const where: Record<string, string> = { 10: task(10, 10), 11: task(11, 11), 12: task(11, 12), 20: task(20, 20) };
  return { proc, cgroupRoot, set: (tid, run, wait) => writeFileSync(join(where[tid]!, 'schedstat'), `${run} ${wait} 5\n`) };
}

test('finds a service by pid file (with its children), by name and by systemd unit or cgroup', (t) => {
  const h = fakeHost();
  const paths = { proc: h.proc, cgroupRoot: h.cgroupRoot };
  t.deepEqual(new ServiceProcesses({ pidFile: join(h.proc, '..', 'nginx.pid') }, paths).pids(), [10, 11]);
  t.deepEqual(new ServiceProcesses({ exe: 'nginx' }, paths).pids(), [10, 11]);
  t.deepEqual(new ServiceProcesses({ systemdUnit: 'redis.service' }, paths).pids(), [20]);
  t.deepEqual(new ServiceProcesses({ cgroup: '/system.slice/redis.service', exe: 'nginx' }, paths).pids(), [10, 11, 20]);
  t.deepEqual(new ServiceProcesses({ exe: 'nothing' }, paths).pids(), []);
  rmSync(join(h.proc, '..'), { recursive: true, force: true });
});

test('CPU use and run delay over every thread, from schedstat, over at least 200 ms', (t) => {
  const h = fakeHost();
  let now = 0;
  const p = new ServiceProcesses({ exe: 'nginx' }, { proc: h.proc, cgroupRoot: h.cgroupRoot }, () => now);
  t.like(p.read(), { cpuUse: null, runDelayPct: null, pids: 2, error: null });
  now = 50;
  h.set('11', 50e6, 5e6); // 50 ms on a CPU, 5 ms waiting
  t.is(p.read().cpuUse, null, 'too short a span');
  now = 200;
  h.set('12', 30e6, 15e6);
  h.set('10', 20e6, 0);
  const r = p.read();
  t.is(r.cpuUse!.toFixed(2), '0.50', '100 ms of CPU in 200 ms');
  t.is(r.runDelayPct!.toFixed(1), '10.0', '20 ms of waiting in 200 ms');
  const none = new ServiceProcesses({ exe: 'nothing' }, { proc: h.proc, cgroupRoot: h.cgroupRoot }, () => now).read();
  t.like(none, { cpuUse: null, pids: 0 });
  t.regex(none.error!, /no process found/);
  rmSync(join(h.proc, '..'), { recursive: true, force: true });
});
