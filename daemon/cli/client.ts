// The CLI's side of lodgerd's gRPC API over its unix socket.
import * as grpc from '@grpc/grpc-js';
import { existsSync, readFileSync } from 'node:fs';
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

/** Client certificate and CA for a TCP endpoint (lodgerd serves TCP only with mutual TLS). */
export interface TlsFiles {
  ca?: string;
  cert?: string;
  key?: string;
}

let tlsFiles: TlsFiles = {};
export function setTls(files: TlsFiles): void {
  tlsFiles = files;
}

/** A unix socket path, or host:port for lodgerd's TCP listener. */
export function isTcpEndpoint(endpoint: string): boolean {
  return !endpoint.startsWith('/') && !endpoint.startsWith('.') && /:\d+$/.test(endpoint);
}

function credentials(endpoint: string): { target: string; creds: grpc.ChannelCredentials } {
  if (!isTcpEndpoint(endpoint)) return { target: `unix://${endpoint}`, creds: grpc.credentials.createInsecure() };
  const { ca, cert, key } = tlsFiles;
  if (!ca || !cert || !key) throw new Error(`${endpoint} is a TCP endpoint: give --tls-ca, --tls-cert and --tls-key (lodgerd serves TCP only with mutual TLS)`);
  return { target: endpoint, creds: grpc.credentials.createSsl(readFileSync(ca), readFileSync(key), readFileSync(cert)) };
}

export function connect(socket: string): ApiClient {
  const { lodger } = loadApi();
  const Ctor = lodger.Lodger as grpc.ServiceClientConstructor;
  const { target, creds } = credentials(socket);
  const client = new Ctor(target, creds);
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
