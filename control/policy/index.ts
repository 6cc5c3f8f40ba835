// Policy files: YAML documents validated by the published JSON Schema
// (policies/schema.json), strict about unknown keys, parsed into typed values. Every
// error names the file, line and column of the node it is about.
import { readdir, readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { Ajv } from 'ajv';
import { parseValidated, YamlSchemaError } from './yaml.ts';

// lodgerd's config file is read the same way.
export { parseValidated, YamlSchemaError, type LocatedDocument } from './yaml.ts';

const SCHEMA_PATH = new URL('../../policies/schema.json', import.meta.url);
export const POLICY_SCHEMA = JSON.parse(readFileSync(SCHEMA_PATH, 'utf8')) as Record<string, unknown>;

export type Knob = 'cpu.idle' | 'cpuset' | 'cpu.weight' | 'cpu.max' | 'pause';

export type Probe =
  | { kind: 'http'; url: string; method: 'GET' | 'HEAD' }
  | { kind: 'tcp' | 'redis' | 'memcached'; host: string; port: number };

export interface OnlineServicePolicy {
  name: string;
  source: string;
  slo: { percentile: number; targetMs: number; windowMs: number };
  probe: (Probe & { intervalMs: number; timeoutMs: number }) | null;
  prometheus: { url: string; histogram: string; intervalMs: number } | null;
  /** CPUs the service runs on, when known. */
  cpus: string | null;
  /** How to find the service's processes (any of them; their pids are joined), or null. */
  process?: ServiceProcess | null;
}

export interface ServiceProcess {
  systemdUnit?: string;
  cgroup?: string;
  pidFile?: string;
  exe?: string;
}

export interface BatchPoolPolicy {
  name: string;
  source: string;
  reserve: { cpus: number; memoryBytes: number };
  sandbox: { minVcpus: number; maxVcpus: number; minMemoryMiB: number; maxMemoryMiB: number };
  knobs: Knob[];
  /** Knobs applied always (work-conserving: giving them back gains batch nothing the services leave idle). */
  keepApplied: Exclude<Knob, 'pause'>[];
  /** Knobs a breach must earn by outlasting two windows (not work-conserving: a cpuset). */
  escalate: Exclude<Knob, 'pause'>[];
  /** Backend for the pool's jobs that name none; absent: lodgerd's own setting. */
  runtime?: 'auto' | 'qemu' | 'gvisor';
  growth: {
    cooldownMs: number; minSlack: number; shrinkSlack: number; memoryStepMiB: number; maxCpuPressure: number;
    backoffMs: number; maxBackoffMs: number; loadRise: number; reverseMs: number; cpusetIntervalMs: number;
  };
}

export interface PolicySet {
  services: OnlineServicePolicy[];
  pools: BatchPoolPolicy[];
}

export class PolicyError extends YamlSchemaError {
  override readonly code = 'POLICY_INVALID';
  constructor(file: string, line: number, column: number, reason: string) {
    super(file, line, column, reason);
    this.name = 'PolicyError';
  }
}

// allErrors: a misspelt key must be reported as itself, not as the alternative it left
// missing. useDefaults: the schema's defaults are the only ones (the parser below has none).
const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, verbose: true });
const validate = ajv.compile(POLICY_SCHEMA);

const DURATION_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60000 };
export function parseDurationMs(s: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)(us|ms|s|m)$/.exec(s);
  if (!m) throw new RangeError(`not a duration: ${s}`);
  return Number(m[1]) * DURATION_MS[m[2]!]!;
}

const SIZE: Record<string, number> = { '': 1, K: 1024, Ki: 1024, M: 1024 ** 2, Mi: 1024 ** 2, G: 1024 ** 3, Gi: 1024 ** 3, T: 1024 ** 4, Ti: 1024 ** 4 };
export function parseSizeBytes(s: string | number): number {
  if (typeof s === 'number') return s;
  const m = /^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?$/.exec(s);
  if (!m) throw new RangeError(`not a size: ${s}`);
  return Math.round(Number(m[1]) * SIZE[m[2] ?? '']!);
}

function splitAddress(a: string): { host: string; port: number } {
  const i = a.lastIndexOf(':');
  return { host: a.slice(0, i), port: Number(a.slice(i + 1)) };
}

/** Where each parsed BatchPool's document says `kind: BatchPool`: errors about a whole pool point there. */
const poolAt = new WeakMap<BatchPoolPolicy, { line: number; col: number }>();

/** The controller drives one batch pool: a second is refused rather than silently ignored. */
function secondPoolError(first: BatchPoolPolicy, second: BatchPoolPolicy): PolicyError {
  const pos = poolAt.get(second) ?? { line: 1, col: 1 };
  return new PolicyError(second.source, pos.line, pos.col,
    `a second BatchPool "${second.name}": only one BatchPool is supported (the first is "${first.name}" in ${first.source})`);
}

