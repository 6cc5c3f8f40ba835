import test from 'ava';
import { S_IFDIR, S_IFREG, writeCpio } from './cpio.ts';

test('newc archive: magic, 4-byte alignment, trailer', (t) => {
  const a = writeCpio([{ name: 'bin', mode: S_IFDIR | 0o755 }, { name: 'bin/x', mode: S_IFREG | 0o755, data: Buffer.from('abc') }]);
  t.is(a.subarray(0, 6).toString(), '070701');
  t.is(a.length % 4, 0);
  t.true(a.includes(Buffer.from('TRAILER!!!\0')));
  // filesize field of the second entry (offset 6 + 6*8) is 3
  const second = a.indexOf(Buffer.from('070701'), 6);
  t.is(parseInt(a.subarray(second + 54, second + 62).toString(), 16), 3);
});
