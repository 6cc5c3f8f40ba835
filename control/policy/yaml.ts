// YAML documents validated by a JSON Schema, with every error located at the file, line
// and column of the node it is about. Shared by policy files and lodgerd's config.
import type { ErrorObject, ValidateFunction } from 'ajv';
import { isMap, isPair, isScalar, LineCounter, parseAllDocuments, visit, type Document } from 'yaml';

export class YamlSchemaError extends Error {
  readonly code: string = 'YAML_INVALID';
  constructor(readonly file: string, readonly line: number, readonly column: number, readonly reason: string) {
    super(`${file}:${line}:${column}: ${reason}`);
  }
}

export interface LocatedDocument {
  value: Record<string, unknown>;
  /** Position of the node at a path (object keys / array indexes). */
  at(path: string[]): { line: number; col: number };
}

/** Position of the node at a JSON pointer path, or of the offending key. */
export function locate(doc: Document, lc: LineCounter, path: string[], key?: string): { line: number; col: number } {
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

export function describe(e: ErrorObject): string {
  const at = e.instancePath || '/';
  switch (e.keyword) {
    case 'additionalProperties': {
      const key = (e.params as { additionalProperty: string }).additionalProperty;
      const near = closest(key, Object.keys((e.parentSchema as { properties?: object } | undefined)?.properties ?? {}));
      return `unknown key "${key}" at ${at}${near ? ` (did you mean "${near}"?)` : ''}`;
    }
    case 'required': return `missing key "${(e.params as { missingProperty: string }).missingProperty}" at ${at}`;
    case 'pattern': return `${at}: ${JSON.stringify(e.data)} is not in the expected form (${(e.parentSchema as { description?: string })?.description ?? e.params.pattern})`;
    case 'enum': return `${at}: must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'const': return `${at}: must be ${JSON.stringify((e.params as { allowedValue: unknown }).allowedValue)}`;
    case 'oneOf': return `${at}: ${e.message?.startsWith('needs') ? e.message : 'must have exactly one of its alternatives'}`;
    default: return `${at}: ${e.message ?? e.keyword}`;
  }
}


/** The known key nearest to a misspelt one (edit distance at most a third of its length, and 2). */
export function closest(key: string, known: string[]): string | null {
  const dist = (a: string, b: string): number => {
    let row = [...Array(b.length + 1).keys()];
    for (let i = 1; i <= a.length; i++) {
      const next = [i];
      for (let j = 1; j <= b.length; j++) next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      row = next;
    }
    return row[b.length]!;
  };
  const best = known.map((k) => ({ k, d: dist(key.toLowerCase(), k.toLowerCase()) })).sort((x, y) => x.d - y.d)[0];
  return best && best.d <= Math.min(2, Math.ceil(key.length / 3)) ? best.k : null;
}

/**
 * Parses every document of `text` and validates each with `validate`. Throws `makeError`
 * (file, line, column, reason) on the first problem.
 */
export function parseValidated(
  text: string, file: string, validate: ValidateFunction,
  makeError: (file: string, line: number, col: number, reason: string) => Error = (f, l, c, r) => new YamlSchemaError(f, l, c, r),
): LocatedDocument[] {
  const lc = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter: lc, prettyErrors: false });
  if (!Array.isArray(docs)) throw makeError(file, 1, 1, 'not a YAML stream');
  const out: LocatedDocument[] = [];
  for (const doc of docs) {
    const err = doc.errors[0];
    if (err) {
      const pos = lc.linePos(err.pos[0]);
      throw makeError(file, pos.line, pos.col, `YAML: ${err.message.split('\n')[0]}`);
    }
    if (doc.contents === null) continue; // an empty document between separators
    let value: Record<string, unknown>;
    try {
      value = (doc.toJS() ?? {}) as Record<string, unknown>;
    } catch (e) {
      // toJS throws (a ReferenceError) on an alias with no anchor before it, e.g. `*x`:
      // point at the first alias, the likeliest culprit.
      let at = doc.contents?.range?.[0] ?? 0;
      visit(doc, { Alias(_, node) { at = node.range?.[0] ?? at; return visit.BREAK; } });
      const pos = lc.linePos(at);
      throw makeError(file, pos.line, pos.col, `YAML: ${(e as Error).message.split('\n')[0]}`);
    }
    if (!validate(value)) {
      // Report the deepest error: it names the key the author got wrong.
      const errors = [...(validate.errors ?? [])].sort((a, b) => b.instancePath.length - a.instancePath.length);
      // An unknown key first: it is the author's mistake itself (a misspelt `probe` also
      // leaves `probe` missing, which is only its consequence).
      let e = errors.find((x) => x.keyword === 'additionalProperties') ?? errors.find((x) => x.keyword !== 'if') ?? errors[0]!;
      // A missing alternative (probe vs prometheus, http vs tcp...) is one error, not the first branch's.
      const alternatives = errors.filter((x) => x.keyword === 'required' && x.instancePath === e.instancePath && x.schemaPath.includes('/oneOf/'));
      if (e.keyword === 'required' && alternatives.length > 1) {
        e = { ...e, keyword: 'oneOf', message: `needs exactly one of: ${alternatives.map((x) => (x.params as { missingProperty: string }).missingProperty).join(', ')}` };
      }
      const path = e.instancePath.split('/').slice(1).map((x) => x.replace(/~1/g, '/').replace(/~0/g, '~'));
      const key = e.keyword === 'additionalProperties' ? (e.params as { additionalProperty: string }).additionalProperty : undefined;
      const pos = locate(doc, lc, path, key);
      throw makeError(file, pos.line, pos.col, describe(e));
    }
    out.push({ value, at: (path) => locate(doc, lc, path) });
  }
  return out;
}
