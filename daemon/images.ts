// Jobs from OCI images, at the daemon's boundary: a submission's image is opened and
// checked (every digest) before the job is queued, and the job's stored spec is what will
// run: the image config's command, env, workdir and user under the job's own overrides,
// plus the image ID the scheduler asks the cache for.
import * as grpc from '@grpc/grpc-js';
import { ImageError, runSettings, type ImageCache } from '../sandbox-runtime/index.ts';
import { InvalidRequest } from './api.ts';
import type { JobSpec } from './store.ts';

export async function resolveImageSpec(spec: JobSpec, images: ImageCache | null): Promise<JobSpec> {
  if (!spec.image) return spec;
  if (!images) throw new InvalidRequest('this lodgerd has no image cache');
  const info = await images.inspect(spec.image);
  const run = runSettings(info.config, { command: spec.command, env: spec.env, workdir: spec.workdir, user: spec.user }, spec.image);
  return {
    ...spec, name: spec.name || run.argv[0]!.split('/').pop()!, command: run.argv, env: run.env, imageId: info.id,
    ...(run.workdir !== '/' ? { workdir: run.workdir } : {}), ...(run.user ? { user: run.user } : {}),
  };
}

/** The gRPC status of an image error: the code and what is wrong, for the client to show. */
export function imageStatus(e: ImageError): { code: grpc.status; details: string } {
  const code = e.code === 'IMAGE_NOT_FOUND' ? grpc.status.NOT_FOUND
    : e.code === 'IMAGE_CACHE_FAILED' ? grpc.status.INTERNAL
      : e.code === 'IMAGE_TOO_LARGE' ? grpc.status.RESOURCE_EXHAUSTED : grpc.status.INVALID_ARGUMENT;
  return { code, details: `${e.code}: ${e.message}` };
}
