// A command's output and exit, read from the files the in-sandbox spooler writes
// (bundle.ts spoolerScript). Files, not pipes: they outlive this process, so a lodgerd that
// restarts reads on from the offsets it had stored. The sandbox writes these files, so
// every read is bounded, opened without following links, and validated.
import { constants, existsSync, type Stats } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { ExitStatus } from '../agent/index.ts';
import type { ExecHandle } from '../contract.ts';
import { SandboxError } from '../errors.ts';
import { parseExit } from './bundle.ts';

/** Read per stream per poll: a flood of output cannot hold the event loop. */
const MAX_READ = 1 << 20;
const CHUNK = 64 * 1024;
const POLL_MS = 15;

/** A regular file's bytes from `offset`, at most `max`; a link or anything else the sandbox put there is refused. */
export async function readFrom(path: string, offset: number, max: number): Promise<Buffer | null> {
  let fh;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new SandboxError('SANDBOX_AGENT_ERROR', `reading ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    const st: Stats = await fh.stat();
    if (!st.isFile()) throw new SandboxError('SANDBOX_AGENT_ERROR', `${path} is not a regular file`);
    const want = Math.min(max, st.size - offset);
    if (want <= 0) return Buffer.alloc(0);
    const buf = Buffer.alloc(want);
    let got = 0;
    while (got < want) {
      const { bytesRead } = await fh.read(buf, got, Math.min(CHUNK, want - got), offset + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return buf.subarray(0, got);
  } finally {
    await fh.close();
  }
}

/**
 * Command n's pid from io/n.pid, null while there is none (yet). Strict: digits and one
 * newline, 2 and up (1 is the spooler itself); anything else the sandbox put there is an error.
 */
export async function readPid(io: string, n: number): Promise<number | null> {
  const b = await readFrom(join(io, `${n}.pid`), 0, 16);
  if (b === null || b.length === 0) return null;
  const m = /^(\d{1,7})\n$/.exec(b.toString('latin1'));
  // A pid file not yet whole is empty: a sandbox's echo writes it in one write.
  if (!m || Number(m[1]) < 2) throw new SandboxError('SANDBOX_AGENT_ERROR', `command ${n}: unreadable pid ${JSON.stringify(b.toString('latin1'))}`);
  return Number(m[1]);
}

export interface FileExecHost {
  io: string;
  /** Rejects when the sandbox itself dies first (VmmExitedError). */
  died: Promise<never>;
  signal(pid: number, signo: number): Promise<void>;
}

export class FileExec implements ExecHandle {
  private readonly cbs: [((b: Buffer) => void)[], ((b: Buffer) => void)[]] = [[], []];
  /** Output read before anyone listened: handed to the first listener. */
  private readonly pending: [Buffer[], Buffer[]] = [[], []];
  private readonly offsets: [number, number];
  private readonly done: Promise<ExitStatus>;
  private stopped = false;

  constructor(readonly id: number, private readonly host: FileExecHost, offsets: [number, number] = [0, 0]) {
    this.offsets = [...offsets];
    this.done = Promise.race([this.follow(), host.died]);
    this.done.catch(() => {}).finally(() => { this.stopped = true; });
  }

  private file(ext: string): string {
    return join(this.host.io, `${this.id}.${ext}`);
  }

  onStdout(cb: (chunk: Buffer) => void): void {
    this.listen(0, cb);
  }

  onStderr(cb: (chunk: Buffer) => void): void {
    this.listen(1, cb);
  }

  private listen(i: 0 | 1, cb: (chunk: Buffer) => void): void {
    this.cbs[i].push(cb);
    for (const b of this.pending[i].splice(0)) cb(b);
  }

  private emit(i: 0 | 1, b: Buffer): void {
    if (this.cbs[i].length === 0) this.pending[i].push(b);
    for (const cb of this.cbs[i]) cb(b);
  }

  /** Drains both streams (bounded per call); true when something was read. */
  private async drain(): Promise<boolean> {
    let any = false;
    for (const i of [0, 1] as const) {
      const b = await readFrom(this.file(i === 0 ? 'out' : 'err'), this.offsets[i], MAX_READ);
      if (b && b.length) {
        this.offsets[i] += b.length;
        this.emit(i, b);
        any = true;
      }
    }
    return any;
  }

  private async follow(): Promise<ExitStatus> {
    while (!this.stopped) {
      await this.drain();
      const exitText = await readFrom(this.file('exit'), 0, 16);
      if (exitText !== null) {
        const status = parseExit(exitText.toString('latin1'));
        if (!status) throw new SandboxError('SANDBOX_AGENT_ERROR', `command ${this.id}: unreadable exit status ${JSON.stringify(exitText.toString('latin1'))}`);
        // Written after the command ended: what is in the files now is all of it.
        while (await this.drain()) { /* more than one bounded read */ }
        return status;
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    throw new SandboxError('SANDBOX_BAD_STATE', `command ${this.id}: no longer followed`);
  }

  /**
   * Signals the command by its pid. A command that has ended is not signalled (its pid
   * may be another process's by now); one that ends while the signal is on its way is not
   * an error.
   */
  async signal(signo: number): Promise<void> {
    if (!Number.isInteger(signo) || signo < 1 || signo > 64) throw new SandboxError('SANDBOX_BAD_SPEC', `signal ${signo} is not in [1, 64]`);
    const pid = await readPid(this.host.io, this.id);
    if (pid === null) throw new SandboxError('SANDBOX_BAD_STATE', `command ${this.id} has no pid yet`);
    if (existsSync(this.file('exit'))) return;
    try {
      await this.host.signal(pid, signo);
    } catch (e) {
      // Ended just now: its exit status follows within the spooler's mv.
      for (let i = 0; i < 10 && !existsSync(this.file('exit')); i++) await new Promise((r) => setTimeout(r, 20));
      if (!existsSync(this.file('exit'))) throw e;
    }
  }

  wait(): Promise<ExitStatus> {
    return this.done;
  }

  /** Stops polling (the sandbox is let go of or gone). */
  close(): void {
    this.stopped = true;
  }
}
