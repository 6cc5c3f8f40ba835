#!/usr/bin/env node
// Installs what `npm test` and `npm run demo` need on a fresh Debian host, and nothing
// twice: Debian packages (apt-get when root, otherwise the exact command to run), npm
// packages, the native addon, and the guest image (rebuilt only when its inputs change).
// Plain JavaScript with no dependencies, because it runs before `npm install`.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readlinkSync, statSync, readdirSync, readFileSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { backportsEntry } from './backports.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const quiet = process.argv.includes('--quiet');
const log = (msg) => { if (!quiet) console.error(`[setup] ${msg}`); };

// Debian packages by purpose. Tests and the demo use the real services.
const DEBIAN_PACKAGES = [
  'qemu-system-x86', // the VMM
  'linux-image-cloud-amd64', // default guest kernel
  'busybox-static', // guest userland
  'e2fsprogs', // mkfs.ext4 / debugfs / e2fsck for job disks
  'lz4', // unpacks the kernel's vmlinux for PVH boot
  'gcc', 'libc6-dev', 'g++', 'make', // guest agent (static C) and the native addon
  'nginx-light', 'redis-server', 'hey', // real online services and load for tests and demo
  'prometheus', // the dashboards' queries are checked against a real Prometheus
  'redis-tools', 'util-linux', 'fonts-dejavu-core', // colocation benchmark: redis-benchmark, taskset, chart text
  'umoci', 'skopeo', // image tests and bench build OCI layouts and convert them to oci-archive / docker-archive
  'containerd', // the shim test runs a private containerd (1.6, with ctr and runc) against containerd-shim-lodger-v2
];

// Lodger's minimal guest kernel (twice as fast to boot); without them the Debian cloud
// kernel is used, so a user who cannot install them is warned, not stopped.
const OPTIONAL_PACKAGES = ['linux-source-6.1', 'flex', 'bison', 'bc', 'libelf-dev', 'libssl-dev'];

function missingDebianPackages(list = DEBIAN_PACKAGES) {
  const missing = [];
  for (const pkg of list) {
    const r = spawnSync('dpkg-query', ['-W', '-f=${Status}', pkg], { encoding: 'utf8' });
    if (r.status !== 0 || !r.stdout.includes('install ok installed')) missing.push(pkg);
  }
  return missing;
}

