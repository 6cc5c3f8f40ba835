// containerd.task.v2.Task over ttrpc for the shim's one task. Each call and its result is
// logged (a call that never returns shows as a start without an end). Methods Lodger does
// not carry out (Exec, Pause, Checkpoint, Update, Stats) answer UNIMPLEMENTED.
import { Code, TtrpcError, TtrpcServer, type Handler } from '../../lib/index.ts';
import type { Mount } from './bundle.ts';
import type { Log } from './log.ts';
import { TASK_SERVICE, taskCodecs } from './proto.ts';
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

  const get = (req: IdReq): Task => {
    if (req.execId) throw new TtrpcError(Code.NOT_FOUND, `exec ${req.execId}: the Lodger shim runs no execs`);
    if (!task || task.req.id !== req.id || task.deleted) throw new TtrpcError(Code.NOT_FOUND, `task ${req.id} not found`);
    return task;
  };

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
    Start: async (req: IdReq) => {
      const t = get(req);
      await t.start();
      return { pid: t.pid };
    },
    State: (req: IdReq) => get(req).state(),
    Wait: async (req: IdReq) => {
      const t = get(req);
      await t.exited;
      return { exitStatus: t.exitStatus, exitedAt: t.state().exitedAt };
    },
    Kill: async (req: IdReq & { signal: number; all: boolean }) => {
      await get(req).kill(req.signal);
      return {};
    },
    Delete: async (req: IdReq) => {
      const res = await get(req).delete();
      // containerd's Shutdown follows at once; should it never come, the shim is not left behind.
      setTimeout(() => { log('no Shutdown within 60 s of Delete'); o.onShutdown(); }, 60_000).unref();
      return res;
    },
    Pids: (req: IdReq) => ({ processes: [{ pid: get(req).pid }] }),
    Connect: () => ({ shimPid: process.pid, taskPid: task?.pid ?? 0, version: o.version }),
    CloseIO: (req: IdReq & { stdin: boolean }) => {
      if (req.stdin) get(req).closeStdin();
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
    ...Object.fromEntries(['Exec', 'Pause', 'Resume', 'Checkpoint', 'Update', 'Stats'].map((m) => [m, () => {
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
