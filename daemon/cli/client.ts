// The CLI's side of lodgerd's gRPC API over its unix socket.
import * as grpc from '@grpc/grpc-js';
import { existsSync } from 'node:fs';
import { loadApi } from '../api.ts';
import { defaultConfigPath, loadConfig } from '../config.ts';

export function defaultSocket(): string {
  if (process.env.LODGER_SOCKET) return process.env.LODGER_SOCKET;
  try {
    const file = defaultConfigPath();
    if (existsSync(file)) return loadConfig(file).socket;
  } catch { /* fall through to the installed default */ }
  return '/run/lodger/lodgerd.sock';
}

export type Unary = <T = Record<string, unknown>>(method: string, req: unknown, deadlineMs?: number) => Promise<T>;

export interface ApiClient {
  call: Unary;
  stream(method: string, req: unknown): grpc.ClientReadableStream<Record<string, unknown>>;
  close(): void;
}

export function connect(socket: string): ApiClient {
  const { lodger } = loadApi();
  const Ctor = lodger.Lodger as grpc.ServiceClientConstructor;
  const client = new Ctor(`unix://${socket}`, grpc.credentials.createInsecure());
  const c = client as unknown as Record<string, (...a: unknown[]) => unknown>;
  return {
    call: (method, req, deadlineMs = 30_000) => new Promise((resolve, reject) => {
      c[method]!.call(client, req, { deadline: Date.now() + deadlineMs }, (e: grpc.ServiceError | null, res: unknown) => {
        if (!e) return resolve(res as never);
        const why = e.code === grpc.status.UNAVAILABLE ? `lodgerd is not answering on ${socket} (${e.details})` : e.details;
        reject(Object.assign(new Error(why), { grpcCode: e.code }));
      });
    }),
    stream: (method, req) => c[method]!.call(client, req) as grpc.ClientReadableStream<Record<string, unknown>>,
    close: () => client.close(),
  };
}
