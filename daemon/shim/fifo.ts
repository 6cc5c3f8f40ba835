// The stdio FIFOs containerd hands a task or an exec: written with backpressure, bounded
// when nobody reads them.
import { constants, openSync } from 'node:fs';
import { Socket } from 'node:net';
import type { Log } from './log.ts';

/** Output held for a FIFO nobody reads (a detached `ctr run`) before more is dropped. */
const FIFO_BACKLOG = 1 << 20;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class Fifo {
  private dropped = 0;
  constructor(readonly sock: Socket, private readonly log: Log, private readonly path: string) {
    sock.on('error', (e) => log(`fifo ${path}: ${e.message}`));
  }

  write(b: Buffer): void {
    if (this.sock.destroyed) return;
    if (this.sock.writableLength > FIFO_BACKLOG) {
      if (this.dropped === 0) this.log(`fifo ${this.path}: nobody reads it; dropping output past ${FIFO_BACKLOG} bytes`);
      this.dropped += b.length;
      return;
    }
    this.sock.write(b);
  }

  /** Flushes and closes (the reader then sees EOF), within 5 s. */
  async end(): Promise<void> {
    if (this.sock.destroyed) return;
    await Promise.race([new Promise<void>((r) => this.sock.end(r)), sleep(5000)]);
    this.sock.destroy();
  }
}

/**
 * A FIFO opened read-write and non-blocking: opening never waits for a reader (write-only
 * would block until one comes), and the fd is a libuv pipe that writes with backpressure.
 */
export function openFifo(path: string, log: Log): Fifo | null {
  if (!path) return null;
  const fd = openSync(path, constants.O_RDWR | constants.O_NONBLOCK);
  return new Fifo(new Socket({ fd, readable: false, writable: true }), log, path);
}
