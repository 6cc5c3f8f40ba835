// The sandbox's lifecycle as one table: every state change goes through transition(), so
// an illegal one is refused with SANDBOX_BAD_STATE instead of corrupting the object.
import type { SandboxState } from '../contract.ts';
import { SandboxError } from '../errors.ts';

/** The contract's states, plus 'released': this object let go of a VMM that runs on for another owner. */
export type Phase = SandboxState | 'released';

export const TRANSITIONS: Readonly<Record<Phase, readonly Phase[]>> = {
  // attach() goes through starting to a live VMM's state, or straight to suspended.
  created: ['starting', 'suspended', 'stopped'],
  starting: ['running', 'paused', 'stopping', 'failed'],
  running: ['paused', 'suspending', 'stopping', 'failed', 'released'],
  paused: ['running', 'suspending', 'stopping', 'failed', 'released'],
  // A failed save puts the guest back as it was.
  suspending: ['suspended', 'running', 'paused', 'stopping', 'failed'],
  suspended: ['resuming', 'stopping', 'released'],
  // A failed restore keeps the saved state: the sandbox stays suspended.
  resuming: ['running', 'paused', 'suspended', 'stopping', 'failed'],
  stopping: ['stopped', 'failed'],
  stopped: [],
  failed: [],
  released: [],
};

export function canTransition(from: Phase, to: Phase): boolean {
  return TRANSITIONS[from].includes(to);
}

/** Throws SANDBOX_BAD_STATE unless the table allows `from` -> `to`. */
export function checkTransition(id: string, from: Phase, to: Phase): void {
  if (!canTransition(from, to)) throw new SandboxError('SANDBOX_BAD_STATE', `sandbox ${id} cannot go from ${from} to ${to}`);
}

/** What status() reports: a released sandbox is no longer this object's to run. */
export function publicState(p: Phase): SandboxState {
  return p === 'released' ? 'stopped' : p;
}
