import test from 'ava';
import { bucketQuantile, HistogramWindow, MetricsParseError, parseHistogram } from './prometheus.ts';

const page = (a: number[], b: number[]): string => `# HELP http_request_duration_seconds x
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{path="/",le="0.005"} ${a[0]}
http_request_duration_seconds_bucket{path="/",le="0.01"} ${a[1]}
http_request_duration_seconds_bucket{path="/",le="+Inf"} ${a[2]}
http_request_duration_seconds_bucket{path="/x",le="0.005"} ${b[0]}
http_request_duration_seconds_bucket{path="/x",le="0.01"} ${b[1]}
http_request_duration_seconds_bucket{path="/x",le="+Inf"} ${b[2]}
http_request_duration_seconds_count{path="/"} ${a[2]}
`;

test('buckets are summed over label sets and sorted by le', (t) => {
  t.deepEqual(parseHistogram(page([1, 2, 3], [10, 20, 30]), 'http_request_duration_seconds'), [[0.005, 11], [0.01, 22], [Infinity, 33]]);
});

test('quantiles interpolate inside the bucket, like histogram_quantile', (t) => {
  t.is(bucketQuantile(0.5, [[1, 0], [2, 100], [Infinity, 100]]), 1.5);
  t.is(bucketQuantile(0.99, [[1, 50], [2, 50], [Infinity, 100]]), 2, 'in the +Inf bucket: the highest finite bound');
  t.true(Number.isNaN(bucketQuantile(0.5, [[1, 0], [Infinity, 0]])));
});

test('the window quantile comes from bucket deltas between scrapes', (t) => {
  const w = new HistogramWindow(1000);
  w.push(0, parseHistogram(page([100, 100, 100], [0, 0, 0]), 'http_request_duration_seconds'));
  t.is(w.quantile(0.99), null, 'one scrape is not a window');
  // 100 new requests, all between 5 and 10 ms.
  w.push(1000, parseHistogram(page([100, 200, 200], [0, 0, 0]), 'http_request_duration_seconds'));
  const q = w.quantile(0.99)!;
  t.is(q.count, 100);
  t.true(Math.abs(q.value - 0.00995) < 1e-9);
});

test('malformed pages and missing histograms are typed errors', (t) => {
  t.throws(() => parseHistogram('up 1\n', 'http_request_duration_seconds'), { instanceOf: MetricsParseError, message: /no http_request_duration_seconds_bucket/ });
  t.throws(() => parseHistogram('h_bucket{le="abc"} 1\n', 'h'), { instanceOf: MetricsParseError });
});
