// A gVisor sandbox's record (sandbox.json: what a later process needs to take it up
// again), its cgroup's name, and the host knobs a size means.
import type { CgroupKnobs } from '../cgroup/index.ts';
import { readRecordFile, recordedUids, type RecordBase } from '../record.ts';

/** What a later process needs to take the sandbox up again (sandbox.json). */
export interface GvisorRecord extends RecordBase {
  nextExec: number;
  pausedWhenSuspended: boolean;
}

export function readGvisorRecord(path: string): GvisorRecord | Error {
  const rec = readRecordFile<GvisorRecord>(path);
  if (rec instanceof Error) return rec;
  const j = rec.jail;
  if (j != null && !(Number.isInteger(j.uid) && j.uid > 0 && Number.isInteger(j.gid) && j.gid > 0)) return new Error(`${path}: jail ${JSON.stringify(j)} is not a uid and gid`);
  return rec;
}

/** uids held by the records under a gVisor run directory. */
export const recordedGvisorUids = (runDir: string): Set<number> => recordedUids(runDir, readGvisorRecord);

export const gvisorCgroupName = (id: string): string => `gv-${id}`;

/** The sentry's own memory is charged to the cgroup too: memory.max leaves it this much room above the job's. */
const SENTRY_HEADROOM_MIB = 64;
const PERIOD_US = 100_000;

/** Host knobs for a size: n vCPUs is n CPUs of bandwidth; memory.high is the size, memory.max adds the sentry's room. */
export function sizeKnobs(vcpus: number, memoryMiB: number): CgroupKnobs {
  return {
    cpuMax: { quotaUs: vcpus * PERIOD_US, periodUs: PERIOD_US },
    memoryHighBytes: memoryMiB * 1048576,
    memoryMaxBytes: (memoryMiB + SENTRY_HEADROOM_MIB) * 1048576,
  };
}

