// lodger submit / ps / logs / wait / cancel / status: talk to lodgerd.
import { parsePositiveInt, parseSizeMiB } from './sizes.ts';
import { connect, type ApiClient } from './client.ts';
import { resolve } from 'node:path';

/** A job as the API returns it. */
export interface ApiJob {
  id: string;
  state: string;
  exitCode: number;
  hasExitCode: boolean;
  error: string;
  attempts: number;
  createdMs: number;
  backend: string;
  spec: { name: string; command: string[] };
  transitions: { state: string; atMs: number; reason: string }[];
}

async function withClient<T>(socket: string, fn: (c: ApiClient) => Promise<T>): Promise<T> {
  const c = connect(socket);
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

/** "2" or "1:4" -> {min, max}. */
export function parseRange(text: string, what: string, parse: (s: string) => number): { min: number; max: number } {
  const [a, b] = text.split(':');
  const min = parse(a!);
  const max = b === undefined ? min : parse(b);
  if (max < min) throw new RangeError(`${what} ${text}: max is below min`);
  return { min, max };
}

export interface SubmitOptions {
  socket: string;
  id?: string;
  name?: string;
  vcpus: string;
  memory: string;
  rootfs?: string;
  output?: string;
  priority: string;
  timeout: string;
  retries: string;
  env: string[];
  runtime?: string;
  image?: string;
  workdir?: string;
  user?: string;
}

/** An image ref with its path made absolute (lodgerd reads it, from its own working directory). */
export function absoluteImageRef(ref: string): string {
  const m = /^(oci|oci-archive|docker-archive):([^:]*)(:.*)?$/.exec(ref);
  return m ? `${m[1]}:${resolve(m[2]!)}${m[3] ?? ''}` : resolve(ref);
}

export async function submitCommand(cmd: string[], o: SubmitOptions): Promise<number> {
  const env: Record<string, string> = {};
  for (const p of o.env) {
    const i = p.indexOf('=');
    if (i <= 0) throw new RangeError(`--env wants KEY=VALUE (got ${JSON.stringify(p)})`);
    env[p.slice(0, i)] = p.slice(i + 1);
  }
  if (!cmd.length && !o.image) throw new RangeError('a command is needed (after --), or --image whose config names one');
  const spec = {
    name: o.name ?? '', command: cmd, env, image: o.image ? absoluteImageRef(o.image) : '', workdir: o.workdir ?? '', user: o.user ?? '',
    rootfs: o.rootfs ? resolve(o.rootfs) : '', outputDir: o.output ? resolve(o.output) : '',
    vcpus: parseRange(o.vcpus, '--vcpus', (s) => parsePositiveInt(s, '--vcpus')),
    memoryMib: parseRange(o.memory, '--memory', parseSizeMiB),
    priority: Number(o.priority), timeoutSeconds: Number(o.timeout), retries: Number(o.retries), runtime: o.runtime ?? '',
  };
  const job = await withClient(o.socket, (c) => c.call<ApiJob>('SubmitJob', { id: o.id ?? '', spec }));
  console.log(job.id);
  return 0;
}

const age = (ms: number): string => {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 60 ? `${s}s` : s < 3600 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
};

export async function psCommand(o: { socket: string; json: boolean; all: boolean }): Promise<number> {
  const { jobs } = await withClient(o.socket, (c) => c.call<{ jobs: ApiJob[] }>('ListJobs', { states: o.all ? [] : ['queued', 'starting', 'running', 'paused', 'suspended'], limit: 200 }));
  if (o.json) {
    console.log(JSON.stringify(jobs, null, 2));
    return 0;
  }
  console.log(`${'ID'.padEnd(28)} ${'STATE'.padEnd(10)} ${'EXIT'.padEnd(5)} ${'AGE'.padEnd(5)} ${'BACKEND'.padEnd(7)} COMMAND`);
  for (const j of jobs) {
    console.log(`${j.id.padEnd(28)} ${j.state.padEnd(10)} ${(j.hasExitCode ? String(j.exitCode) : '-').padEnd(5)} ${age(j.createdMs).padEnd(5)} ${(j.backend || '-').padEnd(7)} ${j.spec.command.join(' ')}`);
  }
  return 0;
}

export async function logsCommand(id: string, o: { socket: string; follow: boolean }): Promise<number> {
  const c = connect(o.socket);
  try {
    await new Promise<void>((resolveDone, reject) => {
      const s = c.stream('StreamLogs', { id, follow: o.follow });
      s.on('data', (chunk: { stream: string; data: Buffer }) => (chunk.stream === 'stderr' ? process.stderr : process.stdout).write(chunk.data));
      s.on('error', (e: Error & { details?: string }) => reject(new Error(e.details ?? e.message)));
      s.on('end', () => resolveDone());
    });
  } finally {
    c.close();
  }
  return 0;
}

/** `lodger exec JOB -- CMD`: one more command in a running job's sandbox; exits with its exit code. */
export async function execCommand(id: string, command: string[], o: { socket: string; env?: string[]; cwd?: string }): Promise<number> {
  const env: Record<string, string> = {};
  for (const e of o.env ?? []) {
    const eq = e.indexOf('=');
    if (eq <= 0) throw new Error(`--env ${JSON.stringify(e)}: NAME=VALUE`);
    env[e.slice(0, eq)] = e.slice(eq + 1);
  }
  const c = connect(o.socket);
  try {
    return await new Promise<number>((resolveDone, reject) => {
      let code = 1;
      const s = c.stream('ExecInJob', { id, command, env, cwd: o.cwd ?? '' });
      // Ctrl-C ends the command in the sandbox too (cancelling the call kills it).
      const onInt = (): void => s.cancel();
      process.once('SIGINT', onInt);
      s.on('data', (m: { stream: string; data: Buffer; exitCode: number }) => {
        if (m.stream === 'exit') code = m.exitCode;
        else (m.stream === 'stderr' ? process.stderr : process.stdout).write(m.data);
      });
      s.on('error', (e: Error & { details?: string; code?: number }) => { process.off('SIGINT', onInt); if (e.code === 1) resolveDone(130); else reject(new Error(e.details ?? e.message)); });
      s.on('end', () => { process.off('SIGINT', onInt); resolveDone(code); });
    });
  } finally {
    c.close();
  }
}

export async function waitCommand(id: string, o: { socket: string; json: boolean }): Promise<number> {
  // Progress on a terminal: the job's state while it is not done.
  const progress = process.stderr.isTTY ? setInterval(() => {
    void withClient(o.socket, (c) => c.call<ApiJob>('GetJob', { id })).then((j) => process.stderr.write(`\r${id}: ${j.state}…   `), () => {});
  }, 1000) : null;
  const job = await withClient(o.socket, (c) => c.call<ApiJob>('WaitJob', { id }, 7 * 24 * 3600 * 1000)).finally(() => {
    if (progress) {
      clearInterval(progress);
      process.stderr.write('\r');
    }
  });
  if (o.json) console.log(JSON.stringify(job, null, 2));
  else console.error(`${job.id}: ${job.state}${job.hasExitCode ? ` (exit ${job.exitCode})` : ''}${job.error ? `: ${job.error.split('\n')[0]}` : ''}`);
  if (job.hasExitCode) return job.exitCode;
  return job.state === 'succeeded' ? 0 : 1;
}

export async function cancelCommand(id: string, o: { socket: string }): Promise<number> {
  const job = await withClient(o.socket, (c) => c.call<ApiJob>('CancelJob', { id, reason: 'cancelled with lodger cancel' }));
  console.log(`${job.id}: ${job.state}`);
  return 0;
}

/** Asks lodgerd to stop everything, then waits until it no longer answers. */
export async function shutdownCommand(o: { socket: string; drain: boolean; timeout: string }): Promise<number> {
  const r = await withClient(o.socket, (c) => c.call<{ runningJobs: number }>('Shutdown', { drain: o.drain }));
  console.error(`lodgerd is shutting down${o.drain ? `; waiting for ${r.runningJobs} running job(s)` : `; ${r.runningJobs} running job(s) stopped`}`);
  const deadline = Date.now() + Number(o.timeout) * 1000;
  for (;;) {
    const up = await withClient(o.socket, (c) => c.call('GetStatus', {}, 2000)).then(() => true, () => false);
    if (!up) break;
    if (Date.now() > deadline) {
      console.error(`lodgerd still answers after ${o.timeout} s`);
      return 1;
    }
    await new Promise((res) => setTimeout(res, 200));
  }
  console.log('lodgerd stopped');
  return 0;
}

interface ApiStatus {
  version: string;
  accelerator: string;
  acceleratorReason: string;
  services: { name: string; p99Ms: number; hasP99: boolean; targetMs: number; slack: number; error: string; percentile: number }[];
  sandboxes: { id: string; jobId: string; state: string; vcpus: number; memoryMib: number; maxVcpus: number; maxMemoryMib: number; backend: string }[];
  decisions: { atMs: number; reason: string; actions: string[] }[];
  jobsByState: Record<string, number>;
  controllerReason?: string;
  batchCapacity?: { cpus: number; memoryBytes: number; reason: string } | null;
}

export function renderStatus(s: ApiStatus): string {
  const lines = [`lodgerd ${s.version} · ${s.accelerator} · jobs: ${Object.entries(s.jobsByState).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(', ') || 'none'}`, ''];
  lines.push('SERVICE          p99        TARGET     SLACK');
  for (const v of s.services) {
    lines.push(`${v.name.padEnd(16)} ${(v.hasP99 ? `${v.p99Ms.toFixed(2)} ms` : '-').padEnd(10)} ${`${v.targetMs} ms`.padEnd(10)} ${v.hasP99 ? v.slack.toFixed(2) : (v.error || '-')}`);
  }
  if (!s.services.length) lines.push('(no online services in the policies)');
  lines.push('', 'SANDBOX                          JOB                  STATE      BACKEND vCPUs   MEMORY');
  for (const b of s.sandboxes) {
    lines.push(`${b.id.padEnd(32)} ${b.jobId.padEnd(20)} ${b.state.padEnd(10)} ${(b.backend || '-').padEnd(7)} ${`${b.vcpus}/${b.maxVcpus}`.padEnd(7)} ${b.memoryMib}/${b.maxMemoryMib} MiB`);
  }
  if (!s.sandboxes.length) lines.push('(no sandboxes)');
  lines.push('', `CONTROLLER       ${s.controllerReason || '-'}`);
  const c = s.batchCapacity;
  if (c) lines.push(`BATCH CAPACITY   ${c.cpus} CPUs, ${Math.round(Number(c.memoryBytes) / 1048576)} MiB (${c.reason})`);
  lines.push('', 'RECENT DECISIONS');
  for (const d of s.decisions.slice(-8)) lines.push(`${new Date(d.atMs).toISOString().slice(11, 23)} ${d.reason}`);
  if (!s.decisions.length) lines.push('(none yet)');
  return lines.join('\n');
}

export async function statusCommand(o: { socket: string; json: boolean }): Promise<number> {
  const s = await withClient(o.socket, (c) => c.call<ApiStatus>('GetStatus', {}));
  console.log(o.json ? JSON.stringify(s, null, 2) : renderStatus(s));
  return 0;
}

/** A live view: redraws status every interval until interrupted. */
export async function topCommand(o: { socket: string; interval: string }): Promise<number> {
  const c = connect(o.socket);
  const every = Math.max(200, Number(o.interval) || 1000);
  let running = true;
  process.once('SIGINT', () => { running = false; });
  try {
    while (running) {
      const s = await c.call<ApiStatus>('GetStatus', {});
      process.stdout.write(`\x1b[H\x1b[2J${renderStatus(s)}\n`);
      await new Promise((r) => setTimeout(r, every));
    }
  } finally {
    c.close();
  }
  return 0;
}

/** Job state changes and controller decisions as they happen, until interrupted. */
export async function eventsCommand(o: { socket: string; json: boolean; count?: string }): Promise<number> {
  const c = connect(o.socket);
  const limit = o.count ? Number(o.count) : Infinity;
  let seen = 0;
  try {
    await new Promise<void>((resolveDone, reject) => {
      const s = c.stream('WatchEvents', {});
      s.on('data', (e: { atMs: number; kind: string; jobId: string; state: string; reason: string }) => {
        if (o.json) console.log(JSON.stringify(e));
        else console.log(`${new Date(e.atMs).toISOString().slice(11, 23)} ${e.kind.padEnd(8)} ${e.kind === 'job' ? `${e.jobId} ${e.state}: ` : ''}${e.reason}`);
        if (++seen >= limit) {
          s.cancel();
          resolveDone();
        }
      });
      s.on('error', (e: Error & { code?: number; details?: string }) => (e.code === 1 ? resolveDone() : reject(new Error(e.details ?? e.message))));
      s.on('end', () => resolveDone());
      process.once('SIGINT', () => { s.cancel(); resolveDone(); });
    });
  } finally {
    c.close();
  }
  return 0;
}
