import test from 'ava';
import { parsePositiveInt, parseSizeMiB } from './sizes.ts';

test('sizes are binary and given in MiB', (t) => {
  t.is(parseSizeMiB('512M'), 512);
  t.is(parseSizeMiB('2G'), 2048);
  t.is(parseSizeMiB('1Gi'), 1024);
  t.is(parseSizeMiB('1.5GiB'), 1536);
  t.is(parseSizeMiB('1048576'), 1);
  t.throws(() => parseSizeMiB('12 parsecs'), { message: /not a size/ });
  t.throws(() => parseSizeMiB('1000K'), { message: /whole number/ });
});

test('counts are positive integers', (t) => {
  t.is(parsePositiveInt('4', 'vcpus'), 4);
  t.throws(() => parsePositiveInt('0', 'vcpus'), { message: /vcpus/ });
  t.throws(() => parsePositiveInt('2.5', 'vcpus'));
});
