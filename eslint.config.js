import js from '@eslint/js';
import tseslint from 'typescript-eslint';

// Import rules (docs/ARCHITECTURE.md). Relative paths only, so one pattern serves every
// depth: after the leading ./ and ../ an import may name a file of that folder or
// `<folder>/index.ts` (or `<folder>/testing.ts`, the door to a folder's fakes for
// tests), never a file deeper inside another folder.
const DOOR = {
  regex: '^(\\.\\.?/)+[^./][^/]*/(?!(index|testing)\\.ts$)',
  message: 'another folder is imported only through its index.ts (its public door)',
};
const layer = (folders, message) => ({ regex: `(^|/)(${folders.join('|')})(/|$)`, message });
const imports = (...patterns) => ({ 'no-restricted-imports': ['error', { patterns: [DOOR, ...patterns] }] });

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'native/kvm/build/**', '.cache/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.mjs', '**/*.js'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly', URL: 'readonly' } },
  },
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      ...imports(),
    },
  },
  // A later block replaces the rule's options, so each one repeats the door pattern.
  {
    files: ['control/**'],
    rules: imports(layer(['sandbox-runtime', 'native'], 'control/ decides and never imports sandbox-runtime/ or native/: the actuator is handed anything that fits the sandbox contract')),
  },
  {
    files: ['lib/**'],
    rules: imports(layer(['control', 'daemon', 'sandbox-runtime', 'native'], 'lib/ holds utilities every part may use: it imports none of them')),
  },
  {
    files: ['sandbox-runtime/**'],
    rules: imports(layer(['daemon', 'control'], 'sandbox-runtime/ knows nothing of jobs, SLOs or policies: it never imports daemon/ or control/')),
  },
);
