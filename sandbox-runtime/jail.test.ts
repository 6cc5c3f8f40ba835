import test from 'ava';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { allocateUid, holdUid, releaseUid, type JailOptions } from './jail.ts';

// A host as the allocator sees it: a /proc with one process of a given uid, a lease
// directory, run directories. Each case its own uid range, since reservations are per process.
function host(base: number, procUids: number[] = []) {
  const dir = mkdtempSync(join(tmpdir(), 'lodger-jail-'));
  const proc = join(dir, 'proc');
  procUids.forEach((u, i) => {
    mkdirSync(join(proc, String(100 + i)), { recursive: true });
    writeFileSync(join(proc, String(100 + i), 'status'), `Name:\tqemu\nUid:\t${u}\t${u}\t${u}\t${u}\n`);
  });
  mkdirSync(proc, { recursive: true });
  const j: JailOptions = { uidBase: base, uidCount: 4, leases: join(dir, 'leases') };
  const run = (id: string): string => { const d = join(dir, 'run', id); mkdirSync(d, { recursive: true }); return d; };
  return { dir, proc, j, run, done: () => rmSync(dir, { recursive: true, force: true }) };
}

test('a uid is skipped while a process runs as it, a record holds it or another process\'s lease names a live run directory', (t) => {
  const h = host(5000, [5000]);
  const a = h.run('a');
  t.is(allocateUid(h.j, h.proc, new Set([5001]), a).uid, 5002, 'not the running one, not the recorded one');
  t.is(readlinkSync(join(h.j.leases!, '5002')), a);
  // Another process: it has no reservation of ours, only the lease to go by.
  releaseUid(h.j, 5002, a); // our reservation given back while `a` still exists: the lease stays
  t.true(existsSync(join(h.j.leases!, '5002')), 'a lease of a live run directory stays');
  const b = h.run('b');
  t.is(allocateUid(h.j, h.proc, new Set([5001]), b).uid, 5003);
  h.done();
});

test('a lease whose run directory is gone is stale: taken over; given back once the run directory is removed', (t) => {
  const h = host(6000);
  const a = h.run('a');
  t.is(allocateUid(h.j, h.proc, new Set(), a).uid, 6000);
  releaseUid(h.j, 6000, a);
  rmSync(a, { recursive: true });
  const b = h.run('b');
  t.is(allocateUid(h.j, h.proc, new Set(), b).uid, 6000, 'stale lease taken over');
  t.is(readlinkSync(join(h.j.leases!, '6000')), b);
  rmSync(b, { recursive: true });
  releaseUid(h.j, 6000, b);
  t.false(existsSync(join(h.j.leases!, '6000')), 'removed with its run directory');
  h.done();
});

test('holdUid (a sandbox taken up from its record) takes a stale lease, and refuses one a live sandbox of another run directory holds', (t) => {
  const h = host(7000);
  const other = h.run('other');
  t.is(allocateUid(h.j, h.proc, new Set(), other).uid, 7000);
  const mine = h.run('mine');
  t.throws(() => holdUid(h.j, 7000, mine), { message: /jail uid 7000 of .*mine is leased to another live sandbox \(.*other\)/ });
  rmSync(other, { recursive: true });
  holdUid(h.j, 7000, mine);
  t.is(readlinkSync(join(h.j.leases!, '7000')), mine);
  t.notThrows(() => holdUid(h.j, 7000, mine), 'its own lease');
  h.done();
});

test('a lease directory others can write is refused: SANDBOX_JAIL_FAILED names it', (t) => {
  const h = host(9000);
  mkdirSync(h.j.leases!, { mode: 0o777 });
  chmodSync(h.j.leases!, 0o777);
  t.throws(() => allocateUid(h.j, h.proc, new Set(), h.run('a')), { message: /jail uid leases: .*leases must be a directory of uid \d+ that no one else can write/ });
  h.done();
});

test('every uid of the range held: SANDBOX_JAIL_FAILED names the range', (t) => {
  const h = host(8000, [8000, 8001, 8002, 8003]);
  t.throws(() => allocateUid(h.j, h.proc, new Set(), h.run('a')), { message: /no free uid in the jail range 8000-8003/ });
  h.done();
});
