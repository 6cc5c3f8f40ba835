// Load for the online services at a fixed rate, with every request's latency: hey for
// nginx (its CSV output), an open-loop generator for redis (redis-load.ts), and
// redis-benchmark for redis' ceiling. Each runs pinned to the load CPU at a higher
// priority, standing in for clients on other machines.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { loadGeneratorPrefix, percentile } from '../services.ts';

export interface Sample {
  /** When the request was due or sent, ms from the run's start. */
  t: number;
  ms: number;
  ok: boolean;
}

export interface LoadRun {
  /** When the first request was due (wall-clock ms): samples' t counts from here. */
  startedAt: number;
  offeredRps: number;
  achievedRps: number;
  samples: Sample[];
}

export interface Target {
  kind: 'nginx' | 'redis';
  /** nginx: its URL; redis: its port. */
  url?: string;
  port?: number;
}

function run(cmd: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (b: string) => { out += b; });
    child.stderr.setEncoding('utf8').on('data', (b: string) => { err += b; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd.slice(0, 6).join(' ')} exited ${code}: ${err.slice(-400)}`));
    });
  });
}

export async function load(target: Target, rps: number, seconds: number, cpu: number | null): Promise<LoadRun> {
  let startedAt = Date.now();
  const samples: Sample[] = [];
  if (target.kind === 'nginx') {
    // hey throttles each worker; enough workers keep each one's interval above the latency.
    const workers = Math.max(8, Math.ceil(rps / 250));
    const csv = await run([...loadGeneratorPrefix(cpu), 'hey', '-z', `${seconds}s`, '-c', String(workers), '-q', String(Math.max(1, Math.round(rps / workers))), '-o', 'csv', target.url!], (seconds + 60) * 1000);
    for (const line of csv.split('\n')) {
      const f = line.split(',');
      if (f.length < 8 || !/^[0-9.]+$/.test(f[0]!)) continue;
      samples.push({ t: Number(f[7]) * 1000, ms: Number(f[0]) * 1000, ok: f[6] === '200' });
    }
  } else {
    const script = join(import.meta.dirname, 'redis-load.ts');
    const text = await run([...loadGeneratorPrefix(cpu), process.execPath, '--import', 'tsx', script, '--port', String(target.port), '--rate', String(rps), '--seconds', String(seconds)], (seconds + 60) * 1000);
    for (const line of text.split('\n')) {
      const own = /^# start (\d+)$/.exec(line);
      if (own) startedAt = Number(own[1]); // the generator's own clock: Node takes a while to start
      if (!line || line.startsWith('#')) continue;
      const [t, ms] = line.split(',');
      samples.push({ t: Number(t), ms: Number(ms), ok: true });
    }
  }
  return { startedAt, offeredRps: rps, achievedRps: samples.length / seconds, samples };
}

export interface Summary { p50Ms: number; p99Ms: number; errors: number }

export function summarise(samples: Sample[]): Summary {
  const ok = samples.filter((s) => s.ok).map((s) => s.ms);
  return { p50Ms: ok.length ? percentile(ok, 50) : NaN, p99Ms: ok.length ? percentile(ok, 99) : NaN, errors: samples.length - ok.length };
}

/** p99 of each whole 1-second window of a run. */
export function windowP99s(samples: Sample[], seconds: number): number[] {
  const byWindow: number[][] = Array.from({ length: Math.floor(seconds) }, () => []);
  for (const s of samples) {
    const w = Math.floor(s.t / 1000);
    if (w >= 0 && w < byWindow.length) byWindow[w]!.push(s.ok ? s.ms : Infinity);
  }
  return byWindow.filter((w) => w.length > 0).map((w) => percentile(w, 99));
}

/** Closed-loop ceiling: hey without a rate limit, or redis-benchmark. */
export async function ceiling(target: Target, cpu: number | null): Promise<number> {
  if (target.kind === 'nginx') {
    const out = await run([...loadGeneratorPrefix(cpu), 'hey', '-z', '4s', '-c', '32', target.url!], 60_000);
    return Number(/Requests\/sec:\s+([0-9.]+)/.exec(out)?.[1] ?? NaN);
  }
  const out = await run([...loadGeneratorPrefix(cpu), 'redis-benchmark', '-p', String(target.port), '-t', 'get', '-n', '200000', '-c', '32', '--csv'], 120_000);
  // "GET","<rps>",...
  return Number(/"GET","([0-9.]+)"/.exec(out)?.[1] ?? NaN);
}

export interface Capacity {
  ceilingRps: number;
  /** The highest tested rate whose p99 stayed within `bendFactor` x the lighter rates' lowest p99. */
  capacityRps: number;
  steps: { rps: number; achievedRps: number; p99Ms: number }[];
}

/**
 * Where p99 bends: fixed rates at growing fractions of the closed-loop ceiling; the
 * capacity is the last one whose p99 stayed within `bendFactor` x the p99 at the lightest
 * rate and that was served in full.
 */
export async function measureCapacity(target: Target, cpu: number | null, stepSeconds: number, bendFactor = 3): Promise<Capacity> {
  const ceilingRps = await ceiling(target, cpu);
  if (!(ceilingRps > 0)) throw new Error(`${target.kind}: no ceiling measured`);
  const steps: Capacity['steps'] = [];
  let capacityRps = 0;
  let base = Infinity;
  for (const f of [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]) {
    const rps = Math.round(ceilingRps * f);
    const r = await load(target, rps, stepSeconds, cpu);
    const p99Ms = summarise(r.samples).p99Ms;
    steps.push({ rps, achievedRps: r.achievedRps, p99Ms });
    // Against the lowest p99 so far: one noisy light step must not set the bar.
    if (p99Ms > base * bendFactor || r.achievedRps < rps * 0.95) break;
    base = Math.min(base, p99Ms);
    capacityRps = rps;
  }
  return { ceilingRps, capacityRps: capacityRps || steps[0]!.rps, steps };
}
