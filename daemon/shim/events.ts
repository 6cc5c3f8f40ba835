// Task events published to containerd (as runc's shim does): a ForwardRequest on
// containerd's ttrpc socket (TTRPC_ADDRESS). CRI learns of a container's exit this way;
// ctr waits on the Task's Wait instead. Field numbers are those of the vendored
// api/events/task.proto and api/services/ttrpc/events/v1/events.proto.
import { ProtoWriter, TtrpcClient } from '../../lib/index.ts';

export type TaskEvent =
  | { topic: '/tasks/create'; containerId: string; bundle: string; pid: number; stdin: string; stdout: string; stderr: string }
  | { topic: '/tasks/start'; containerId: string; pid: number }
  /** execId: an exec's; absent, the task's own process (whose exec id is the container id). */
  | { topic: '/tasks/exit'; containerId: string; execId?: string; pid: number; exitStatus: number; exitedAtMs: number }
  | { topic: '/tasks/exec-added'; containerId: string; execId: string }
  | { topic: '/tasks/exec-started'; containerId: string; execId: string; pid: number }
  | { topic: '/tasks/delete'; containerId: string; pid: number; exitStatus: number; exitedAtMs: number };

const ts = (ms: number): Buffer => new ProtoWriter().uint(1, Math.floor(ms / 1000)).uint(2, (ms % 1000) * 1_000_000).done();

/** The event message and its type URL (typeurl uses the bare message name for gogo types). */
export function encodeEvent(e: TaskEvent): { typeUrl: string; value: Buffer } {
  switch (e.topic) {
    case '/tasks/create': {
      const io = new ProtoWriter().bytes(1, e.stdin).bytes(2, e.stdout).bytes(3, e.stderr).done();
      return { typeUrl: 'containerd.events.TaskCreate', value: new ProtoWriter().bytes(1, e.containerId).bytes(2, e.bundle).bytes(4, io, true).uint(6, e.pid).done() };
    }
    case '/tasks/start':
      return { typeUrl: 'containerd.events.TaskStart', value: new ProtoWriter().bytes(1, e.containerId).uint(2, e.pid).done() };
    case '/tasks/exit':
      // id (2) is the exec id: the init process's is the container id, as runc's shim sends it.
      return { typeUrl: 'containerd.events.TaskExit', value: new ProtoWriter().bytes(1, e.containerId).bytes(2, e.execId ?? e.containerId).uint(3, e.pid).uint(4, e.exitStatus).bytes(5, ts(e.exitedAtMs), true).done() };
    case '/tasks/exec-added':
      return { typeUrl: 'containerd.events.TaskExecAdded', value: new ProtoWriter().bytes(1, e.containerId).bytes(2, e.execId).done() };
    case '/tasks/exec-started':
      return { typeUrl: 'containerd.events.TaskExecStarted', value: new ProtoWriter().bytes(1, e.containerId).bytes(2, e.execId).uint(3, e.pid).done() };
    case '/tasks/delete':
      return { typeUrl: 'containerd.events.TaskDelete', value: new ProtoWriter().bytes(1, e.containerId).uint(2, e.pid).uint(3, e.exitStatus).bytes(4, ts(e.exitedAtMs), true).done() };
  }
}

export function encodeForward(namespace: string, e: TaskEvent, atMs: number): Buffer {
  const { typeUrl, value } = encodeEvent(e);
  const any = new ProtoWriter().bytes(1, typeUrl).bytes(2, value).done();
  const envelope = new ProtoWriter().bytes(1, ts(atMs), true).bytes(2, namespace).bytes(3, e.topic).bytes(4, any, true).done();
  return new ProtoWriter().bytes(1, envelope, true).done();
}

/** Publishes events in order, each bounded; a failure is logged, never fatal to the task. */
export class Publisher {
  private client: TtrpcClient | null = null;
  private chain: Promise<void> = Promise.resolve();

  constructor(private readonly address: string, private readonly namespace: string, private readonly log: (m: string) => void) {}

  publish(e: TaskEvent): Promise<void> {
    this.chain = this.chain.then(() => this.send(e));
    return this.chain;
  }

  private async send(e: TaskEvent): Promise<void> {
    if (!this.address) return void this.log(`event ${e.topic} not published: no TTRPC_ADDRESS`);
    const payload = encodeForward(this.namespace, e, Date.now());
    for (let attempt = 1; attempt <= 2; attempt++) {
      try {
        this.client ??= await TtrpcClient.connect(this.address.replace(/^unix:\/\//, ''), { timeoutMs: 5000 });
        await this.client.call('containerd.services.events.ttrpc.v1.Events', 'Forward', payload, { timeoutMs: 5000 });
        return void this.log(`event ${e.topic} published`);
      } catch (err) {
        this.client?.close();
        this.client = null;
        if (attempt === 2) this.log(`event ${e.topic} not published: ${(err as Error).message}`);
      }
    }
  }

  close(): void {
    this.client?.close();
  }
}
