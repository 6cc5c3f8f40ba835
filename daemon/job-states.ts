// The action→job-state table: when the controller pauses, resumes, suspends or restores
// a job's sandbox, the job's state follows, with the controller's reason.
import type { Action, Decision } from '../control/index.ts';
import type { JobState } from './store.ts';

type SandboxAction = Extract<Action, { kind: 'pause' | 'resume' | 'suspend' | 'restore' }>['kind'];

export const JOB_STATE_AFTER = {
  pause: 'paused', resume: 'running', suspend: 'suspended', restore: 'running',
} as const satisfies Record<SandboxAction, JobState>;

export interface JobStateChange {
  sandbox: string;
  state: (typeof JOB_STATE_AFTER)[SandboxAction];
  reason: string;
}

/** The job-state changes a decision implies: one per action that succeeded and moves a job. */
export function jobStateChanges(d: Pick<Decision, 'results'>): JobStateChange[] {
  const out: JobStateChange[] = [];
  for (const res of d.results) {
    const k = res.action.kind;
    if (res.ok && k in JOB_STATE_AFTER) out.push({ sandbox: res.action.sandbox, state: JOB_STATE_AFTER[k as SandboxAction], reason: res.action.reason });
  }
  return out;
}
