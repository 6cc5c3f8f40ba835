import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CONFIG_KEYS, ConfigError, loadConfig } from './config.ts';

test('the shipped config documents every key, and loads', (t) => {
  const file = join(import.meta.dirname, '..', 'config', 'lodgerd.yaml');
  const text = readFileSync(file, 'utf8');
  for (const [k, v] of Object.entries(CONFIG_KEYS)) {
    t.true(text.includes(`# ${v.description}`), `${k} is described`);
    t.regex(text, new RegExp(`^${k}:`, 'm'));
  }
  const cfg = loadConfig(file);
  t.is(cfg.policyDir, join(import.meta.dirname, '..', 'policies'));
  t.is(cfg.warmPoolSize, 1);
});

test('defaults fill what the file leaves out; flags override; unknown keys are errors at file:line:column', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lodger-cfg-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, 'stateDir: state\n');
  const cfg = loadConfig(file, { socket: '/tmp/x.sock' });
  t.is(cfg.stateDir, join(dir, 'state'));
  t.is(cfg.socket, '/tmp/x.sock');
  t.is(cfg.accelerator, 'auto');
  writeFileSync(file, 'stateDir: state\nwarmPool: 2\n');
  t.throws(() => loadConfig(file), { instanceOf: ConfigError, message: `${file}:2:1: unknown key "warmPool" at /` });
  writeFileSync(file, 'accelerator: hvf\n');
  t.throws(() => loadConfig(file), { message: /c\.yaml:1:14: \/accelerator: must be one of "auto", "kvm", "tcg"/ });
});
