// lodgerd's configuration: a YAML file where every key has a default and a one-line
// description (CONFIG_KEYS), unknown keys are errors at file:line:column, relative paths
// are taken from the file's folder, and the keys operators change most have flags.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { parseValidated, YamlSchemaError } from '../control/index.ts';

export interface LodgerdConfig {
  stateDir: string;
  socket: string;
  socketMode: string;
  metricsAddress: string;
  policyDir: string;
  warmPoolSize: number;
  accelerator: 'auto' | 'kvm' | 'tcg';
  runtime: 'auto' | 'qemu' | 'gvisor';
  guestKernel: string;
  pvmGuestKernel: boolean;
  cgroupParent: string;
  onSigterm: 'keep-sandboxes' | 'stop-sandboxes';
  maxRunningJobs: number;
  tcpAddress: string;
  tlsCert: string;
  tlsKey: string;
  tlsClientCa: string;
  jail: boolean;
  jailUidBase: number;
  jailUidCount: number;
  jobLogMaxBytes: number;
  imageCacheMaxBytes: number;
  memoryBudgetCgroup: string;
}

export const CONFIG_KEYS: Record<keyof LodgerdConfig, { default: unknown; description: string; schema: Record<string, unknown> }> = {
  stateDir: { default: '/var/lib/lodger', description: 'job store, sandbox run files and saved VM states', schema: { type: 'string', minLength: 1 } },
  socket: { default: '/run/lodger/lodgerd.sock', description: 'unix socket of the gRPC API', schema: { type: 'string', minLength: 1 } },
  socketMode: { default: '0660', description: 'permissions of the API socket', schema: { type: 'string', pattern: '^0?[0-7]{3}$' } },
  metricsAddress: { default: '127.0.0.1:9464', description: 'host:port of the Prometheus metrics endpoint; empty to disable', schema: { type: 'string', pattern: '^$|^[^:\\s]+:[0-9]{1,5}$' } },
  policyDir: { default: '/etc/lodger/policies', description: 'folder of policy YAML files, reloaded on change and SIGHUP', schema: { type: 'string', minLength: 1 } },
  warmPoolSize: { default: 1, description: 'pre-booted minimum-size sandboxes kept ready for the next job', schema: { type: 'integer', minimum: 0, maximum: 64 } },
  accelerator: { default: 'auto', description: 'auto, kvm or tcg (auto: KVM where a guest really boots on it)', schema: { enum: ['auto', 'kvm', 'tcg'] } },
  // Default qemu, deliberately: auto picks gVisor on hosts without a KVM that boots a stock guest (these), which would move every existing QEMU deployment and test.
  runtime: { default: 'qemu', description: 'default sandbox backend: qemu, gvisor, or auto (QEMU with KVM where a stock guest boots, else gVisor where runsc works, else QEMU with TCG); a pool policy\'s runtime or a job\'s (lodger submit --runtime) takes precedence, the other backend opening on first use', schema: { enum: ['auto', 'qemu', 'gvisor'] } },
  guestKernel: { default: 'minimal', description: 'guest kernel: minimal (built by setup), debian, or a path', schema: { type: 'string', minLength: 1 } },
  pvmGuestKernel: { default: false, description: 'the guest kernel is PVM-enlightened (lets auto use a kvm_pvm /dev/kvm)', schema: { type: 'boolean' } },
  cgroupParent: { default: 'lodger', description: 'cgroup below lodgerd\'s own that holds the sandboxes', schema: { type: 'string', pattern: '^[A-Za-z0-9_.-]+$' } },
  onSigterm: { default: 'keep-sandboxes', description: 'on SIGTERM keep job sandboxes running for the next start, or stop them (warm-pool sandboxes are always stopped; lodger shutdown stops everything)', schema: { enum: ['keep-sandboxes', 'stop-sandboxes'] } },
  maxRunningJobs: { default: 0, description: 'jobs running at once; 0: as many as the batch budget allows', schema: { type: 'integer', minimum: 0 } },
  tcpAddress: { default: '', description: 'host:port where the API also listens over TCP, always with mutual TLS; empty: unix socket only', schema: { type: 'string', pattern: '^$|^[^\\s]+:[0-9]{1,5}$' } },
  tlsCert: { default: '', description: 'PEM certificate chain of the TCP listener', schema: { type: 'string' } },
  tlsKey: { default: '', description: 'PEM private key of the TCP listener', schema: { type: 'string' } },
  tlsClientCa: { default: '', description: 'PEM CA bundle that client certificates must chain to', schema: { type: 'string' } },
  jail: { default: true, description: 'run each VMM jailed: own uid/gid, namespaces, chroot, no capabilities, rlimits (needs root)', schema: { type: 'boolean' } },
  jailUidBase: { default: 3000000, description: 'first uid (and gid) handed to jailed VMMs, one per live sandbox', schema: { type: 'integer', minimum: 1000, maximum: 4000000000 } },
  jailUidCount: { default: 100000, description: 'how many uids from jailUidBase the jails may use', schema: { type: 'integer', minimum: 1, maximum: 10000000 } },
  memoryBudgetCgroup: { default: '', description: 'memory cgroup (path below the memory mount, e.g. /lodger-budget) whose limit, usage and pressure lodgerd guards as the host\'s memory; empty: the host\'s own /proc/meminfo', schema: { type: 'string', pattern: '^$|^(/(?!\\.\\.?(/|$))[A-Za-z0-9_.-]+)+$' } },
  jobLogMaxBytes: { default: 104857600, description: 'stdout+stderr stored per job; past it output is dropped with a marker in the log and a reason on the job', schema: { type: 'integer', minimum: 4096 } },
  imageCacheMaxBytes: { default: 10737418240, description: 'disk the image cache (stateDir/images: each image\'s unpacked root and ext4 image, built once) may use; past it the least recently used images no job runs are evicted', schema: { type: 'integer', minimum: 16777216 } },
};

