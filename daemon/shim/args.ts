// The shim's command line, as containerd 1.6 writes it (Go flag syntax):
//   BIN -namespace NS -address SOCK -publish-binary PATH -id ID [-debug] [-bundle DIR] start|delete
import { createHash } from 'node:crypto';
import { join } from 'node:path';

export interface ShimArgs {
  namespace: string;
  address: string;
  publishBinary: string;
  id: string;
  bundle: string;
  debug: boolean;
  version: boolean;
  action: string;
}

export class ArgsError extends Error {
  readonly code = 'SHIM_BAD_ARGS';
}

const STRING_FLAGS = { namespace: 'namespace', address: 'address', 'publish-binary': 'publishBinary', id: 'id', bundle: 'bundle' } as const;
const BOOL_FLAGS = { debug: 'debug', v: 'version' } as const;

export function parseArgs(argv: string[]): ShimArgs {
  const a: ShimArgs = { namespace: '', address: '', publishBinary: '', id: '', bundle: '', debug: false, version: false, action: '' };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('-') || arg === '-' || arg === '--') {
      a.action = arg === '--' ? (argv[i + 1] ?? '') : arg;
      break;
    }
    const body = arg.replace(/^--?/, '');
    const eq = body.indexOf('=');
    const name = eq < 0 ? body : body.slice(0, eq);
    if (name in BOOL_FLAGS) {
      a[BOOL_FLAGS[name as keyof typeof BOOL_FLAGS]] = eq < 0 ? true : body.slice(eq + 1) !== 'false';
    } else if (name in STRING_FLAGS) {
      const value = eq < 0 ? argv[++i] : body.slice(eq + 1);
      if (value === undefined) throw new ArgsError(`flag -${name} needs a value`);
      a[STRING_FLAGS[name as keyof typeof STRING_FLAGS]] = value;
    } else throw new ArgsError(`unknown flag -${name}`);
  }
  if (!a.version && !['start', 'delete', 'serve'].includes(a.action)) throw new ArgsError(`action must be start or delete (got ${JSON.stringify(a.action)})`);
  if (!a.version && (!a.namespace || !a.id)) throw new ArgsError('-namespace and -id are required');
  return a;
}

/**
 * The task socket: short (a unix socket path has 108 bytes) and one per containerd,
 * namespace and id. Under LODGER_SHIM_RUN_DIR, else /run/lodger/shim.
 */
export function socketPath(a: Pick<ShimArgs, 'address' | 'namespace' | 'id'>, runDir = process.env.LODGER_SHIM_RUN_DIR || '/run/lodger/shim'): string {
  const h = createHash('sha256').update(`${a.address}\0${a.namespace}\0${a.id}`).digest('hex').slice(0, 32);
  return join(runDir, `${h}.sock`);
}
