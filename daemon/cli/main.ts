// `lodger`: the command-line door. Commands that talk to lodgerd come with the daemon;
// `run` and `doctor` work on their own.
import { Command, InvalidArgumentError, Option } from 'commander';
import { defaultSocket, setTls } from './client.ts';
import { doctorCommand } from './doctor.ts';
import { cancelCommand, eventsCommand, execCommand, logsCommand, psCommand, shutdownCommand, statusCommand, submitCommand, topCommand, waitCommand } from './jobs.ts';
import { policyValidateCommand } from './policy.ts';
import { runCommand } from './run.ts';
import { parsePositiveInt, parseSizeMiB } from './sizes.ts';

const arg = <T>(fn: (s: string) => T) => (s: string): T => {
  try {
    return fn(s);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
};

const program = new Command('lodger')
  .description('Run batch jobs in microVM sandboxes next to latency-critical services')
  .option('--socket <path|host:port>', 'lodgerd API: its unix socket, or host:port of its TCP listener (env LODGER_SOCKET)', defaultSocket())
  .option('--tls-ca <file>', 'CA that lodgerd\'s TCP certificate chains to (env LODGER_TLS_CA)', process.env.LODGER_TLS_CA)
  .option('--tls-cert <file>', 'client certificate for the TCP listener (env LODGER_TLS_CERT)', process.env.LODGER_TLS_CERT)
  .option('--tls-key <file>', 'key of the client certificate (env LODGER_TLS_KEY)', process.env.LODGER_TLS_KEY)
  .showHelpAfterError()
  .hook('preAction', () => {
    const o = program.opts<{ tlsCa?: string; tlsCert?: string; tlsKey?: string }>();
    setTls({ ca: o.tlsCa, cert: o.tlsCert, key: o.tlsKey });
  });

/** Runs a command's action, turning its error into a message and exit status 1. */
const act = <A extends unknown[]>(fn: (...a: A) => Promise<number>) => async (...a: A): Promise<void> => {
  try {
    process.exitCode = await fn(...a);
  } catch (e) {
    console.error(`lodger: ${(e as Error).message}`);
    process.exitCode = 1;
  }
};
const socket = (): string => program.opts<{ socket: string }>().socket;

program.command('submit')
  .description('queue a job with lodgerd; prints its id')
  .option('--id <id>', 'job id (makes the submission idempotent)')
  .option('--name <name>', 'a name for people')
  .option('--vcpus <min[:max]>', 'vCPUs: what the job starts with and what it may grow to', '1')
  .option('--memory <min[:max]>', 'memory, e.g. 256M:1G', '256M')
  .option('--rootfs <dir>', 'host directory used read-only as the job\'s root')
  .option('--output <dir>', 'host directory that receives the job\'s /output')
  .option('--priority <n>', 'higher runs first', '0')
  .option('--timeout <seconds>', 'fail the job after this long; 0: never', '0')
  .option('--retries <n>', 'extra attempts after a failure', '0')
  .option('-e, --env <KEY=VALUE...>', 'environment for the command', [])
  .addOption(new Option('--runtime <backend>', 'sandbox backend (auto: this host\'s choice; default: lodgerd\'s)').choices(['auto', 'qemu', 'gvisor']))
  .option('--image <ref>', 'OCI image as the job\'s root: a layout directory, oci-archive or docker-archive (oci:, oci-archive:, docker-archive: PATH[:TAG]); its config gives the defaults')
  .option('--workdir <dir>', 'working directory in the job\'s root (default: the image\'s, else /)')
  .option('--user <user>', 'uid[:gid] or a user of the image (default: the image\'s, else root)')
  .argument('[cmd...]', 'command and arguments (after --); with --image, replaces its Cmd')
  .action(act((cmd: string[], o) => submitCommand(cmd, { ...o, socket: socket() })));

program.command('ps')
  .description('list jobs (running and queued; --all for every job)')
  .option('--all', 'include finished jobs', false)
  .option('--json', 'machine-readable output', false)
  .action(act((o) => psCommand({ ...o, socket: socket() })));

program.command('logs')
  .description('print a job\'s output')
  .option('-f, --follow', 'keep printing until the job ends', false)
  .argument('<id>')
  .action(act((id: string, o) => logsCommand(id, { ...o, socket: socket() })));

program.command('exec')
  .description('run one more command in a running job\'s sandbox (as containerd\'s exec does); exits with its exit code')
  .option('-e, --env <NAME=VALUE...>', 'environment of the command')
  .option('--cwd <dir>', 'working directory in the job\'s root', '')
  .argument('<id>')
  .argument('<command...>', 'after --')
  .action(act((id: string, command: string[], o) => execCommand(id, command, { ...o, socket: socket() })));

program.command('wait')
  .description('wait for a job to end; exits with its exit code')
  .option('--json', 'print the job as JSON', false)
  .argument('<id>')
  .action(act((id: string, o) => waitCommand(id, { ...o, socket: socket() })));

program.command('cancel')
  .description('cancel a job')
  .argument('<id>')
  .action(act((id: string) => cancelCommand(id, { socket: socket() })));

program.command('shutdown')
  .description('stop lodgerd and everything it runs (pool, job sandboxes, cgroups); queued jobs stay queued')
  .option('--drain', 'start no new job and let the running ones finish first', false)
  .option('--timeout <s>', 'how long to wait for lodgerd to exit', '600')
  .action(act((o) => shutdownCommand({ ...o, socket: socket() })));

program.command('status')
  .description('services (p99 against target), sandboxes, recent decisions')
  .option('--json', 'machine-readable output', false)
  .action(act((o) => statusCommand({ ...o, socket: socket() })));

program.command('events')
  .description('job state changes and controller decisions as they happen')
  .option('--json', 'one JSON object a line', false)
  .option('--count <n>', 'stop after this many events')
  .action(act((o) => eventsCommand({ ...o, socket: socket() })));

program.command('top')
  .description('a live view of status')
  .option('--interval <ms>', 'refresh period', '1000')
  .action(act((o) => topCommand({ ...o, socket: socket() })));

program.command('run')
  .description('boot a sandbox, run CMD in it, stream its output and exit with its exit code')
  .option('--vcpus <n>', 'vCPUs at start', arg((s) => parsePositiveInt(s, '--vcpus')), 1)
  .option('--max-vcpus <n>', 'vCPU ceiling for live resizing (default: max(vcpus, 4))', arg((s) => parsePositiveInt(s, '--max-vcpus')))
  .option('--memory <size>', 'memory at start, e.g. 256M, 1G', arg(parseSizeMiB), 256)
  .option('--max-memory <size>', 'memory ceiling reachable by virtio-mem (default: memory + 1G)', arg(parseSizeMiB))
  .option('--rootfs <dir>', 'host directory to use (read-only) as the job\'s root filesystem')
  .option('--output <dir>', 'host directory that receives the guest\'s /output when the job ends')
  .option('-e, --env <KEY=VALUE...>', 'environment for the command', [])
  .option('-w, --cwd <dir>', 'working directory in the guest (default: the image\'s, else /)')
  .option('--image <ref>', 'OCI image as the root (layout directory, oci-archive, docker-archive), unpacked once into the image cache')
  .option('--user <user>', 'uid[:gid] or a user of the image to run as (default: the image\'s, else root)')
  .addOption(new Option('--accel <accel>', 'accelerator').choices(['auto', 'kvm', 'tcg']).default('auto'))
  .addOption(new Option('--runtime <backend>', 'sandbox backend (auto: QEMU with KVM, else gVisor where runsc works, else QEMU/TCG)').choices(['auto', 'qemu', 'gvisor']).default('qemu'))
  .option('--guest-kernel <file>', 'guest kernel (e.g. a PVM guest kernel), or minimal / debian; default: Lodger\'s minimal kernel where setup built it, else the Debian cloud kernel')
  .option('--pvm', 'the guest kernel is PVM-enlightened (lets auto use a kvm_pvm /dev/kvm)', false)
  .option('-v, --verbose', 'say what the runtime does', false)
  .argument('[cmd...]', 'command and arguments (after --); with --image, replaces its Cmd')
  .action(async (cmd: string[], opts) => {
    process.exitCode = await runCommand(cmd, opts);
  });

program.command('doctor')
  .description('check this host: accelerator and why, cgroups, QEMU, guest image, PSI, resctrl')
  .option('--json', 'machine-readable output', false)
  .addOption(new Option('--accel <accel>', 'accelerator to evaluate').choices(['auto', 'kvm', 'tcg']).default('auto'))
  .addOption(new Option('--runtime <backend>', 'sandbox backend to evaluate').choices(['auto', 'qemu', 'gvisor']).default('auto'))
  .action(async (opts) => {
    process.exitCode = await doctorCommand(opts);
  });

program.command('policy')
  .description('work with policy files')
  .command('validate')
  .description('check policy files against the schema; errors name file:line:column')
  .argument('<files...>', 'policy YAML files')
  .option('--json', 'machine-readable output', false)
  .action(async (files: string[], opts: { json: boolean }) => {
    process.exitCode = await policyValidateCommand(files, opts);
  });

await program.parseAsync(process.argv);
