import test from 'ava';
import { LatencyWindow } from './window.ts';

test('percentiles over the window, by nearest rank', (t) => {
  const w = new LatencyWindow(1000);
  for (let i = 1; i <= 1000; i++) w.record(i / 100, 500); // 0.01 .. 10 ms
  const r = w.percentiles([50, 99], 500)!;
  t.is(r.count, 1000);
  t.true(Math.abs(r.values[50]! - 5) < 0.01, `p50 ${r.values[50]}`);
  t.true(Math.abs(r.values[99]! - 9.9) < 0.02, `p99 ${r.values[99]}`);
});

test('old samples slide out of the window; an empty window reads null', (t) => {
  const w = new LatencyWindow(1000);
  for (let i = 0; i < 100; i++) w.record(50, 0);
  for (let i = 0; i < 100; i++) w.record(1, 1500);
  const r = w.percentiles([99], 1500)!;
  t.is(r.count, 100, 'the 50 ms samples from t=0 are gone');
  t.true(r.values[99]! < 1.01);
  t.is(w.percentiles([99], 5000), null);
});

test('at most 65536 samples are kept, the oldest dropped first', (t) => {
  const w = new LatencyWindow(60_000);
  for (let i = 0; i < 70_000; i++) w.record(i < 4464 ? 100 : 1, 10);
  const r = w.percentiles([100], 10)!;
  t.is(r.count, 65_536);
  t.is(r.values[100], 1, 'the 100 ms samples were the oldest');
});
