// `lodger doctor`'s view of the containerd side: is the shim where containerd looks for
// it (its PATH), and does containerd's config name the runtime for CRI.
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Check } from '../../sandbox-runtime/index.ts';

export const SHIM_BINARY = 'containerd-shim-lodger-v2';

export function shimChecks(o: { path?: string; containerdConfig?: string } = {}): Check[] {
  const dirs = (o.path ?? process.env.PATH ?? '').split(':').filter(Boolean);
  const found = dirs.map((d) => join(d, SHIM_BINARY)).find((f) => {
    try {
      accessSync(f, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
  const checks: Check[] = [{
    name: 'shim', ok: !!found, required: false,
    detail: found ? `${SHIM_BINARY} at ${found}` : `${SHIM_BINARY} is not on PATH: containerd cannot start io.containerd.lodger.v2 tasks`,
    ...(found ? {} : { fix: `link the install's bin/${SHIM_BINARY}.js as /usr/local/bin/${SHIM_BINARY} (npm install -g does)` }),
  }];
  const file = o.containerdConfig ?? '/etc/containerd/config.toml';
  const text = existsSync(file) ? readFileSync(file, 'utf8') : null;
  const configured = text !== null && /runtime_type\s*=\s*"io\.containerd\.lodger\.v2"/.test(text);
  checks.push({
    name: 'containerd', ok: configured, required: false,
    detail: text === null ? `${file} not found (ctr run --runtime io.containerd.lodger.v2 needs no config; CRI does)`
      : configured ? `${file} has a CRI runtime of type io.containerd.lodger.v2` : `${file} has no CRI runtime of type io.containerd.lodger.v2`,
    ...(configured ? {} : { fix: 'add [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.lodger] runtime_type = "io.containerd.lodger.v2" (docs/KUBERNETES.md)' }),
  });
  return checks;
}
