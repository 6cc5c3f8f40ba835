// Real online services and load for tests and benchmarks: nginx from Debian on a
// loopback port, and hey at a fixed request rate. Everything started here is stopped
// by its pid.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { join } from 'node:path';

export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

export interface Nginx {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/**
 * One nginx worker serving a page from `dir`. `pageKiB` > 0 serves a page of that size
 * gzip-compressed per request, so each request costs real CPU, as a busy service's do.
 */
export async function startNginx(dir: string, pageKiB = 0, cpu: number | null = null): Promise<Nginx> {
  const port = await freePort();
  mkdirSync(join(dir, 'www'), { recursive: true });
  let page = '<html><body>lodger test page</body></html>\n';
  if (pageKiB > 0) {
    // Text that compresses like real HTML does (repetitive, not trivially so).
    const words = ['colocation', 'latency', 'sandbox', 'batch', 'online', 'service', 'quantile', 'window', 'budget', 'slack'];
    let x = 12345;
    const parts: string[] = [];
    for (let n = 0; n < pageKiB * 1024; ) {
      x = (x * 1103515245 + 12345) % 2147483648;
      const w = `${words[x % words.length]}${x % 97} `;
      parts.push(w);
      n += w.length;
    }
    page = `<html><body><p>${parts.join('')}</p></body></html>\n`;
  }
  writeFileSync(join(dir, 'www', 'index.html'), page);
  const conf = join(dir, 'nginx.conf');
  writeFileSync(conf, [
    process.getuid?.() === 0 ? 'user root;' : '',
    'worker_processes 1;', `pid ${dir}/nginx.pid;`, `error_log ${dir}/error.log;`,
    'events { worker_connections 1024; }',
    'http {', '  access_log off;', `  client_body_temp_path ${dir}/tmp;`,
    pageKiB > 0 ? '  gzip on; gzip_comp_level 6; gzip_types *; gzip_min_length 0;' : '',
    `  server { listen 127.0.0.1:${port}; root ${dir}/www; location / { } }`, '}',
  ].join('\n'));
  // taskset execs nginx, so the pid is nginx's; its worker inherits the CPU.
  const cmd = [...(cpu === null ? [] : ['taskset', '-c', String(cpu)]), 'nginx', '-c', conf, '-p', dir, '-g', 'daemon off;'];
  const child: ChildProcess = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (b) => { err += b; });
  const url = `http://127.0.0.1:${port}/`;
  const deadline = Date.now() + 5000;
  for (;;) {
    const up = await fetch(url).then((r) => r.ok, () => false);
    if (up) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`nginx did not start: ${err}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url, pid: child.pid!, stop: () => stopChild(child) };
}

/** SIGTERM, then SIGKILL after 3 s: a service we started, by its own process handle. */
async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await Promise.race([gone, new Promise((r) => setTimeout(r, 3000))]);
  if (child.exitCode === null) child.kill('SIGKILL');
}

export interface Redis {
  port: number;
  pid: number;
  stop(): Promise<void>;
}

/** redis-server on a loopback port, without persistence, optionally pinned to `cpu`. */
export async function startRedis(dir: string, cpu: number | null = null): Promise<Redis> {
  const port = await freePort();
  const cmd = [...(cpu === null ? [] : ['taskset', '-c', String(cpu)]), 'redis-server', '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir];
  const child: ChildProcess = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (b) => { err += b; });
  const deadline = Date.now() + 10_000;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1');
      c.once('connect', () => { c.write('PING\r\n'); });
      c.once('data', (b) => { c.destroy(); resolve(b.toString().startsWith('+PONG')); });
      c.once('error', () => resolve(false));
    });
    if (up) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`redis-server did not start: ${err}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { port, pid: child.pid!, stop: () => stopChild(child) };
}

export interface HeyResult {
  p50Ms: number;
  p99Ms: number;
  requests: number;
  rps: number;
}

/**
 * Command prefix for a load generator: pinned to `cpu` and, as root, at a higher priority,
 * standing in for clients on other machines. Nothing when `cpu` is null.
 */
export function loadGeneratorPrefix(cpu: number | null): string[] {
  return cpu === null ? [] : ['taskset', '-c', String(cpu), ...(process.getuid?.() === 0 ? ['nice', '-n', '-10'] : [])];
}

/** `hey` at a fixed total rate (workers × per-worker rate) for `seconds`. */
/** Nearest-rank percentile (p in 0..100) of a list of numbers. */
export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/** The middle of a list (the upper one of an even count); NaN when it is empty. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)]! : NaN;
}

export function runHey(url: string, seconds: number, rate: number, workers = 4, cpu: number | null = null): Promise<HeyResult> {
  return new Promise((resolve, reject) => {
    const cmd = [...loadGeneratorPrefix(cpu), 'hey', '-z', `${seconds}s`, '-c', String(workers), '-q', String(Math.max(1, Math.round(rate / workers))), url];
    const child = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b) => { out += b; });
    const timer = setTimeout(() => child.kill('SIGKILL'), (seconds + 30) * 1000);
    child.on('close', () => {
      clearTimeout(timer);
      const pct = (p: number): number => Number(new RegExp(`${p}%+ in ([0-9.]+) secs`).exec(out)?.[1] ?? NaN) * 1000;
      const rps = Number(/Requests\/sec:\s+([0-9.]+)/.exec(out)?.[1] ?? NaN);
      const n = [...out.matchAll(/\[(\d{3})\]\s+(\d+) responses/g)].reduce((a, m) => a + Number(m[2]), 0);
      if (Number.isNaN(pct(99))) reject(new Error(`hey output without a latency distribution:\n${out.slice(-800)}`));
      else resolve({ p50Ms: pct(50), p99Ms: pct(99), requests: n, rps });
    });
  });
}
