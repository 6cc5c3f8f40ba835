// containerd-shim-lodger-v2: what containerd runs for runtime io.containerd.lodger.v2.
// `start` launches the detached task server and prints only its address (containerd reads
// start's stdout and stderr together as the address); `delete` cleans up after a shim
// that is gone and prints a DeleteResponse; `serve` is the server itself (those two in server.ts).
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs, socketPath, type ShimArgs } from './args.ts';
import { shimLog } from './log.ts';

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
const READY_MS = 20_000;

async function start(a: ShimArgs, argv: string[]): Promise<void> {
  const bundle = process.cwd();
  const log = shimLog(bundle, a.id);
  const sock = socketPath(a);
  mkdirSync(dirname(sock), { recursive: true, mode: 0o700 });
  // The server must not hold containerd's pipes: containerd reads start's output to its end.
  const rest = argv.slice(0, argv.lastIndexOf('start'));
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ...rest, 'serve'], { cwd: bundle, detached: true, stdio: ['ignore', 'ignore', 'ignore', 'ipc'] });
  const outcome = await new Promise<string | null>((resolve) => {
    const timer = setTimeout(() => resolve(`the shim server did not listen within ${READY_MS} ms`), READY_MS);
    child.once('message', (m) => {
      clearTimeout(timer);
      const msg = m as { ready?: boolean; error?: string };
      resolve(msg.ready ? null : msg.error ?? 'the shim server failed');
    });
    child.once('exit', (code, sig) => { clearTimeout(timer); resolve(`the shim server exited (${sig ?? code}) before it listened`); });
    child.once('error', (e) => { clearTimeout(timer); resolve(e.message); });
  });
  if (outcome) {
    log(`start failed: ${outcome}`);
    if (child.pid && child.exitCode === null) process.kill(child.pid, 'SIGKILL');
    process.stderr.write(`containerd-shim-lodger-v2: ${outcome} (see ${join(bundle, 'lodger-shim.log')})\n`);
    process.exit(1);
  }
  child.disconnect();
  child.unref();
  const address = `unix://${sock}`;
  writeFileSync(join(bundle, 'address'), address); // read by containerd after its restart
  log(`started server ${child.pid} on ${address}`);
  process.stdout.write(address, () => process.exit(0));
}

export async function main(argv: string[]): Promise<void> {
  let a: ShimArgs;
  try {
    a = parseArgs(argv);
  } catch (e) {
    process.stderr.write(`containerd-shim-lodger-v2: ${(e as Error).message}\n`);
    process.exit(2);
  }
  if (a.version) {
    process.stdout.write(`containerd-shim-lodger-v2 (lodger ${VERSION})\n`);
    return;
  }
  if (a.action === 'start') await start(a, argv);
  // gRPC, protobuf and the task service only where they are used (start waits on none of them).
  else if (a.action === 'serve') await (await import('./server.ts')).serve(a, VERSION);
  else await (await import('./server.ts')).cleanup(a);
}

await main(process.argv.slice(2));
