// Builds (or finds in the cache) the guest image; run by scripts/setup.mjs.
// LODGER_GUEST_KERNEL: a kernel path, "minimal" (built here from linux-source, the default
// when the source is installed) or "debian" (the cloud kernel); LODGER_GUEST_MODULES: its modules.
import { defaultHostPaths, ensureGuestImage, ensureMinimalKernel } from '../sandbox-runtime/index.ts';

const quiet = process.argv.includes('--quiet');
const log = (m: string): void => { if (!quiet) console.error(`[setup] ${m}`); };
const host = defaultHostPaths();
const wanted = process.env.LODGER_GUEST_KERNEL || undefined;
if (wanted === undefined || wanted === 'minimal') {
  try {
    const k = await ensureMinimalKernel(host, log);
    if (!k) log('no linux-source package: using the Debian cloud kernel (slower to boot)');
  } catch (e) {
    // The generic kernel still works: say why the fast one is missing and go on.
    console.error(`[setup] minimal guest kernel not built, using the Debian cloud kernel: ${(e as Error).message}`);
  }
}
try {
  const image = await ensureGuestImage(host, {
    kernel: wanted,
    modulesDir: process.env.LODGER_GUEST_MODULES || undefined,
  }, log);
  log(`guest image ready: ${image.initramfs}`);
} catch (e) {
  console.error(`[setup] ${(e as Error).message}`);
  process.exit(1);
}
