// Policy files: YAML documents validated by the published JSON Schema
// (policies/schema.json), strict about unknown keys, parsed into typed values. Every
// error names the file, line and column of the node it is about.
import { readdir, readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { Ajv, type ErrorObject } from 'ajv';
import { isMap, isPair, isScalar, LineCounter, parseAllDocuments, type Document } from 'yaml';

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
}

export interface BatchPoolPolicy {
  name: string;
  source: string;
  reserve: { cpus: number; memoryBytes: number };
  sandbox: { minVcpus: number; maxVcpus: number; minMemoryMiB: number; maxMemoryMiB: number };
  knobs: Knob[];
  growth: { cooldownMs: number; minSlack: number; shrinkSlack: number; memoryStepMiB: number };
}

export interface PolicySet {
  services: OnlineServicePolicy[];
  pools: BatchPoolPolicy[];
}

export class PolicyError extends Error {
  readonly code = 'POLICY_INVALID';
  constructor(readonly file: string, readonly line: number, readonly column: number, readonly reason: string) {
    super(`${file}:${line}:${column}: ${reason}`);
    this.name = 'PolicyError';
  }
}

const ajv = new Ajv({ allErrors: false, useDefaults: true, strict: false, verbose: true });
const validate = ajv.compile(POLICY_SCHEMA);

const DURATION_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60000 };
export function parseDurationMs(s: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)(us|ms|s|m)$/.exec(s);
  if (!m) throw new RangeError(`not a duration: ${s}`);
  return Number(m[1]) * DURATION_MS[m[2]!]!;
}

const SIZE: Record<string, number> = { '': 1, K: 1024, Ki: 1024, M: 1024 ** 2, Mi: 1024 ** 2, G: 1024 ** 3, Gi: 1024 ** 3, T: 1024 ** 4, Ti: 1024 ** 4 };
export function parseSizeBytes(s: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?$/.exec(s);
  if (!m) throw new RangeError(`not a size: ${s}`);
  return Math.round(Number(m[1]) * SIZE[m[2] ?? '']!);
}

function splitAddress(a: string): { host: string; port: number } {
  const i = a.lastIndexOf(':');
  return { host: a.slice(0, i), port: Number(a.slice(i + 1)) };
}

/** Position of the node at a JSON pointer path, or of the offending key. */
function locate(doc: Document, lc: LineCounter, path: string[], key?: string): { line: number; col: number } {
  let node: unknown = doc.contents;
  let offset = (doc.contents as { range?: [number] } | null)?.range?.[0] ?? 0;
  for (const seg of path) {
    if (!isMap(node) && !(node && typeof node === 'object' && 'items' in node)) break;
    const items = (node as { items: unknown[] }).items;
    const item = isMap(node)
      ? items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === seg)
      : items[Number(seg)];
    if (!item) break;
    if (isPair(item)) {
      offset = (item.key as { range?: [number] }).range?.[0] ?? offset;
      node = item.value;
      if ((node as { range?: [number] } | null)?.range) offset = (node as { range: [number] }).range[0];
    } else {
      node = item;
      offset = (item as { range?: [number] }).range?.[0] ?? offset;
    }
  }
  if (key && isMap(node)) {
    const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === key);
    if (pair) offset = (pair.key as { range?: [number] }).range?.[0] ?? offset;
  }
  return lc.linePos(offset);
}

