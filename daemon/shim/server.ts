// The shim's server (`serve`) and the cleanup after a dead shim (`delete`): loaded only by
// those actions, so that `start`, which containerd waits for on every task, loads little.
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, defaultSocket } from '../cli/index.ts';
import type { ShimArgs } from './args.ts';
import { socketPath } from './args.ts';
import { readBundleJob, unmountAll } from './bundle.ts';
import { Publisher } from './events.ts';
import { shimLog, type Log } from './log.ts';
import { taskCodecs, timestamp } from './proto.ts';
import { shimServer } from './service.ts';

export async function serve(a: ShimArgs, version: string): Promise<void> {
  const bundle = process.cwd();
  const log = shimLog(bundle, a.id);
  process.on('uncaughtException', (e) => log(`uncaught: ${e.stack ?? e.message}`));
  process.on('unhandledRejection', (e) => log(`unhandled rejection: ${(e as Error)?.stack ?? String(e)}`));
  const sock = socketPath(a);
  const lodgerSocket = defaultSocket(); // LODGER_SOCKET, else lodgerd's config, else the installed default
  const api = connect(lodgerSocket);
  const publisher = new Publisher(process.env.TTRPC_ADDRESS ?? '', a.namespace, log);
  let exiting = false;
  const exit = (why: string): void => {
    if (exiting) return;
    exiting = true;
    log(`exiting: ${why}`);
    // After the answer to Shutdown is written: containerd reads a closed connection as done.
    setTimeout(() => {
      void server.close();
      rmSync(sock, { force: true });
      rmSync(join(bundle, 'lodger-shim.pid'), { force: true });
      api.close();
      publisher.close();
      process.exit(0);
    }, 100);
  };
  const server = shimServer({ api, socket: lodgerSocket, namespace: a.namespace, log, publish: (e) => publisher.publish(e), version: `lodger ${version}`, onShutdown: () => exit('Shutdown') });
  process.on('SIGTERM', () => exit('SIGTERM'));
  try {
    await server.listen(sock);
  } catch (e) {
    log(`listen on ${sock}: ${(e as Error).message}`);
    process.send?.({ error: `listen on ${sock}: ${(e as Error).message}` });
    process.exit(1);
  }
  writeFileSync(join(bundle, 'lodger-shim.pid'), String(process.pid));
  log(`serving on ${sock}; lodgerd on ${lodgerSocket}; events to ${process.env.TTRPC_ADDRESS || '(none)'}`);
  if (process.connected) {
    process.send?.({ ready: true });
    process.disconnect();
  }
}

/** After a shim died (or start failed): cancel its job, end its server, unmount, report the exit. */
export async function cleanup(a: ShimArgs): Promise<void> {
  const bundle = a.bundle || process.cwd();
  const log: Log = shimLog(bundle, a.id);
  log('delete: cleaning up after the shim');
  const jobFile = join(bundle, 'lodger-job');
  if (existsSync(jobFile)) {
    const id = readFileSync(jobFile, 'utf8').trim();
    const api = connect(defaultSocket());
    await api.call('CancelJob', { id, reason: 'containerd deleted the task after its shim was gone' }, 10_000)
      .then(() => log(`delete: job ${id} cancelled`), (e: Error) => log(`delete: job ${id} not cancelled: ${e.message}`));
    api.close();
  }
  killServer(bundle, a.id, log);
  let rootfs = join(bundle, 'rootfs');
  try {
    rootfs = readBundleJob(bundle, a.id).spec.rootfs;
  } catch { /* no readable config.json: the default root */ }
  const problem = existsSync(rootfs) ? unmountAll(rootfs) : null;
  if (problem) log(`delete: ${problem}`);
  const res = taskCodecs().Delete!.responseSerialize({ pid: 0, exitStatus: 128 + 9, exitedAt: timestamp(Date.now()) });
  process.stdout.write(res, () => process.exit(0));
}

/** The server of this bundle, if it still runs: its pid file, checked against its command line. */
function killServer(bundle: string, id: string, log: Log): void {
  const file = join(bundle, 'lodger-shim.pid');
  if (!existsSync(file)) return;
  const pid = Number(readFileSync(file, 'utf8').trim());
  let cmdline = '';
  try {
    cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch { return; }
  const args = cmdline.split('\0');
  if (!args.some((x) => x.endsWith('containerd-shim-lodger-v2') || x.endsWith('containerd-shim-lodger-v2.js')) || !args.includes(id) || !args.includes('serve')) return;
  try {
    process.kill(pid, 'SIGKILL');
    log(`delete: shim server ${pid} killed`);
  } catch (e) {
    log(`delete: shim server ${pid}: ${(e as Error).message}`);
  }
}
