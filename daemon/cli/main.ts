// `lodger`: the command-line door. Commands that talk to lodgerd come with the daemon;
// `run` and `doctor` work on their own.
import { Command, InvalidArgumentError, Option } from 'commander';
import { doctorCommand } from './doctor.ts';
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
  .showHelpAfterError();

program.command('run')
  .description('boot a sandbox, run CMD in it, stream its output and exit with its exit code')
  .option('--vcpus <n>', 'vCPUs at start', arg((s) => parsePositiveInt(s, '--vcpus')), 1)
  .option('--max-vcpus <n>', 'vCPU ceiling for live resizing (default: max(vcpus, 4))', arg((s) => parsePositiveInt(s, '--max-vcpus')))
  .option('--memory <size>', 'memory at start, e.g. 256M, 1G', arg(parseSizeMiB), 256)
  .option('--max-memory <size>', 'memory ceiling reachable by virtio-mem (default: memory + 1G)', arg(parseSizeMiB))
  .option('--rootfs <dir>', 'host directory to use (read-only) as the job\'s root filesystem')
  .option('--output <dir>', 'host directory that receives the guest\'s /output when the job ends')
  .option('-e, --env <KEY=VALUE...>', 'environment for the command', [])
  .option('-w, --cwd <dir>', 'working directory in the guest', '/')
  .addOption(new Option('--accel <accel>', 'accelerator').choices(['auto', 'kvm', 'tcg']).default('auto'))
  .option('--guest-kernel <file>', 'guest kernel (e.g. a PVM guest kernel); default: the Debian cloud kernel')
  .option('--pvm', 'the guest kernel is PVM-enlightened (lets auto use a kvm_pvm /dev/kvm)', false)
  .option('-v, --verbose', 'say what the runtime does', false)
  .argument('<cmd...>', 'command and arguments (after --)')
  .action(async (cmd: string[], opts) => {
    process.exitCode = await runCommand(cmd, opts);
  });

program.command('doctor')
  .description('check this host: accelerator and why, cgroups, QEMU, guest image, PSI, resctrl')
  .option('--json', 'machine-readable output', false)
  .addOption(new Option('--accel <accel>', 'accelerator to evaluate').choices(['auto', 'kvm', 'tcg']).default('auto'))
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
