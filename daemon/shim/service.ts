// containerd.task.v2.Task over ttrpc for the shim's one task. Each call and its result is
// logged (a call that never returns shows as a start without an end). Methods Lodger does
// not carry out (Pause, Checkpoint, Update) answer UNIMPLEMENTED; Stats is the sandbox's use (stats.ts). An exec runs in
// the task's sandbox through lodgerd (exec.ts).
import { Code, TtrpcError, TtrpcServer, type Handler } from '../../lib/index.ts';
import type { Mount } from './bundle.ts';
import type { Log } from './log.ts';
import type { ExecCreate } from './exec.ts';
import { encodeMetrics, METRICS_TYPE_URL } from './stats.ts';
import { TASK_SERVICE, taskCodecs, timestamp } from './proto.ts';
import { Task, type TaskDeps } from './task.ts';

export interface ShimServiceOptions extends TaskDeps {
  /** Called once Shutdown found nothing left to serve: the process exits. */
  onShutdown: () => void;
  version: string;
}

interface IdReq { id: string; execId?: string }

const brief = (v: unknown): string => {
  // Buffers reach the replacer as their toJSON form.
  const s = JSON.stringify(v, (_k, x: unknown) => ((x as { type?: unknown })?.type === 'Buffer' && Array.isArray((x as { data?: unknown }).data) ? `<${(x as { data: unknown[] }).data.length} bytes>` : x));
  return s.length > 600 ? `${s.slice(0, 600)}…` : s;
};

export function shimServer(o: ShimServiceOptions): TtrpcServer {
  let task: Task | null = null;
  let creating = false;
  const log: Log = o.log;

  /** The task a request names (whatever its exec id). */
  const get = (req: IdReq): Task => {
    if (!task || task.req.id !== req.id || task.deleted) throw new TtrpcError(Code.NOT_FOUND, `task ${req.id} not found`);
    return task;
  };
  // containerd names the task's own process by an empty exec id (or, in some calls, the container id).
  const execOf = (req: IdReq): string | null => (req.execId && req.execId !== req.id ? req.execId : null);

  const handlers: Record<string, Handler> = {
    Create: async (req: { id: string; bundle: string; rootfs: Mount[]; terminal: boolean; stdin: string; stdout: string; stderr: string; checkpoint: string }) => {
      if ((task && !task.deleted) || creating) throw new TtrpcError(Code.ALREADY_EXISTS, `this shim already holds task ${task?.req.id ?? req.id}`);
      creating = true;
      try {
        task = await Task.create(req, o);
      } finally {
        creating = false;
      }
      return { pid: task.pid };
    },
    Exec: (req: ExecCreate) => {
      get(req).addExec(req);
      return {};
    },
    Start: async (req: IdReq) => {
      const t = get(req);
      const e = execOf(req);
      if (e) t.startExec(e);
      else await t.start();
      return { pid: t.pid };
    },
    State: (req: IdReq) => {
      const e = execOf(req);
      return e ? get(req).exec(e).state() : get(req).state();
    },
    Wait: async (req: IdReq) => {
      const t = get(req);
      const e = execOf(req);
      const p = e ? t.exec(e) : t;
      await p.exited;
      return { exitStatus: p.exitStatus, exitedAt: timestamp(p.exitedAtMs) };
    },
    Kill: async (req: IdReq & { signal: number; all: boolean }) => {
      const t = get(req);
      if (!Number.isInteger(req.signal) || req.signal < 1 || req.signal > 64) throw new TtrpcError(Code.INVALID_ARGUMENT, `signal ${req.signal}: must be 1-64`);
      const e = execOf(req);
      await (e ? t.exec(e) : t).kill(req.signal);
      return {};
    },
    Delete: async (req: IdReq) => {
      const e = execOf(req);
      if (e) return get(req).deleteExec(e);
      const res = await get(req).delete();
      // containerd's Shutdown follows at once; should it never come, the shim is not left behind.
      setTimeout(() => { log('no Shutdown within 60 s of Delete'); o.onShutdown(); }, 60_000).unref();
      return res;
    },
    Pids: (req: IdReq) => ({ processes: [{ pid: get(req).pid }] }),
    // protobufjs's Any wrapper names the field type_url whatever keepCase says.
    Stats: async (req: IdReq) => ({ stats: { type_url: METRICS_TYPE_URL, value: encodeMetrics(await get(req).stats()) } }),
    Connect: () => ({ shimPid: process.pid, taskPid: task?.pid ?? 0, version: o.version }),
    CloseIO: (req: IdReq & { stdin: boolean }) => {
      const e = execOf(req);
      if (req.stdin) (e ? get(req).exec(e) : get(req)).closeStdin();
      return {};
    },
    ResizePty: (req: IdReq) => {
      get(req);
      return {};
    },
    Shutdown: async (req: { id: string; now: boolean }) => {
      if (task && !task.deleted && !req.now) return {}; // still serving its task, as runc's shim answers
      if (task && !task.deleted) await task.release();
      o.onShutdown();
      return {};
    },
    // Answered here rather than by the server, so the log shows them.
    ...Object.fromEntries(['Pause', 'Resume', 'Checkpoint', 'Update'].map((m) => [m, () => {
      throw new TtrpcError(Code.UNIMPLEMENTED, `${m} is not supported by the Lodger shim`);
    }])),
  };

  const server = new TtrpcServer({ log });
  const logged: Record<string, Handler> = {};
  for (const [name, h] of Object.entries(handlers)) {
    logged[name] = async (req, ctx) => {
      log(`→ ${name} ${brief(req)}`);
      try {
        const res = await h(req, ctx);
        log(`← ${name} ok ${brief(res)}`);
        return res;
      } catch (e) {
        log(`← ${name} ${e instanceof TtrpcError ? e.code : 'UNKNOWN'}: ${(e as Error).message}`);
        throw e;
      }
    };
  }
  server.register(TASK_SERVICE, taskCodecs(), logged);
  return server;
}
