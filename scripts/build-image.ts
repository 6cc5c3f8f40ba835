// Builds (or finds in the cache) the guest image; run by scripts/setup.mjs.
// LODGER_GUEST_KERNEL / LODGER_GUEST_MODULES select a kernel other than Debian's cloud kernel.
import { defaultHostPaths } from '../sandbox-runtime/host.ts';
import { ensureGuestImage } from '../sandbox-runtime/image/index.ts';

const quiet = process.argv.includes('--quiet');
const log = (m: string): void => { if (!quiet) console.error(`[setup] ${m}`); };
try {
  const image = await ensureGuestImage(defaultHostPaths(), {
    kernel: process.env.LODGER_GUEST_KERNEL || undefined,
    modulesDir: process.env.LODGER_GUEST_MODULES || undefined,
  }, log);
  log(`guest image ready: ${image.initramfs}`);
} catch (e) {
  console.error(`[setup] ${(e as Error).message}`);
  process.exit(1);
}
