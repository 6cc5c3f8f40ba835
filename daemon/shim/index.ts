// Public door of the containerd shim (containerd-shim-lodger-v2; its process is main.ts):
// the parts others check or reuse.
export { ArgsError, parseArgs, socketPath, type ShimArgs } from './args.ts';
export { BundleError, jobFromConfig, jobIdFor, mountArgs, type BundleJob, type Mount } from './bundle.ts';
export { encodeEvent, encodeForward, type TaskEvent } from './events.ts';
export { TASK_SERVICE, taskCodecs } from './proto.ts';
export { SHIM_BINARY, shimChecks } from './doctor.ts';