function describe(e: ErrorObject): string {
  const at = e.instancePath || '/';
  switch (e.keyword) {
    case 'additionalProperties': return `unknown key "${(e.params as { additionalProperty: string }).additionalProperty}" at ${at}`;
    case 'required': return `missing key "${(e.params as { missingProperty: string }).missingProperty}" at ${at}`;
    case 'pattern': return `${at}: ${JSON.stringify(e.data)} is not in the expected form (${(e.parentSchema as { description?: string })?.description ?? e.params.pattern})`;
    case 'enum': return `${at}: must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'const': return `${at}: must be ${JSON.stringify((e.params as { allowedValue: unknown }).allowedValue)}`;
    case 'oneOf': return `${at}: ${e.message?.startsWith('needs') ? e.message : 'must have exactly one of its alternatives'}`;
    default: return `${at}: ${e.message ?? e.keyword}`;
  }
}

/** Parses one file (several documents allowed). Throws PolicyError on the first problem. */
export function parsePolicyText(text: string, file: string): PolicySet {
  const lc = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter: lc, prettyErrors: false });
  const set: PolicySet = { services: [], pools: [] };
  if (!Array.isArray(docs)) {
    throw new PolicyError(file, 1, 1, 'not a YAML stream');
  }
  for (const doc of docs) {
    const err = doc.errors[0];
    if (err) {
      const pos = lc.linePos(err.pos[0]);
      throw new PolicyError(file, pos.line, pos.col, `YAML: ${err.message.split('\n')[0]}`);
    }
    if (doc.contents === null) continue; // an empty document between separators
    const value = doc.toJS() as Record<string, unknown>;
    if (!validate(value)) {
      // Report the deepest error: it names the key the author got wrong.
      const errors = [...(validate.errors ?? [])].sort((a, b) => b.instancePath.length - a.instancePath.length);
      let e = errors.find((x) => x.keyword !== 'if') ?? errors[0]!;
      // A missing alternative (probe vs prometheus, http vs tcp...) is one error, not the first branch's.
      const alternatives = errors.filter((x) => x.keyword === 'required' && x.instancePath === e.instancePath && x.schemaPath.includes('/oneOf/'));
      if (e.keyword === 'required' && alternatives.length > 1) {
        e = { ...e, keyword: 'oneOf', message: `needs exactly one of: ${alternatives.map((x) => (x.params as { missingProperty: string }).missingProperty).join(', ')}` };
      }
      const path = e.instancePath.split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
      const key = e.keyword === 'additionalProperties' ? (e.params as { additionalProperty: string }).additionalProperty : undefined;
      const pos = locate(doc, lc, path, key);
      throw new PolicyError(file, pos.line, pos.col, describe(e));
    }
    const at = (path: string[]): { line: number; col: number } => locate(doc, lc, path);
    const meta = value.metadata as { name: string };
    const spec = value.spec as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- shape checked by the schema above
    if (value.kind === 'OnlineService') {
      const p = spec.probe as Record<string, any> | undefined; // eslint-disable-line @typescript-eslint/no-explicit-any
      let probe: OnlineServicePolicy['probe'] = null;
      if (p) {
        const timing = { intervalMs: parseDurationMs(p.interval ?? '100ms'), timeoutMs: parseDurationMs(p.timeout ?? '1s') };
        if (p.http) probe = { kind: 'http', url: p.http.url, method: p.http.method ?? 'GET', ...timing };
        else {
          const kind = (['tcp', 'redis', 'memcached'] as const).find((k) => p[k])!;
          probe = { kind, ...splitAddress(p[kind].address), ...timing };
        }
      }
      const slo = { percentile: spec.slo.percentile ?? 99, targetMs: parseDurationMs(spec.slo.target), windowMs: parseDurationMs(spec.slo.window ?? '1s') };
      if (slo.targetMs <= 0) {
        const pos = at(['spec', 'slo', 'target']);
        throw new PolicyError(file, pos.line, pos.col, 'slo.target must be above zero');
      }
      set.services.push({
        name: meta.name, source: file, slo, probe,
        prometheus: spec.prometheus ? { url: spec.prometheus.url, histogram: spec.prometheus.histogram, intervalMs: parseDurationMs(spec.prometheus.interval ?? '1s') } : null,
        cpus: spec.cpus ?? null,
      });
    } else {
      const sb = spec.sandbox;
      const sandbox = {
        minVcpus: sb.minVcpus ?? 1, maxVcpus: sb.maxVcpus,
        minMemoryMiB: Math.round(parseSizeBytes(sb.minMemory ?? '256Mi') / 1048576), maxMemoryMiB: Math.round(parseSizeBytes(sb.maxMemory) / 1048576),
      };
      if (sandbox.minVcpus > sandbox.maxVcpus) {
        const pos = at(['spec', 'sandbox', 'minVcpus']);
        throw new PolicyError(file, pos.line, pos.col, `minVcpus ${sandbox.minVcpus} is above maxVcpus ${sandbox.maxVcpus}`);
      }
      if (sandbox.minMemoryMiB > sandbox.maxMemoryMiB) {
        const pos = at(['spec', 'sandbox', 'minMemory']);
        throw new PolicyError(file, pos.line, pos.col, `minMemory is above maxMemory`);
      }
      const g = spec.growth ?? {};
      set.pools.push({
        name: meta.name, source: file,
        reserve: { cpus: spec.reserve?.cpus ?? 0, memoryBytes: parseSizeBytes(spec.reserve?.memory ?? '0') },
        sandbox,
        knobs: spec.knobs ?? ['cpu.idle', 'cpuset', 'cpu.weight', 'pause'],
        growth: {
          cooldownMs: parseDurationMs(g.cooldown ?? '5s'), minSlack: g.minSlack ?? 0.3, shrinkSlack: g.shrinkSlack ?? 0.1,
          memoryStepMiB: Math.round(parseSizeBytes(g.memoryStep ?? '256Mi') / 1048576),
        },
      });
    }
  }
  return set;
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

/** Every *.yaml / *.yml in a directory; names must be unique across files. */
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
      const dup = all.pools.find((x) => x.name === p.name);
      if (dup) throw new PolicyError(p.source, 1, 1, `BatchPool "${p.name}" is also defined in ${dup.source}`);
      all.pools.push(p);
    }
  }
  return all;
}
