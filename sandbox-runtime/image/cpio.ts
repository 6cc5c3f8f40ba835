// Writer for the "newc" cpio format the kernel unpacks as an initramfs. Written here
// because the format is small and it spares the build a dependency on cpio(1).

export interface CpioEntry {
  name: string; // relative, no leading slash
  mode: number; // includes the file type bits (S_IFREG, S_IFDIR, ...)
  data?: Buffer; // file contents, or the target of a symlink
  rdevMajor?: number;
  rdevMinor?: number;
}

export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;

const hex8 = (n: number): string => (n >>> 0).toString(16).padStart(8, '0');
const pad4 = (n: number): Buffer => Buffer.alloc((4 - (n % 4)) % 4);

export function writeCpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const push = (e: CpioEntry): void => {
    const name = Buffer.from(`${e.name}\0`, 'utf8');
    const data = e.data ?? Buffer.alloc(0);
    const header =
      '070701' +
      hex8(ino++) + hex8(e.mode) + hex8(0) + hex8(0) + // ino, mode, uid, gid
      hex8(1) + hex8(0) + hex8(data.length) + // nlink, mtime (fixed for reproducible images), filesize
      hex8(0) + hex8(0) + hex8(e.rdevMajor ?? 0) + hex8(e.rdevMinor ?? 0) + // dev, rdev
      hex8(name.length) + hex8(0); // namesize, check
    const head = Buffer.concat([Buffer.from(header, 'ascii'), name]);
    parts.push(head, pad4(head.length), data, pad4(data.length));
  };
  for (const e of entries) push(e);
  push({ name: 'TRAILER!!!', mode: 0 });
  return Buffer.concat(parts);
}