/** Parses one file (several documents allowed). Throws PolicyError on the first problem. */
export function parsePolicyText(text: string, file: string): PolicySet {
  const set: PolicySet = { services: [], pools: [] };
  for (const { value, at } of parseValidated(text, file, validate, (f, l, c, r) => new PolicyError(f, l, c, r))) {
    const meta = value.metadata as { name: string };
    const spec = value.spec as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- shape checked by the schema above
    if (value.kind === 'OnlineService') {
      const p = spec.probe as Record<string, any> | undefined; // eslint-disable-line @typescript-eslint/no-explicit-any
      let probe: OnlineServicePolicy['probe'] = null;
      if (p) {
        const timing = { intervalMs: parseDurationMs(p.interval), timeoutMs: parseDurationMs(p.timeout) };
        if (p.http) probe = { kind: 'http', url: p.http.url, method: p.http.method ?? 'GET', ...timing };
        else {
          const kind = (['tcp', 'redis', 'memcached'] as const).find((k) => p[k])!;
          probe = { kind, ...splitAddress(p[kind].address), ...timing };
        }
      }
      const slo = { percentile: spec.slo.percentile, targetMs: parseDurationMs(spec.slo.target), windowMs: parseDurationMs(spec.slo.window) };
      if (slo.targetMs <= 0) {
        const pos = at(['spec', 'slo', 'target']);
        throw new PolicyError(file, pos.line, pos.col, 'slo.target must be above zero');
      }
      set.services.push({
        name: meta.name, source: file, slo, probe,
        prometheus: spec.prometheus ? { url: spec.prometheus.url, histogram: spec.prometheus.histogram, intervalMs: parseDurationMs(spec.prometheus.interval) } : null,
        cpus: spec.cpus ?? null,
        process: spec.process && Object.keys(spec.process).length ? { ...spec.process } : null,
      });
    } else {
      const sb = spec.sandbox;
      const sandbox = {
        minVcpus: sb.minVcpus, maxVcpus: sb.maxVcpus,
        minMemoryMiB: Math.round(parseSizeBytes(sb.minMemory) / 1048576), maxMemoryMiB: Math.round(parseSizeBytes(sb.maxMemory) / 1048576),
      };
      if (sandbox.minVcpus > sandbox.maxVcpus) {
        const pos = at(['spec', 'sandbox', 'minVcpus']);
        throw new PolicyError(file, pos.line, pos.col, `minVcpus ${sandbox.minVcpus} is above maxVcpus ${sandbox.maxVcpus}`);
      }
      if (sandbox.minMemoryMiB > sandbox.maxMemoryMiB) {
        const pos = at(['spec', 'sandbox', 'minMemory']);
        throw new PolicyError(file, pos.line, pos.col, `minMemory is above maxMemory`);
      }
      const g = spec.growth;
      const pool: BatchPoolPolicy = {
        name: meta.name, source: file,
        reserve: { cpus: spec.reserve.cpus, memoryBytes: parseSizeBytes(spec.reserve.memory) },
        sandbox,
        knobs: spec.knobs,
        keepApplied: spec.keepApplied.filter((k: Knob) => spec.knobs.includes(k)),
        escalate: spec.escalate.filter((k: Knob) => spec.knobs.includes(k) && !spec.keepApplied.includes(k)),
        ...(spec.runtime ? { runtime: spec.runtime } : {}),
        growth: {
          cooldownMs: parseDurationMs(g.cooldown), minSlack: g.minSlack, shrinkSlack: g.shrinkSlack,
          memoryStepMiB: Math.round(parseSizeBytes(g.memoryStep) / 1048576), maxCpuPressure: g.maxCpuPressure,
          backoffMs: parseDurationMs(g.backoff), maxBackoffMs: parseDurationMs(g.maxBackoff), loadRise: g.loadRise,
          reverseMs: parseDurationMs(g.reverse), cpusetIntervalMs: parseDurationMs(g.cpusetInterval),
        },
      };
      poolAt.set(pool, at(['kind']));
      if (set.pools[0]) throw secondPoolError(set.pools[0], pool);
      set.pools.push(pool);
    }
  }
  return set;
}

/**
 * A BatchPool with every default the schema gives: the pool in force when no policy
 * names one, and a base for tests. `spec` is YAML flow text for the spec's other keys.
 */
export function defaultPool(spec = 'sandbox: { maxVcpus: 4, maxMemory: 4Gi }', name = 'default'): BatchPoolPolicy {
  return parsePolicyText(`apiVersion: lodger.dev/v1\nkind: BatchPool\nmetadata: { name: ${name} }\nspec: { ${spec} }\n`, '(built in)').pools[0]!;
}

export async function loadPolicyFile(file: string): Promise<PolicySet> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new PolicyError(file, 1, 1, `cannot read: ${(e as Error).message}`);
  }
  return parsePolicyText(text, file);
}

/** Every *.yaml / *.yml in a directory; names must be unique across files, and at most one BatchPool. */
export async function loadPolicyDir(dir: string): Promise<PolicySet> {
  const names = (await readdir(dir)).filter((n) => ['.yaml', '.yml'].includes(extname(n))).sort();
  const all: PolicySet = { services: [], pools: [] };
  for (const n of names) {
    const set = await loadPolicyFile(join(dir, n));
    for (const s of set.services) {
      const dup = all.services.find((x) => x.name === s.name);
      if (dup) throw new PolicyError(s.source, 1, 1, `OnlineService "${s.name}" is also defined in ${dup.source}`);
      all.services.push(s);
    }
    for (const p of set.pools) {
      if (all.pools[0]) throw secondPoolError(all.pools[0], p);
      all.pools.push(p);
    }
  }
  return all;
}
