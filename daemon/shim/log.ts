// The shim's log: a file in the bundle (stdout and stderr are containerd's, and the
// detached server has none), and a second file when LODGER_SHIM_LOG names one (the
// bundle goes with the task; a test keeps its shims' logs there).
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';

export type Log = (m: string) => void;

export function shimLog(bundle: string, id: string): Log {
  const files = [join(bundle, 'lodger-shim.log'), process.env.LODGER_SHIM_LOG].filter((f): f is string => !!f);
  return (m) => {
    const line = `${new Date().toISOString()} shim ${process.pid} ${id}: ${m}\n`;
    for (const f of files) {
      try {
        appendFileSync(f, line);
      } catch { /* the bundle may be gone already (after Delete) */ }
    }
  };
}
