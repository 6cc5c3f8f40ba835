// Active probes of an online service. A probe that times out counts as a sample at the
// timeout, never as silence; a refused connection or a wrong answer is a typed error.
// Redis and memcached probes keep one connection open, as their real clients do.
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import type { Probe } from '../policy/index.ts';

export type ProbeErrorCode = 'REFUSED' | 'RESET' | 'PROTOCOL' | 'HTTP_STATUS' | 'OTHER';

export type ProbeResult =
  | { ok: true; latencyMs: number; timedOut: boolean }
  | { ok: false; code: ProbeErrorCode; error: string };

export interface Prober {
  probe(): Promise<ProbeResult>;
  close(): void;
}

function errorResult(e: unknown): ProbeResult {
  const code = (e as NodeJS.ErrnoException).code;
  const c: ProbeErrorCode = code === 'ECONNREFUSED' ? 'REFUSED' : code === 'ECONNRESET' || code === 'EPIPE' ? 'RESET' : 'OTHER';
  return { ok: false, code: c, error: `${code ?? 'error'}: ${(e as Error).message}` };
}

/** HTTP(S) GET/HEAD over a kept-alive connection; any status below 500 is an answer. */
class HttpProber implements Prober {
  private readonly agent: http.Agent;
  constructor(private readonly url: URL, private readonly method: string, private readonly timeoutMs: number) {
    const A = url.protocol === 'https:' ? https.Agent : http.Agent;
    this.agent = new A({ keepAlive: true, maxSockets: 1 });
  }

  probe(): Promise<ProbeResult> {
    const mod = this.url.protocol === 'https:' ? https : http;
    return new Promise((resolve) => {
      const t0 = performance.now();
      let done = false;
      const finish = (r: ProbeResult): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        resolve(r);
      };
      const req = mod.request(this.url, { method: this.method, agent: this.agent }, (res) => {
        res.resume();
        res.on('end', () => {
          const status = res.statusCode ?? 0;
          finish(status >= 500
            ? { ok: false, code: 'HTTP_STATUS', error: `HTTP ${status}` }
            : { ok: true, latencyMs: performance.now() - t0, timedOut: false });
        });
        res.on('error', (e) => finish(errorResult(e)));
      });
      const timer = setTimeout(() => {
        finish({ ok: true, latencyMs: this.timeoutMs, timedOut: true });
        req.destroy();
      }, this.timeoutMs);
      req.on('error', (e) => finish(errorResult(e)));
      req.end();
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/** Time to establish a TCP connection. */
class TcpProber implements Prober {
  constructor(private readonly host: string, private readonly port: number, private readonly timeoutMs: number) {}

  probe(): Promise<ProbeResult> {
    return new Promise((resolve) => {
      const t0 = performance.now();
      const sock = net.connect({ host: this.host, port: this.port });
      const timer = setTimeout(() => {
        sock.destroy();
        resolve({ ok: true, latencyMs: this.timeoutMs, timedOut: true });
      }, this.timeoutMs);
      sock.once('connect', () => {
        clearTimeout(timer);
        const ms = performance.now() - t0;
        sock.destroy();
        resolve({ ok: true, latencyMs: ms, timedOut: false });
      });
      sock.once('error', (e) => {
        clearTimeout(timer);
        resolve(errorResult(e));
      });
    });
  }

  close(): void {}
}

/** One request line, one answer line, on a persistent connection (redis PING, memcached version). */
class LineProber implements Prober {
  private sock: net.Socket | null = null;
  private buf = '';
  private waiting: ((line: string | Error) => void) | null = null;

  constructor(private readonly host: string, private readonly port: number, private readonly timeoutMs: number,
              private readonly request: string, private readonly expect: RegExp) {}

  private connect(): Promise<net.Socket> {
    if (this.sock && !this.sock.destroyed) return Promise.resolve(this.sock);
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: this.host, port: this.port });
      s.setNoDelay(true);
      s.setEncoding('utf8');
      s.once('connect', () => { this.sock = s; resolve(s); });
      s.once('error', (e) => { this.fail(e); reject(e); });
      s.on('close', () => { if (this.sock === s) this.sock = null; this.fail(Object.assign(new Error('connection closed'), { code: 'ECONNRESET' })); });
      s.on('data', (d: string) => {
        this.buf += d;
        const nl = this.buf.indexOf('\r\n');
        if (nl >= 0) {
          const line = this.buf.slice(0, nl);
          this.buf = this.buf.slice(nl + 2);
          const w = this.waiting;
          this.waiting = null;
          w?.(line);
        }
      });
    });
  }

  private fail(e: Error): void {
    const w = this.waiting;
    this.waiting = null;
    w?.(e);
  }

  async probe(): Promise<ProbeResult> {
    const t0 = performance.now();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<ProbeResult>((resolve) => {
      timer = setTimeout(() => {
        // A late answer would pair with the next request: start over on a new connection.
        this.sock?.destroy();
        this.sock = null;
        this.buf = '';
        resolve({ ok: true, latencyMs: this.timeoutMs, timedOut: true });
      }, this.timeoutMs);
    });
    const attempt = (async (): Promise<ProbeResult> => {
      try {
        const s = await this.connect();
        const line = await new Promise<string | Error>((resolve) => {
          this.waiting = resolve;
          s.write(this.request);
        });
        if (line instanceof Error) return errorResult(line);
        if (!this.expect.test(line)) return { ok: false, code: 'PROTOCOL', error: `unexpected answer ${JSON.stringify(line.slice(0, 80))}` };
        return { ok: true, latencyMs: performance.now() - t0, timedOut: false };
      } catch (e) {
        return errorResult(e);
      }
    })();
    const r = await Promise.race([attempt, timeout]);
    clearTimeout(timer);
    return r;
  }

  close(): void {
    this.sock?.destroy();
    this.sock = null;
  }
}

export function createProber(p: Probe & { timeoutMs: number }): Prober {
  switch (p.kind) {
    case 'http': return new HttpProber(new URL(p.url), p.method, p.timeoutMs);
    case 'tcp': return new TcpProber(p.host, p.port, p.timeoutMs);
    case 'redis': return new LineProber(p.host, p.port, p.timeoutMs, 'PING\r\n', /^\+PONG$/);
    case 'memcached': return new LineProber(p.host, p.port, p.timeoutMs, 'version\r\n', /^VERSION /);
  }
}
