// Errors thrown by the sandbox runtime. Each class has a stable `code` that callers
// (daemon, CLI, tests) switch on; messages are for people and may change.

export type SandboxErrorCode =
  | 'SANDBOX_BAD_SPEC'
  | 'SANDBOX_BAD_STATE'
  | 'SANDBOX_BOOT_FAILED'
  | 'SANDBOX_BOOT_TIMEOUT'
  | 'SANDBOX_VMM_EXITED'
  | 'SANDBOX_GONE'
  | 'SANDBOX_RESIZE_FAILED'
  | 'SANDBOX_SUSPEND_FAILED'
  | 'SANDBOX_RESUME_FAILED'
  | 'SANDBOX_AGENT_ERROR'
  | 'SANDBOX_OUTPUT_FAILED'
  | 'SANDBOX_OUTPUT_LIMIT'
  | 'SANDBOX_JAIL_FAILED'
  | 'QMP_COMMAND_FAILED'
  | 'QMP_TIMEOUT'
  | 'QMP_CLOSED'
  | 'CGROUP_ERROR'
  | 'IMAGE_BUILD_FAILED'
  | 'HOST_TOOL_FAILED'
  | 'SANDBOX_RUNSC_FAILED';

export class SandboxError extends Error {
  constructor(readonly code: SandboxErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SandboxError';
  }
}

/** The VMM process (QEMU, or gVisor's runsc sandbox) went away (crash, kill -9, guest poweroff) while we needed it. */
export class VmmExitedError extends SandboxError {
  constructor(readonly sandboxId: string, readonly exitCode: number | null, readonly signal: string | null, detail = '', vmm = 'QEMU') {
    super('SANDBOX_VMM_EXITED',
      `sandbox ${sandboxId}: ${vmm} exited (${signal ? `signal ${signal}` : `code ${exitCode}`})${detail ? `: ${detail}` : ''}`);
    this.name = 'VmmExitedError';
  }
}

/** A QMP command answered with an error: names the command so nothing is swallowed. */
export class QmpCommandError extends SandboxError {
  constructor(readonly command: string, readonly errorClass: string, readonly desc: string, readonly args?: unknown) {
    super('QMP_COMMAND_FAILED', `QMP ${command}${args ? ` ${JSON.stringify(args)}` : ''} failed: ${errorClass}: ${desc}`);
    this.name = 'QmpCommandError';
  }
}

/** An update() step failed; `actual` is the state the sandbox was left in, re-read after the failure. */
export class ResizeError extends SandboxError {
  constructor(message: string, readonly actual: { vcpus: number; memoryMiB: number }, options?: { cause?: unknown }) {
    super('SANDBOX_RESIZE_FAILED', message, options);
    this.name = 'ResizeError';
  }
}
