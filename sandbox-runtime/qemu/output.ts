// The job's /output disk: copied back to the host directory after a job, also when the
// VMM died (the image is checked first then).
import { existsSync } from 'node:fs';
import type { CopyReport } from '../copyback.ts';
import { extractOutputImage } from '../disks.ts';
import { SandboxError } from '../errors.ts';

export class OutputDisk {
  /** Collected since the last command started: stop() need not copy it again. */
  private collectedSinceExec = false;
  /** What the last copy did and skipped (symlinks, devices, sparse files...). */
  lastReport: CopyReport | null = null;

  constructor(readonly image: string, private readonly sandboxId: string, private readonly log: (m: string) => void = () => {}) {}

  get collected(): boolean {
    return this.collectedSinceExec;
  }

  commandStarted(): void {
    this.collectedSinceExec = false;
  }

  /** Copies /output to `dir`; `sync` (a live guest) flushes it to the disk first. */
  async collect(dir: string, sync: (() => Promise<void>) | null): Promise<string[]> {
    if (!existsSync(this.image)) throw new SandboxError('SANDBOX_OUTPUT_FAILED', `output disk of ${this.sandboxId} is gone`);
    try {
      if (sync) await sync();
      // A guest that died may have left the filesystem half-written: check it first.
      const report = this.lastReport = await extractOutputImage(this.image, dir, !sync);
      this.collectedSinceExec = true;
      if (report.skipped.length) {
        this.log(`/output: ${report.skipped.length} entries not copied: ${report.skipped.slice(0, 5).map((s) => `${s.path} (${s.why})`).join('; ')}${report.skipped.length > 5 ? '; ...' : ''}`);
      }
      return report.names;
    } catch (e) {
      throw new SandboxError('SANDBOX_OUTPUT_FAILED', `collecting /output of ${this.sandboxId}: ${(e as Error).message}`, { cause: e });
    }
  }
}
