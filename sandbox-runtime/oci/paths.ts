// Paths inside an image's root, resolved the way the guest will see them and never on the
// host's terms: a symlink met on the way is read and followed inside the root, and a walk
// that would climb above the root is refused. The last component is never followed (it is
// what gets created or replaced).
import { lstatSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError } from './errors.ts';

const MAX_LINKS = 40;

/**
 * A layer entry's name as components under the root: leading `/` and `./` dropped, empty
 * and `.` components skipped. `..` anywhere is refused: no honest layer needs it.
 */
export function entryComponents(name: string, what = 'entry'): string[] {
  if (name.includes('\0')) throw new ImageError('IMAGE_UNSAFE_PATH', `${what} ${JSON.stringify(name)}: NUL in the name`);
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new ImageError('IMAGE_UNSAFE_PATH', `${what} ${JSON.stringify(name)}: '..' would leave the root`);
  return parts;
}

/**
 * The host path of `parts` under `root`, every component but the last resolved inside the
 * root (symlinks followed with `/` meaning the root). Missing parents are reported as
 * `missing` from that index on, so the caller can create them as directories.
 */
export function resolveInRoot(root: string, parts: string[], name: string): { dir: string[]; missingFrom: number | null } {
  const dir: string[] = [];
  let links = 0;
  // A queue of components still to walk: a symlink's target is spliced in front.
  const todo = parts.slice(0, -1);
  while (todo.length) {
    const c = todo.shift()!;
    if (c === '.' || c === '') continue;
    if (c === '..') {
      if (!dir.length) throw new ImageError('IMAGE_UNSAFE_PATH', `entry ${JSON.stringify(name)}: runs through a link that leads out of the root`);
      dir.pop();
      continue;
    }
    const host = join(root, ...dir, c);
    let st;
    try {
      st = lstatSync(host);
    } catch {
      // Not there: this and the rest are created as plain directories by the caller.
      return { dir: [...dir, c, ...todo], missingFrom: dir.length };
    }
    if (st.isSymbolicLink()) {
      if (++links > MAX_LINKS) throw new ImageError('IMAGE_UNSAFE_PATH', `entry ${JSON.stringify(name)}: too many levels of links`);
      const target = readlinkSync(host);
      if (target.startsWith('/')) dir.length = 0;
      todo.unshift(...target.split('/'));
      continue;
    }
    if (!st.isDirectory()) throw new ImageError('IMAGE_BAD_LAYER', `entry ${JSON.stringify(name)}: ${[...dir, c].join('/')} is not a directory`);
    dir.push(c);
  }
  return { dir, missingFrom: null };
}
