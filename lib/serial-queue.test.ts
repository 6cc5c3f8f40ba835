import test from 'ava';
import { SerialQueue } from './index.ts';

test('tasks run one at a time in queue order; a failure rejects only its own caller', async (t) => {
  const q = new SerialQueue();
  const log: string[] = [];
  const task = (name: string, ms: number, fail = false) => async (): Promise<string> => {
    log.push(`start ${name}`);
    await new Promise((r) => setTimeout(r, ms));
    log.push(`end ${name}`);
    if (fail) throw new Error(`${name} failed`);
    return name;
  };
  const a = q.run(task('a', 20));
  const b = q.run(task('b', 1, true));
  const c = q.run(task('c', 1));
  t.is(await a, 'a');
  await t.throwsAsync(b, { message: 'b failed' });
  t.is(await c, 'c');
  t.deepEqual(log, ['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
});
