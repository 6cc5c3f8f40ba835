// Watches a folder and reports a change once a burst of events has settled: an editor's
// save is several events, and each reload restarts the control loop.
import { watch } from 'node:fs';

export interface Watcher {
  close(): void;
}

export function watchSettled(dir: string, settleMs: number, changed: () => void): Watcher {
  let pending: NodeJS.Timeout | null = null;
  const w = watch(dir, () => {
    if (pending) clearTimeout(pending);
    pending = setTimeout(changed, settleMs);
  });
  return {
    close() {
      if (pending) clearTimeout(pending);
      w.close();
    },
  };
}
