// The gRPC API over a unix socket. Requests are validated at this boundary: a bad one
// gets INVALID_ARGUMENT with the reason, an unknown job NOT_FOUND.
import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import type { EventEmitter } from 'node:events';
import { parsePolicyText, PolicyError, slack, type ControlLoop, type PolicySet, type Reaction } from '../control/index.ts';
import { ImageError, type ExecHandle, type ImageCache } from '../sandbox-runtime/index.ts';
import { InvalidRequest, JOB_ID, loadApi, toExecRequest, toJobSpec, type ApiExecRequest, type ApiJobSpec } from './api.ts';
import { imageStatus, resolveImageSpec } from './images.ts';
import { JobNotRunning, type JobEvent, type Scheduler } from './scheduler.ts';
import { FINAL_STATES, JOB_STATES, StoreError, type JobRecord, type JobState, type JobStore } from './store.ts';

export interface ApiContext {
  store: JobStore;
  scheduler: Scheduler;
  version: string;
  accel: { accel: string; reason: string };
  policies: () => PolicySet;
  loop: () => ControlLoop | null;
  /** Re-emits 'decision' and 'reaction' of whichever control loop runs (a policy reload makes a new one). */
  loopEvents: EventEmitter;
  /** `lodger shutdown`: begins stopping everything (answered at once; the daemon exits when done). */
  shutdown?: (drain: boolean) => void;
  /** The backend a job's runtime request means here ('' or absent: the default); default: the request as given. */
  resolveRuntime?: (requested: 'auto' | 'qemu' | 'gvisor' | '') => Promise<'qemu' | 'gvisor'>;
  /** The default backend, shown for jobs that name none. */
  defaultBackend?: string;
  /** Where jobs' images are checked and unpacked; null: jobs from images are refused. */
  images?: ImageCache | null;
}

type Call<Req> = grpc.ServerUnaryCall<Req, unknown>;
type Done = grpc.sendUnaryData<unknown>;

function toApiJob(j: JobRecord, defaultBackend = ''): Record<string, unknown> {
  return {
    id: j.id, state: j.state, exitCode: j.exitCode ?? 0, hasExitCode: j.exitCode !== null, error: j.error, attempts: j.attempts,
    sandboxId: j.sandboxId, createdMs: j.createdAt, backend: j.spec.runtime || defaultBackend,
    spec: { ...j.spec, outputDir: j.spec.outputDir, memoryMib: j.spec.memoryMiB },
    transitions: j.transitions.map((t) => ({ state: t.state, atMs: t.at, reason: t.reason })),
  };
}

function fail(done: Done, e: unknown): void {
  if (e instanceof InvalidRequest) return done({ code: grpc.status.INVALID_ARGUMENT, details: e.message });
  if (e instanceof ImageError) return done(imageStatus(e));
  if (e instanceof JobNotRunning) return done({ code: grpc.status.FAILED_PRECONDITION, details: e.message });
  if (e instanceof StoreError) {
    const code = e.code === 'JOB_NOT_FOUND' ? grpc.status.NOT_FOUND : e.code === 'JOB_EXISTS' ? grpc.status.ALREADY_EXISTS : grpc.status.FAILED_PRECONDITION;
    return done({ code, details: e.message });
  }
  done({ code: grpc.status.INTERNAL, details: (e as Error).message });
}

/** Wraps a handler so any thrown error becomes the right gRPC status. */
const unary = <Req>(fn: (req: Req) => Promise<unknown> | unknown) => async (call: Call<Req>, done: Done): Promise<void> => {
  try {
    done(null, await fn(call.request));
  } catch (e) {
    fail(done, e);
  }
};

const needId = (id: string | undefined): string => {
  if (!id) throw new InvalidRequest('id is required');
  return id;
};

/**
 * Ends a server stream with an error status. Not destroy(): grpc-js sends a stream's status
 * from its 'error' event and end(), which a destroyed stream never reaches, so the client
 * waited for ever (seen: `lodger logs` of an unknown job hung).
 */
function endWithStatus(call: grpc.ServerWritableStream<unknown, unknown>, code: grpc.status, details: string): void {
  call.emit('error', Object.assign(new Error(details), { code, details }));
}

/** Output of one ExecInJob command past this is dropped (said once on its stderr): a probe's output is small, a guest's flood is not lodgerd's memory. */
export const EXEC_OUTPUT_LIMIT = 16 * 1048576;

/** fail() for a server stream: the same status for the same error. */
function failStream(call: grpc.ServerWritableStream<unknown, unknown>, e: unknown): void {
  fail((err) => endWithStatus(call, err!.code ?? grpc.status.INTERNAL, err!.details ?? ''), e);
}

