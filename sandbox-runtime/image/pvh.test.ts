import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { extractPvhKernel, hasPvhNote } from './pvh.ts';

/** A minimal ELF64 with one PT_NOTE program header holding one note. */
function elfWithNote(name: string, type: number): Buffer {
  const nameBuf = Buffer.from(`${name}\0`);
  const namePad = Math.ceil(nameBuf.length / 4) * 4;
  const note = Buffer.alloc(12 + namePad + 8);
  note.writeUInt32LE(nameBuf.length, 0);
  note.writeUInt32LE(8, 4);
  note.writeUInt32LE(type, 8);
  nameBuf.copy(note, 12);
  const elf = Buffer.alloc(64 + 56 + note.length);
  elf.writeUInt32BE(0x7f454c46, 0);
  elf[4] = 2; // 64-bit
  elf.writeBigUInt64LE(64n, 32); // phoff
  elf.writeUInt16LE(56, 54);
  elf.writeUInt16LE(1, 56);
  elf.writeUInt32LE(4, 64); // PT_NOTE
  elf.writeBigUInt64LE(BigInt(64 + 56), 64 + 8); // offset
  elf.writeBigUInt64LE(BigInt(note.length), 64 + 32); // filesz
  note.copy(elf, 64 + 56);
  return elf;
}

test('the PVH entry note (Xen, type 18) is recognised, other notes are not', (t) => {
  t.true(hasPvhNote(elfWithNote('Xen', 18)));
  t.false(hasPvhNote(elfWithNote('Xen', 6)));
  t.false(hasPvhNote(elfWithNote('GNU', 18)));
  t.false(hasPvhNote(Buffer.from('not an elf at all, but long enough to have a header.........')));
});

const bzImage = existsSync('/boot') ? readdirSync('/boot').find((n) => n.startsWith('vmlinuz-')) : undefined;
(bzImage ? test : test.skip)('the vmlinux inside the host\'s bzImage is extracted and bootable through PVH', async (t) => {
  const out = join(mkdtempSync(join(tmpdir(), 'lodger-pvh-')), 'vmlinux');
  const ok = await extractPvhKernel(join('/boot', bzImage!), out);
  // Debian's kernels carry the PVH note; a kernel without it makes extraction decline.
  if (ok) t.true(hasPvhNote(readFileSync(out)));
  else t.false(existsSync(out));
});
