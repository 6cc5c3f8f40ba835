// What a sandbox needs of its guest agent's channel. The real one is ../agent/client.ts;
// unit tests pass a fake through QemuRuntimeOptions.agent.
import { AgentClient, type ExecRequest as AgentExecRequest, type GuestStats } from '../agent/index.ts';
import type { ExecHandle } from '../contract.ts';

export interface AgentConnection {
  /** Latest guest report, from a heartbeat or an answer. */
  readonly stats: GuestStats | null;
  /** The agent's hello: version and guest uptimes (ms) at its boot phases. */
  readonly hello: string | null;
  /** Decides what a closed channel means (the owner knows whether QEMU died). */
  onChannelClose: () => Promise<Error>;
  connect(timeoutMs: number): Promise<void>;
  waitReady(timeoutMs: number): Promise<void>;
  /** Connects again to a new VMM serving the same guest; output sent meanwhile is replayed. */
  reconnect(timeoutMs: number): Promise<void>;
  /** Lets go of the channel without failing what is in flight. */
  detach(): void;
  close(): void;
  /** Fails everything in flight with `e`. */
  fail(e: Error): void;
  exec(req: AgentExecRequest): Promise<ExecHandle>;
  resumeExec(id: number, offsets: [number, number]): Promise<ExecHandle>;
  requestStats(timeoutMs?: number): Promise<GuestStats>;
  setCpus(n: number): Promise<GuestStats>;
  waitStats(pred: (s: GuestStats) => boolean, timeoutMs: number): Promise<GuestStats>;
  sync(): Promise<void>;
  shutdown(): Promise<void>;
  ping(timeoutMs?: number): Promise<number>;
  /** Bytes straight onto the channel, for tests of the guest's framing. */
  sendRaw(bytes: Buffer): void;
}

export type AgentFactory = (socketPath: string) => AgentConnection;

export const realAgent: AgentFactory = (path) => new AgentClient(path);
