// Public door of the sandbox runtime. Knows nothing of SLOs, jobs or policies. Fakes for
// tests are in testing.ts; QEMU's internals stay behind openRuntime().
export * from './contract.ts';
export * from './errors.ts';
export { defaultHostPaths, VMM_OOM_SCORE_ADJ, type HostPaths } from './host.ts';
export { decideAccel, probeHost, type AccelChoice, type AccelRequest, type QemuAccel } from './accel.ts';
export { CgroupManager, Cgroup, detectCgroupVersion, type CgroupKnobs, type CgroupVersion, type KnobWrite } from './cgroup/index.ts';
export { ensureGuestImage, ensureMinimalKernel, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, writeCpio, type CpioEntry, type GuestImage, type ImageOptions } from './image/index.ts';
export type { AgentConnection, HostedRuntime, HostedSandbox, JailOptions, JailStatus, QemuRuntimeOptions, VcpuUnplugMode, VmmMemory } from './qemu/index.ts';
export { DEFAULT_JAIL, readJailStatus } from './qemu/index.ts';
export {
  chooseBackend, decideBackend, openGvisorRuntime, openRuntime, type BackendChoice, type OpenGvisorOptions, type OpenRuntimeOptions, type RuntimeRequest,
} from './open.ts';
export { MultiRuntime, type BackendEntry } from './multi.ts';
export type { GvisorPlatform, GvisorRuntime, GvisorRuntimeOptions, GvisorSandbox } from './gvisor/index.ts';
export { gvisorJailReport, gvisorJailViolation, SANDBOX_RLIMITS } from './gvisor/index.ts';
export type { GuestStats, ExitStatus } from './agent/index.ts';
// For suites that speak the agent's wire protocol to a real guest.
export { AgentClient, encodeFrame, FrameType } from './agent/index.ts';
export { runDoctor, type Check } from './doctor.ts';
// OCI images as job roots: opened, checked, unpacked once per image ID into a bounded cache.
export {
  ImageCache, ImageError, parseRef, resolveUser, runSettings, type CachedImage, type ImageCacheOptions, type ImageErrorCode, type ImageInfo, type ImageLease,
  type ImageRunConfig, type RunSettings,
} from './oci/index.ts';