const PATH_KEYS: (keyof LodgerdConfig)[] = ['stateDir', 'socket', 'policyDir', 'tlsCert', 'tlsKey', 'tlsClientCa'];

const validate = new Ajv({ strict: false, verbose: true }).compile({
  type: 'object',
  additionalProperties: false,
  properties: Object.fromEntries(Object.entries(CONFIG_KEYS).map(([k, v]) => [k, v.schema])),
});

export class ConfigError extends YamlSchemaError {
  override readonly code = 'CONFIG_INVALID';
}

/** The config file lodgerd reads when none is given: the checkout's, else the installed one. */
export function defaultConfigPath(): string {
  const repo = join(dirname(fileURLToPath(import.meta.url)), '..', 'config', 'lodgerd.yaml');
  return existsSync(repo) ? repo : '/etc/lodger/lodgerd.yaml';
}

export function loadConfig(file: string, overrides: Partial<LodgerdConfig> = {}): LodgerdConfig {
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, 1, 1, `cannot read: ${(e as Error).message}`);
  }
  const docs = parseValidated(text, file, validate, (f, l, c, r) => new ConfigError(f, l, c, r));
  if (docs.length > 1) throw new ConfigError(file, 1, 1, 'one YAML document expected');
  const given = (docs[0]?.value ?? {}) as Partial<LodgerdConfig>;
  const cfg = Object.fromEntries(Object.entries(CONFIG_KEYS).map(([k, v]) => [k, v.default])) as unknown as LodgerdConfig;
  Object.assign(cfg, given);
  for (const k of PATH_KEYS) {
    if (k in given && given[k]) (cfg as unknown as Record<string, string>)[k] = resolve(dirname(file), given[k] as string);
  }
  for (const [k, v] of Object.entries(overrides)) if (v !== undefined) (cfg as unknown as Record<string, unknown>)[k] = v;
  if (cfg.tcpAddress && !(cfg.tlsCert && cfg.tlsKey && cfg.tlsClientCa)) {
    throw new ConfigError(file, 1, 1, 'tcpAddress needs tlsCert, tlsKey and tlsClientCa: the API is served over TCP only with mutual TLS');
  }
  return cfg;
}
