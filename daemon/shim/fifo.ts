// The stdio FIFOs containerd hands a task or an exec: written with backpressure, bounded
// when nobody reads them.
import { closeSync, constants, openSync } from 'node:fs';
import { Socket } from 'node:net';
import type { Log } from './log.ts';

/** Output held for a FIFO nobody reads (a detached `ctr run`) before more is dropped. */
const FIFO_BACKLOG = 1 << 20;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class Fifo {
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
function openFifo(path: string, log: Log): Fifo | null {
  if (!path) return null;
  const fd = openSync(path, constants.O_RDWR | constants.O_NONBLOCK);
  return new Fifo(new Socket({ fd, readable: false, writable: true }), log, path);
}

/**
 * A process's stdio as containerd hands it (the task's or an exec's): stdout and stderr
 * written to their FIFOs, stdin not passed on but held open (non-blocking) so the
 * writer's open completes. `open` sets each as it goes, so `close` undoes a partial open.
 */
export class Stdio {
  private stdout: Fifo | null = null;
  private stderr: Fifo | null = null;
  private stdinFd: number | null = null;

  constructor(private readonly log: Log) {}

  open(p: { stdin: string; stdout: string; stderr: string }): void {
    this.stdout = openFifo(p.stdout, this.log);
    this.stderr = openFifo(p.stderr, this.log);
    if (p.stdin) this.stdinFd = openSync(p.stdin, constants.O_RDONLY | constants.O_NONBLOCK);
  }

  write(stream: string | undefined, b: Buffer): void {
    (stream === 'stderr' ? this.stderr : this.stdout)?.write(b);
  }

  /** Flushes and closes the output FIFOs (their readers see EOF). */
  async end(): Promise<void> {
    await this.stdout?.end();
    await this.stderr?.end();
  }

  closeStdin(): void {
    if (this.stdinFd !== null) closeSync(this.stdinFd);
    this.stdinFd = null;
  }

  async close(): Promise<void> {
    this.closeStdin();
    await this.end();
  }
}
