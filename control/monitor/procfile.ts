// A /proc or /sys file read every control round through one kept-open descriptor:
// pread from offset 0 makes the kernel render it afresh. Opening and closing it each
// round (and fs.promises' thread-pool hop) was most of lodgerd's own CPU at 10 rounds/s
// on this host, where every system call is slow.
import { closeSync, openSync, readSync } from 'node:fs';

/** No file read on the hot path is allowed to grow past this. */
const MAX_BYTES = 1 << 20;

export class ProcFile {
  private fd: number | null = null;
  private buf = Buffer.allocUnsafe(4096);

  constructor(readonly path: string) {}

  /** The file's current text, or null when it cannot be read (gone, no permission). */
  read(): string | null {
    try {
      if (this.fd === null) this.fd = openSync(this.path, 'r');
      for (;;) {
        const n = readSync(this.fd, this.buf, 0, this.buf.length, 0);
        if (n < this.buf.length || this.buf.length >= MAX_BYTES) return this.buf.toString('latin1', 0, n);
        this.buf = Buffer.allocUnsafe(this.buf.length * 2);
      }
    } catch {
      this.close();
      return null;
    }
  }

  close(): void {
    if (this.fd !== null) {
      try { closeSync(this.fd); } catch { /* already closed */ }
    }
    this.fd = null;
  }
}