async function execInJob(call: grpc.ServerWritableStream<ApiExecRequest, unknown>, scheduler: Scheduler): Promise<void> {
  let h: ExecHandle;
  try {
    h = await scheduler.exec(needId(call.request.id), toExecRequest(call.request));
  } catch (e) {
    return failStream(call, e);
  }
  // A client gone (a probe's deadline, containerd's kill) ends the command.
  call.on('cancelled', () => void h.signal(9).catch(() => {}));
  let sent = 0;
  let dropped = false;
  const out = (stream: 'stdout' | 'stderr') => (data: Buffer): void => {
    if (call.cancelled || dropped) return;
    if (sent + data.length > EXEC_OUTPUT_LIMIT || call.writableLength > EXEC_OUTPUT_LIMIT) {
      dropped = true;
      call.write({ stream: 'stderr', data: Buffer.from(`\nlodger: output past ${EXEC_OUTPUT_LIMIT} bytes dropped\n`) });
      return;
    }
    sent += data.length;
    call.write({ stream, data });
  };
  h.onStdout(out('stdout'));
  h.onStderr(out('stderr'));
  try {
    const st = await h.wait();
    if (call.cancelled) return;
    call.write({ stream: 'exit', exitCode: st.code ?? 128 + (st.signal ?? 0) });
    call.end();
  } catch (e) {
    if (!call.cancelled) endWithStatus(call, grpc.status.ABORTED, `the command ended with its sandbox: ${(e as Error).message}`);
  }
}

