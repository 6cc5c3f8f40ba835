// containerd's Task service (runtime v2, as of containerd 1.6.20, vendored under proto/)
// as ttrpc method codecs: proto-loader gives each method's (de)serializers.
import * as protoLoader from '@grpc/proto-loader';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ClientCodec, MethodCodec } from '../../lib/index.ts';

export const TASK_SERVICE = 'containerd.task.v2.Task';

export type TaskCodecs = Record<string, MethodCodec & ClientCodec>;

let cached: TaskCodecs | null = null;

export function taskCodecs(): TaskCodecs {
  if (cached) return cached;
  const dir = join(dirname(fileURLToPath(import.meta.url)), 'proto');
  const def = protoLoader.loadSync('github.com/containerd/containerd/runtime/v2/task/shim.proto', {
    includeDirs: [dir], keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true,
  });
  cached = def[TASK_SERVICE] as unknown as TaskCodecs;
  return cached;
}

/** A protobuf Timestamp for a time in ms. */
export const timestamp = (ms: number): { seconds: number; nanos: number } => ({ seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 });
