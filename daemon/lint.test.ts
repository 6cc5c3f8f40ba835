// The import rules are enforced by the linter: forbidden imports fail, legal ones pass
// (ESLint's Node API on snippets placed where the rule applies).
import test from 'ava';
import { ESLint } from 'eslint';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..');
const eslint = new ESLint({ cwd: root });

async function importErrors(file: string, code: string): Promise<string[]> {
  const [r] = await eslint.lintText(`${code}\nexport {};\n`, { filePath: join(root, file) });
  return r!.messages.filter((m) => m.ruleId === 'no-restricted-imports').map((m) => m.message);
}

const forbidden: [file: string, code: string, why: RegExp][] = [
  ['daemon/snippet.ts', "import { QemuSandbox } from '../sandbox-runtime/qemu.ts';", /only through its index\.ts/],
  ['daemon/snippet.ts', "import type { AgentClient } from '../sandbox-runtime/agent/index.ts';", /only through its index\.ts/],
  ['bench/colocation/snippet.ts', "import { connect } from '../../daemon/cli/client.ts';", /only through its index\.ts/],
  ['control/snippet.ts', "export * from './controller/decide.ts';", /only through its index\.ts/],
  ['control/snippet.ts', "import { FakeRuntime } from '../sandbox-runtime/index.ts';", /never imports sandbox-runtime\/ or native\//],
  ['control/monitor/snippet.ts', "import { probeKvm } from '../../native/index.ts';", /never imports sandbox-runtime\/ or native\//],
  ['sandbox-runtime/snippet.ts', "import type { Decision } from '../control/index.ts';", /never imports daemon\/ or control\//],
  ['sandbox-runtime/cgroup/snippet.ts', "import { Lodgerd } from '../../daemon/index.ts';", /never imports daemon\/ or control\//],
  ['lib/snippet.ts', "import { Sandbox } from '../sandbox-runtime/index.ts';", /imports none of them/],
  ['sandbox-runtime/snippet.ts', "import { SerialQueue } from '../lib/serial-queue.ts';", /only through its index\.ts/],
];
for (const [file, code, why] of forbidden) {
  test(`forbidden in ${file}: ${code}`, async (t) => {
    const errors = await importErrors(file, code);
    t.true(errors.some((m) => why.test(m)), errors.join('; ') || 'no error');
  });
}

const legal: [file: string, code: string][] = [
  ['daemon/snippet.ts', "import { openRuntime } from '../sandbox-runtime/index.ts';"],
  ['daemon/snippet.ts', "import { connect } from './cli/index.ts';\nimport { Scheduler } from './scheduler.ts';"],
  ['daemon/cli/snippet.ts', "import { loadApi } from '../api.ts';\nimport { ControlLoop } from '../../control/index.ts';"],
  ['control/snippet.ts', "import { decide } from './controller/index.ts';"],
  ['control/monitor/snippet.test.ts', "import { ServiceMonitor } from './service.ts';\nimport { decide } from '../controller/index.ts';"],
  ['sandbox-runtime/cgroup/snippet.ts', "import { SerialQueue } from '../../lib/index.ts';"],
  ['sandbox-runtime/image/snippet.ts', "import { SandboxError } from '../errors.ts';\nimport { probeKvm } from '../../native/index.ts';"],
  ['test/snippet.test.ts', "import { startNginx } from '../bench/index.ts';\nimport { Lodgerd } from '../daemon/index.ts';"],
];
for (const [file, code] of legal) {
  test(`legal in ${file}: ${code.replace(/\n/g, ' ')}`, async (t) => {
    t.deepEqual(await importErrors(file, code), []);
  });
}
