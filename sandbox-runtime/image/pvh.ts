// PVH boot: QEMU can enter an uncompressed vmlinux at its PVH entry point, skipping the
// real-mode set-up and the decompressor, which are slow under TCG. Debian's bzImage
// carries an LZ4 payload; we extract it once per image build.
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { gunzipSync } from 'node:zlib';
import { promisify } from 'node:util';

const run = promisify(execFile);
const XEN_ELFNOTE_PHYS32_ENTRY = 18;
const LZ4_LEGACY_MAGIC = Buffer.from([0x02, 0x21, 0x4c, 0x18]);
const GZIP_MAGIC = Buffer.from([0x1f, 0x8b, 0x08]);

/** True when `elf` is a 64-bit ELF with the Xen PVH entry note. */
export function hasPvhNote(elf: Buffer): boolean {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2) return false;
  const phoff = Number(elf.readBigUInt64LE(32));
  const phentsize = elf.readUInt16LE(54);
  const phnum = elf.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + 56 > elf.length || elf.readUInt32LE(ph) !== 4 /* PT_NOTE */) continue;
    let off = Number(elf.readBigUInt64LE(ph + 8));
    const end = off + Number(elf.readBigUInt64LE(ph + 32));
    while (off + 12 <= end && end <= elf.length) {
      const namesz = elf.readUInt32LE(off);
      const descsz = elf.readUInt32LE(off + 4);
      const type = elf.readUInt32LE(off + 8);
      const name = elf.subarray(off + 12, off + 12 + namesz).toString('latin1').replace(/\0+$/, '');
      if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY) return true;
      off += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  return false;
}

/**
 * Writes the PVH-bootable vmlinux inside `kernel` to `out`. Returns false (and writes
 * nothing) when the kernel has no such payload: the caller then boots the bzImage.
 */
export async function extractPvhKernel(kernel: string, out: string): Promise<boolean> {
  const data = await readFile(kernel);
  if (hasPvhNote(data)) {
    await writeFile(out, data);
    return true;
  }
  let elf: Buffer | null = null;
  const lz4At = data.indexOf(LZ4_LEGACY_MAGIC);
  if (lz4At >= 0) {
    // lz4 complains about the bytes that follow the payload; judge by what it produced.
    const r = await run('sh', ['-c', 'tail -c +"$1" "$0" | lz4 -dc 2>/dev/null; true', kernel, String(lz4At + 1)],
      { encoding: 'buffer', maxBuffer: 512 << 20 }).catch(() => null);
    elf = r?.stdout && r.stdout.length > 0 ? r.stdout : null;
  }
  if (!elf) {
    const gzAt = data.indexOf(GZIP_MAGIC);
    if (gzAt >= 0) {
      try { elf = gunzipSync(data.subarray(gzAt)); } catch { elf = null; }
    }
  }
  if (!elf || !hasPvhNote(elf)) return false;
  await writeFile(out, elf);
  return true;
}
