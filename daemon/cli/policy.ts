import { loadPolicyFile, PolicyError } from '../../control/index.ts';

export async function policyValidateCommand(files: string[], opts: { json: boolean }): Promise<number> {
  const results: { file: string; ok: boolean; error?: string; line?: number; column?: number; services?: string[]; pools?: string[] }[] = [];
  for (const file of files) {
    try {
      const set = await loadPolicyFile(file);
      results.push({ file, ok: true, services: set.services.map((s) => s.name), pools: set.pools.map((p) => p.name) });
    } catch (e) {
      if (!(e instanceof PolicyError)) throw e;
      results.push({ file, ok: false, error: e.message, line: e.line, column: e.column });
    }
  }
  if (opts.json) console.log(JSON.stringify(results, null, 2));
  else {
    for (const r of results) {
      if (r.ok) console.log(`${r.file}: ok (${[...(r.services ?? []).map((n) => `OnlineService ${n}`), ...(r.pools ?? []).map((n) => `BatchPool ${n}`)].join(', ') || 'empty'})`);
      else console.error(r.error);
    }
  }
  return results.every((r) => r.ok) ? 0 : 1;
}
