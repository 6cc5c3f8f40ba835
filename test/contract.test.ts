// The one contract suite (test/contract-suite.ts) against both real backends and the fake.
// QEMU runs under TCG here; gVisor's suite is skipped, saying why, where runsc is missing.
import { join } from 'node:path';
import { openGvisorRuntime, type Sandbox } from '../sandbox-runtime/index.ts';
import { FakeRuntime, type FakeSandbox } from '../sandbox-runtime/testing.ts';
import { contractSuite } from './contract-suite.ts';
import { runscInstalled, testRuntime, type TestRuntime } from './helpers.ts';

/** What a real sandbox leaves on the host while it lives: its cgroup directories and run directory. */
const hostPaths = (sb: Sandbox): string[] => {
  const s = sb as unknown as { cgroupDirs: ReadonlyMap<string, string> | null; paths: { runDir?: string; dir?: string } };
  return [...(s.cgroupDirs?.values() ?? []), s.paths.runDir ?? s.paths.dir ?? ''].filter(Boolean);
};
const killPid = (sb: Sandbox): void => { process.kill(sb.status().pid!, 'SIGKILL'); };

let qemu: TestRuntime | null = null;
contractSuite({
  name: 'qemu', realGuest: true, kill: killPid, leftovers: hostPaths,
  open: async () => (qemu = await testRuntime('contract')).runtime,
  close: async () => { await qemu?.stopAll(); },
});

if (!runscInstalled) console.error('contract.test: runsc is not installed (npm run setup installs it from backports): the gVisor suite is skipped');
let gvisor: Awaited<ReturnType<typeof openGvisorRuntime>> | null = null;
contractSuite({
  name: 'gvisor', realGuest: true, kill: killPid, leftovers: hostPaths, ...(runscInstalled ? {} : { skip: 'runsc is not installed' }),
  open: async (dir) => (gvisor = await openGvisorRuntime({ host: { runDir: join(dir, 'run') }, cgroupParent: `lodger-contract-gv-${process.pid}` })).runtime,
  close: async () => { await gvisor?.cgroups?.removeParents().catch(() => {}); },
});

// The fake runs no guest: a command ending in `sleep N` takes N seconds, any other returns at once.
const fake = new FakeRuntime({
  command: async (req) => {
    const m = /sleep (\d+)\s*$/.exec(req.argv.join(' '));
    if (m) await new Promise((r) => setTimeout(r, Number(m[1]) * 1000));
    return 0;
  },
});
contractSuite({
  name: 'fake', realGuest: false, kill: (sb) => (sb as FakeSandbox).crash(),
  open: async () => fake, close: async () => {},
});
