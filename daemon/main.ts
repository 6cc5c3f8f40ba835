// lodgerd's entry point: flags, config, signals. The daemon itself is the Lodgerd class.
import { Command } from 'commander';
import { spawn } from 'node:child_process';
import { defaultConfigPath, loadConfig, type LodgerdConfig } from './config.ts';
import { endLeftSandboxes, Lodgerd } from './lodgerd.ts';

const log = (m: string): void => console.error(`lodgerd: ${m}`);

const program = new Command('lodgerd')
  .description('Lodger daemon: batch jobs in microVM sandboxes next to latency-critical services')
  .option('-c, --config <file>', 'config file', defaultConfigPath())
  .option('--state-dir <dir>', 'overrides stateDir')
  .option('--socket <path>', 'overrides socket')
  .option('--policy-dir <dir>', 'overrides policyDir')
  .option('--metrics-address <host:port>', 'overrides metricsAddress')
  .option('--tcp-address <host:port>', 'overrides tcpAddress (needs the tls* keys)')
  .option('--end-sandboxes', 'do not start: end every sandbox a stopped lodgerd left in the state directory (refused while a lodgerd runs on it), then exit')
  .parse(process.argv);
const { config: file, endSandboxes, ...overrides } = program.opts<{ config: string; endSandboxes?: boolean } & Partial<LodgerdConfig>>();

let config: LodgerdConfig;
try {
  config = loadConfig(file, overrides);
} catch (e) {
  log((e as Error).message);
  process.exit(2);
}

if (endSandboxes) {
  try {
    const ids = await endLeftSandboxes(config, log);
    log(`${ids.length} sandbox(es) ended`);
    process.exit(0);
  } catch (e) {
    log((e as Error).message);
    process.exit(1);
  }
}

const lodgerd = new Lodgerd({ config, log });
lodgerd.loopEvents.once('exit', () => process.exit(0));
process.on('SIGHUP', () => void lodgerd.reload('SIGHUP'));
try {
  await lodgerd.start();
} catch (e) {
  log((e as Error).message);
  process.exit(2);
}
// Under systemd (Type=notify): ready now that the API listens.
if (process.env.NOTIFY_SOCKET) {
  spawn('systemd-notify', ['--ready', `--pid=${process.pid}`], { stdio: 'ignore' }).on('error', (e) => log(`systemd-notify: ${e.message}`));
}

let stopping = false;
async function shutdown(sig: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log(`${sig}: stopping (${config.onSigterm})`);
  await lodgerd.stop();
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));
