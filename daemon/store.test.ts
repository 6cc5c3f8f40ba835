import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JobStore, StoreError, type JobSpec } from './store.ts';

const spec: JobSpec = {
  name: 'j', command: ['echo', 'hi'], env: {}, rootfs: '', outputDir: '', vcpus: { min: 1, max: 1 }, memoryMiB: { min: 256, max: 256 },
  priority: 0, timeoutSeconds: 0, retries: 0,
};
const store = (): JobStore => new JobStore(join(mkdtempSync(join(tmpdir(), 'lodger-store-')), 'jobs.db'));

test('submission is idempotent by id; a different spec under the same id is refused', (t) => {
  const s = store();
  t.true(s.submit('a', spec).created);
  t.false(s.submit('a', spec).created);
  t.throws(() => s.submit('a', { ...spec, command: ['other'] }), { instanceOf: StoreError, message: /different spec/ });
  t.is(s.list().length, 1);
});

test('transitions are kept with time and reason; final states are final', (t) => {
  let now = 1000;
  const s = new JobStore(join(mkdtempSync(join(tmpdir(), 'lodger-store-')), 'jobs.db'), () => now++);
  s.submit('a', spec);
  s.transition('a', 'starting', 'admitted', { attempts: 1, sandboxId: 'sb-a' });
  s.transition('a', 'running', 'booted', { attach: { pid: 42 } });
  const done = s.transition('a', 'succeeded', 'exit 0', { exitCode: 0, attach: null });
  t.deepEqual(done.transitions.map((x) => [x.state, x.reason]), [['queued', 'submitted'], ['starting', 'admitted'], ['running', 'booted'], ['succeeded', 'exit 0']]);
  t.true(done.transitions.every((x, i, all) => i === 0 || x.at > all[i - 1]!.at));
  t.like(done, { exitCode: 0, attempts: 1, sandboxId: 'sb-a', attach: null });
  t.throws(() => s.transition('a', 'running', 'again'), { message: /succeeded; it cannot become running/ });
});

test('queue order: priority first, then age; logs come back in order, after a reopen too', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lodger-store-'));
  const s = new JobStore(join(dir, 'jobs.db'));
  s.submit('low', { ...spec, priority: 0 });
  s.submit('high', { ...spec, priority: 5 });
  s.submit('low2', { ...spec, priority: 0 });
  t.deepEqual(s.queued().map((j) => j.id), ['high', 'low', 'low2']);
  s.appendLog('high', 'stdout', Buffer.from('a'));
  s.appendLog('high', 'stderr', Buffer.from('b'));
  s.close();
  const again = new JobStore(join(dir, 'jobs.db'));
  const logs = again.logs('high');
  t.deepEqual(logs.map((l) => [l.stream, l.data.toString()]), [['stdout', 'a'], ['stderr', 'b']]);
  t.deepEqual(again.logs('high', logs[0]!.seq).map((l) => l.data.toString()), ['b']);
  t.is(again.counts().queued, 3);
});