function ensureDebianPackages() {
  if (!existsSync('/usr/bin/dpkg-query')) {
    log('not a Debian host: skipping package checks; install QEMU, busybox-static, e2fsprogs and a C compiler yourself');
    return;
  }
  const required = missingDebianPackages();
  const optional = missingDebianPackages(OPTIONAL_PACKAGES);
  const missing = [...required, ...optional];
  if (missing.length === 0) return;
  const cmd = `apt-get update && apt-get install -y --no-install-recommends ${missing.join(' ')}`;
  if (process.getuid?.() !== 0) {
    if (required.length === 0) {
      console.error(`[setup] not installed: ${optional.join(', ')}: using the Debian cloud kernel (slower to boot). As root:\n  ${cmd}`);
      return;
    }
    console.error(`[setup] missing Debian packages: ${missing.join(', ')}\n[setup] run as root:\n  ${cmd}`);
    process.exit(1);
  }
  log(`installing Debian packages: ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  execFileSync('apt-get', ['update'], { stdio: quiet ? 'ignore' : 'inherit', env });
  execFileSync('apt-get', ['install', '-y', '--no-install-recommends', ...missing], { stdio: quiet ? 'ignore' : 'inherit', env });
}

// gVisor's runsc: bookworm's own (0.0~20221219) breaks coreutils inside the sandbox
// (statx), backports' (0.0~20240729) works. The contract suite runs on it and `auto` picks
// it on hosts without a usable KVM, so setup installs it from backports, whose entry is
// derived from the host's configured Debian mirror. A failure is a warning: the gVisor
// tests then skip and say why.
const RUNSC_MIN_VERSION = '0.0~20240729';
const BACKPORTS_FILE = '/etc/apt/sources.list.d/lodger-backports.sources';

function runscVersionOk() {
  const r = spawnSync('dpkg-query', ['-W', '-f=${Status} ${Version}', 'runsc'], { encoding: 'utf8' });
  if (r.status !== 0 || !r.stdout.includes('install ok installed')) return false;
  const version = r.stdout.trim().split(' ').pop();
  return spawnSync('dpkg', ['--compare-versions', version, 'ge', RUNSC_MIN_VERSION]).status === 0;
}

function aptSourceFiles() {
  const files = [];
  if (existsSync('/etc/apt/sources.list')) files.push({ name: 'sources.list', text: readFileSync('/etc/apt/sources.list', 'utf8') });
  const dir = '/etc/apt/sources.list.d';
  for (const name of existsSync(dir) ? readdirSync(dir).sort() : []) {
    if (name.endsWith('.list') || name.endsWith('.sources')) files.push({ name, text: readFileSync(join(dir, name), 'utf8') });
  }
  return files;
}

function ensureRunsc() {
  if (!existsSync('/usr/bin/dpkg-query') || process.env.LODGER_SKIP_RUNSC) return;
  if (runscVersionOk()) return;
  const codename = /^VERSION_CODENAME=(\w+)$/m.exec(existsSync('/etc/os-release') ? readFileSync('/etc/os-release', 'utf8') : '')?.[1];
  const entry = codename ? backportsEntry(aptSourceFiles(), codename) : null;
  if (!entry) {
    console.error(`[setup] gVisor: no Debian mirror configured for ${codename ?? 'this release'}; install runsc >= ${RUNSC_MIN_VERSION} yourself (gVisor tests will skip)`);
    return;
  }
  const cmd = `apt-get update && apt-get install -y --no-install-recommends -t ${codename}-backports runsc`;
  if (process.getuid?.() !== 0) {
    console.error(`[setup] gVisor (runsc >= ${RUNSC_MIN_VERSION}) not installed; as root write ${BACKPORTS_FILE}:\n${entry}\nthen:\n  ${cmd}`);
    return;
  }
  log(`installing runsc from ${codename}-backports`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    writeFileSync(BACKPORTS_FILE, entry);
    execFileSync('apt-get', ['update'], { stdio: quiet ? 'ignore' : 'inherit', env });
    execFileSync('apt-get', ['install', '-y', '--no-install-recommends', '-t', `${codename}-backports`, 'runsc'], { stdio: quiet ? 'ignore' : 'inherit', env });
  } catch (e) {
    console.error(`[setup] gVisor: installing runsc failed (${e.message}); gVisor tests will skip`);
  }
}

function mtime(p) {
  try { return statSync(p).mtimeMs; } catch { return 0; }
}

function ensureNpmPackages() {
  const marker = join(root, 'node_modules', '.package-lock.json');
  const lock = join(root, 'package-lock.json');
  const manifest = join(root, 'package.json');
  if (mtime(marker) >= Math.max(mtime(lock), mtime(manifest))) return;
  log('installing npm packages');
  const args = existsSync(lock) ? ['ci', '--no-audit', '--no-fund'] : ['install', '--no-audit', '--no-fund'];
  execFileSync('npm', args, { cwd: root, stdio: quiet ? 'ignore' : 'inherit' });
}

function newestMtime(dir) {
  let newest = 0;
  for (const name of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, name.name);
    newest = Math.max(newest, name.isDirectory() ? newestMtime(p) : mtime(p));
  }
  return newest;
}

function ensureNativeAddon() {
  const dir = join(root, 'native', 'kvm');
  const out = join(dir, 'build', 'Release', 'lodger_kvm.node');
  if (mtime(out) > Math.max(newestMtime(join(dir, 'src')), mtime(join(dir, 'binding.gyp')))) return;
  log('building native/kvm addon');
  // npm ships node-gyp; use it rather than downloading another copy.
  const npmDir = process.env.npm_execpath ? join(dirname(process.env.npm_execpath), '..')
    : join(execFileSync('npm', ['root', '-g'], { encoding: 'utf8' }).trim(), 'npm');
  const gyp = join(npmDir, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  const args = [gyp, 'rebuild', '--directory', dir];
  if (existsSync('/usr/include/node/node.h')) args.push('--nodedir=/usr');
  execFileSync(process.execPath, args, { cwd: root, stdio: quiet ? 'ignore' : 'inherit' });
}

function ensureGuestImage() {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(root, 'scripts', 'build-image.ts'), ...(quiet ? ['--quiet'] : [])],
    { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

/**
 * containerd finds a runtime's shim on its PATH by name: as root, /usr/local/bin gets a link
 * to this checkout's shim (one into a checkout that is gone is replaced; one pointing at
 * another install is left alone, said). Without root, say how.
 */
const SHIM_LINK = '/usr/local/bin/containerd-shim-lodger-v2';
function ensureShimLink() {
  const target = join(root, 'bin', 'containerd-shim-lodger-v2.js');
  let current = null;
  try { current = readlinkSync(SHIM_LINK); } catch (e) { if (e.code !== 'ENOENT') current = `(${e.code}: not a link)`; }
  if (current === target) return;
  // A link into a checkout that is gone is replaced.
  if (current !== null && !current.startsWith('(') && !existsSync(current)) { unlinkSync(SHIM_LINK); current = null; }
  if (current !== null) return log(`${SHIM_LINK} is ${current}, not this checkout's shim: left as it is`);
  if (process.getuid?.() !== 0 || !existsSync(dirname(SHIM_LINK))) return log(`containerd will not find the shim: as root, ln -s ${target} ${SHIM_LINK}`);
  symlinkSync(target, SHIM_LINK);
  log(`containerd-shim-lodger-v2 linked at ${SHIM_LINK} (runtime io.containerd.lodger.v2)`);
}

ensureDebianPackages();
ensureRunsc();
ensureShimLink();
ensureNpmPackages();
ensureNativeAddon();
ensureGuestImage();