export function makeServer(ctx: ApiContext): grpc.Server {
  const { lodger, health } = loadApi();
  const server = new grpc.Server();
  const { store, scheduler } = ctx;

  server.addService((lodger.Lodger as grpc.ServiceClientConstructor).service, {
    SubmitJob: unary<{ id?: string; spec?: ApiJobSpec }>(async (req) => {
      const spec = await resolveImageSpec(toJobSpec(req.spec), ctx.images ?? null);
      // Stored resolved: the job runs on the same backend after a restart with another default.
      if (ctx.resolveRuntime) spec.runtime = await ctx.resolveRuntime(spec.runtime ?? '');
      const id = req.id || `${spec.name.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 40)}-${randomBytes(4).toString('hex')}`;
      if (!JOB_ID.test(id)) throw new InvalidRequest(`id ${JSON.stringify(id)} must be 1-63 of [A-Za-z0-9_.-], starting with a letter or digit`);
      const { job } = store.submit(id, spec);
      void scheduler.pump();
      return toApiJob(job, ctx.defaultBackend);
    }),
    GetJob: unary<{ id?: string }>((req) => toApiJob(store.get(needId(req.id)), ctx.defaultBackend)),
    ListJobs: unary<{ states?: string[]; limit?: number }>((req) => {
      const states = (req.states ?? []).filter(Boolean);
      const bad = states.find((s) => !JOB_STATES.includes(s as JobState));
      if (bad) throw new InvalidRequest(`unknown state ${JSON.stringify(bad)} (one of ${JOB_STATES.join(', ')})`);
      return { jobs: store.list(states as JobState[], req.limit || 100).map((j) => toApiJob(j, ctx.defaultBackend)) };
    }),
    CancelJob: unary<{ id?: string; reason?: string }>(async (req) => toApiJob(await scheduler.cancel(needId(req.id), req.reason || 'cancelled by request'), ctx.defaultBackend)),
    SignalJob: unary<{ id?: string; signal?: number }>(async (req) => {
      const id = needId(req.id);
      const sig = req.signal ?? 0;
      if (!Number.isInteger(sig) || sig < 1 || sig > 64) throw new InvalidRequest(`signal ${sig}: must be 1-64`);
      return toApiJob(await scheduler.signal(id, sig), ctx.defaultBackend);
    }),
    ExecInJob: (call: grpc.ServerWritableStream<ApiExecRequest, unknown>) => void execInJob(call, scheduler),
    GetJobStats: unary<{ id?: string }>((req) => scheduler.stats(needId(req.id))),
    WaitJob: unary<{ id?: string }>(async (req) => toApiJob(await scheduler.waitFinal(needId(req.id)), ctx.defaultBackend)),
    StreamLogs: (call: grpc.ServerWritableStream<{ id?: string; follow?: boolean }, unknown>) => {
      let job: JobRecord;
      try {
        job = store.get(needId(call.request.id));
      } catch (e) {
        return failStream(call, e);
      }
      const id = job.id;
      let last = 0;
      const send = (c: { seq: number; stream: string; data: Buffer; at: number }): void => {
        if (c.seq <= last) return;
        last = c.seq;
        call.write({ stream: c.stream, data: c.data, atMs: c.at });
      };
      // Subscribe first, then replay what is stored: nothing falls between the two.
      const onLog = (c: { seq: number; stream: string; data: Buffer; at: number }): void => send(c);
      const onJob = (ev: JobEvent): void => {
        if (ev.jobId === id && FINAL_STATES.has(ev.state)) finish();
      };
      const finish = (): void => {
        scheduler.off(`log:${id}`, onLog);
        scheduler.off('job', onJob);
        for (const c of store.logs(id, last)) send(c);
        call.end();
      };
      if (call.request.follow && !FINAL_STATES.has(job.state)) {
        scheduler.on(`log:${id}`, onLog);
        scheduler.on('job', onJob);
        call.on('cancelled', () => { scheduler.off(`log:${id}`, onLog); scheduler.off('job', onJob); });
        for (const c of store.logs(id)) send(c);
        if (FINAL_STATES.has(store.get(id).state)) finish();
      } else {
        for (const c of store.logs(id)) send(c);
        call.end();
      }
    },
    WatchEvents: (call: grpc.ServerWritableStream<unknown, unknown>) => {
      // A watcher that does not read must not grow lodgerd's memory: past 10,000 queued events it is cut off.
      let cut = false;
      const write = (m: Record<string, unknown>): void => {
        if (cut) return;
        if (call.writableLength > 10_000) {
          cut = true;
          off();
          return endWithStatus(call, grpc.status.RESOURCE_EXHAUSTED, 'watcher too slow: more than 10000 events queued');
        }
        call.write(m);
      };
      const onJob = (ev: JobEvent): void => { write({ atMs: ev.at, kind: 'job', jobId: ev.jobId, state: ev.state, reason: ev.reason }); };
      const onDecision = (d: { at: number; reason: string }): void => { write({ atMs: Date.now(), kind: 'decision', reason: d.reason }); };
      // A clamp just applied, with the time from the violating observation to it.
      const onReaction = (r: Reaction): void => { write({ atMs: Math.round(r.observedAt + r.ms), kind: 'reaction', reason: `clamp applied ${r.ms.toFixed(1)} ms after the observation that called for it: ${r.actions.join(', ')}` }); };
      scheduler.on('job', onJob);
      ctx.loopEvents.on('decision', onDecision);
      ctx.loopEvents.on('reaction', onReaction);
      const off = (): void => { scheduler.off('job', onJob); ctx.loopEvents.off('decision', onDecision); ctx.loopEvents.off('reaction', onReaction); };
      call.on('cancelled', off);
      call.on('close', off);
    },
    Shutdown: unary<{ drain?: boolean }>((req) => {
      if (!ctx.shutdown) throw new InvalidRequest('this lodgerd cannot be shut down over its API');
      const running = scheduler.sandboxes().length;
      ctx.shutdown(!!req.drain);
      return { runningJobs: running };
    }),
    GetStatus: unary<unknown>(() => {
      const loop = ctx.loop();
      const pol = ctx.policies();
      const readings = loop?.lastReadings ?? [];
      return {
        version: ctx.version, accelerator: ctx.accel.accel, acceleratorReason: ctx.accel.reason,
        services: pol.services.map((s) => {
          const r = readings.find((x) => x.name === s.name);
          const p99 = r?.latencyMs ?? null;
          return { name: s.name, p99Ms: p99 ?? 0, hasP99: p99 !== null, targetMs: s.slo.targetMs, percentile: s.slo.percentile,
            slack: p99 !== null ? slack(s.slo.targetMs, p99) : 0, error: r?.error ?? '' };
        }),
        sandboxes: scheduler.sandboxes().map(({ jobId, sandbox }) => {
          const st = sandbox.status();
          return { id: st.id, jobId, state: st.state, vcpus: st.vcpus, memoryMib: st.memoryMiB, maxVcpus: st.maxVcpus, maxMemoryMib: st.maxMemoryMiB, backend: st.backend };
        }),
        decisions: (loop?.decisions ?? []).slice(-20).map((d) => ({ atMs: Math.round(d.at), reason: d.reason, actions: d.actions.map((a) => `${a.kind} ${a.sandbox}`) })),
        jobsByState: store.counts(),
        controllerReason: loop?.lastReason ?? '',
        ...(loop?.lastCapacity ? { batchCapacity: loop.lastCapacity } : {}),
      };
    }),
    ValidatePolicy: unary<{ fileName?: string; content?: string }>((req) => {
      try {
        parsePolicyText(req.content ?? '', req.fileName || 'policy.yaml');
        return { ok: true };
      } catch (e) {
        if (e instanceof PolicyError) return { ok: false, error: e.message, line: e.line, column: e.column };
        throw e;
      }
    }),
  });
  server.addService((health.Health as grpc.ServiceClientConstructor).service, {
    Check: unary<{ service?: string }>(() => ({ status: 'SERVING' })),
  });
  return server;
}

/** The TCP listener: mutual TLS, a client must show a certificate signed by the client CA. */
export async function listenTls(server: grpc.Server, address: string, tls: { cert: string; key: string; clientCa: string }): Promise<number> {
  const read = (what: string, file: string): Buffer => {
    try {
      return readFileSync(file);
    } catch (e) {
      throw new Error(`TLS ${what} ${file}: ${(e as Error).message}`);
    }
  };
  const creds = grpc.ServerCredentials.createSsl(read('client CA', tls.clientCa), [{ cert_chain: read('certificate', tls.cert), private_key: read('key', tls.key) }], true);
  return new Promise((resolve, reject) => server.bindAsync(address, creds, (e, port) => (e ? reject(e) : resolve(port))));
}

export async function listen(server: grpc.Server, socket: string, mode: string): Promise<void> {
  mkdirSync(dirname(socket), { recursive: true });
  rmSync(socket, { force: true });
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));
  chmodSync(socket, parseInt(mode, 8));
}
