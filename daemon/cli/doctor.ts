import { shimChecks } from '../shim/index.ts';
import { chooseBackend, defaultHostPaths, runDoctor, type AccelRequest, type Check, type RuntimeRequest } from '../../sandbox-runtime/index.ts';

export async function doctorCommand(opts: { json: boolean; accel: AccelRequest; runtime?: RuntimeRequest }): Promise<number> {
  const checks = await runDoctor(defaultHostPaths(), {
    accel: opts.accel,
    image: { kernel: process.env.LODGER_GUEST_KERNEL || undefined },
  });
  // Which backend the runtime setting picks here, and why (auto probes runsc with a real sandbox).
  const choice = await chooseBackend(opts.runtime ?? 'auto', { accel: opts.accel });
  const runtimeCheck: Check = { name: 'runtime', ok: true, required: false, detail: `${choice.backend}: ${choice.reason}` };
  checks.unshift(runtimeCheck);
  checks.push(...shimChecks());
  const failed = checks.some((c) => c.required && !c.ok);
  if (opts.json) {
    console.log(JSON.stringify({ ok: !failed, checks }, null, 2));
  } else {
    for (const c of checks) {
      const mark = c.ok ? 'ok  ' : c.required ? 'FAIL' : 'warn';
      console.log(`${mark}  ${c.name.padEnd(13)} ${c.detail}`);
      if (!c.ok && c.fix) console.log(`      ${''.padEnd(13)} -> ${c.fix}`);
      else if (c.ok && c.fix && c.name === 'accelerator') console.log(`      ${''.padEnd(13)} -> ${c.fix}`);
    }
  }
  return failed ? 1 : 0;
}
