// Host side of the guest agent protocol (docs/AGENT_PROTOCOL.md). The C agent in
// sandbox-runtime/guest/agent.c implements the same framing; keep the two in step.
import { crc32 } from 'node:zlib';

export const MAGIC0 = 0x4c; // 'L'
export const MAGIC1 = 0x47; // 'G'
export const VERSION = 1;
export const HEADER_BYTES = 20;
export const MAX_PAYLOAD = 1 << 20;

export enum FrameType {
  Hello = 1,
  Ping = 2,
  Pong = 3,
  Exec = 4,
  Started = 5,
  Stdout = 6,
  Stderr = 7,
  Exit = 8,
  Signal = 9,
  StatsRequest = 10,
  Stats = 11,
  Sync = 12,
  SyncDone = 13,
  Error = 14,
  Online = 15,
  Shutdown = 16,
  /** Host -> guest: keep exactly N CPUs online (u32 N); answered with Stats. */
  SetCpus = 17,
  /** Host -> guest: output stored up to (u64 stdout, u64 stderr) bytes, u32 flags (bit 0: exit status stored). */
  Ack = 18,
  /** Host -> guest: as Ack, and send everything after those offsets again (a host that reconnected). */
  Replay = 19,
}

const KNOWN_TYPES = new Set<number>(Object.values(FrameType).filter((v): v is number => typeof v === 'number'));

export interface Frame {
  type: FrameType;
  id: number;
  payload: Buffer;
}

export function encodeFrame(type: FrameType, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`frame payload ${payload.length} > ${MAX_PAYLOAD}`);
  const buf = Buffer.alloc(HEADER_BYTES + payload.length);
  buf[0] = MAGIC0;
  buf[1] = MAGIC1;
  buf[2] = VERSION;
  buf[3] = type;
  buf.writeUInt32LE(id >>> 0, 4);
  buf.writeUInt32LE(payload.length, 8);
  buf.writeUInt32LE(crc32(payload), 12);
  buf.writeUInt32LE(crc32(buf.subarray(0, 16)), 16);
  payload.copy(buf, HEADER_BYTES);
  return buf;
}

/**
 * Incremental decoder that survives garbage: a bad magic, header checksum, length,
 * type or payload checksum drops one byte and rescans, so a valid frame after any
 * junk is still found. A frame left incomplete is given up by `expireStale()`.
 */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);
  /** Bytes thrown away while resynchronising; exposed for metrics and tests. */
  discarded = 0;

  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: Frame[] = [];
    for (;;) {
      const r = this.next();
      if (r === 'need-more') break;
      if (r !== 'skipped') out.push(r);
    }
    return out;
  }

  /** Drops whatever is held (a new connection starts at a frame boundary). */
  reset(): void {
    this.buf = Buffer.alloc(0);
  }

  /** Bytes held waiting for the rest of a frame. */
  get pending(): number {
    return this.buf.length;
  }

  /** The sender stalled mid-frame: drop one byte and rescan what is held. */
  expireStale(): Frame[] {
    if (this.buf.length === 0) return [];
    this.skip(1);
    return this.push(Buffer.alloc(0));
  }

  private skip(n: number): void {
    this.discarded += n;
    this.buf = this.buf.subarray(n);
  }

  private next(): Frame | 'need-more' | 'skipped' {
    const b = this.buf;
    if (b.length < 2) return 'need-more';
    if (b[0] !== MAGIC0 || b[1] !== MAGIC1) {
      const at = b.indexOf(MAGIC0, 1);
      this.skip(at < 0 ? b.length : at);
      return 'skipped';
    }
    if (b.length < HEADER_BYTES) return 'need-more';
    const len = b.readUInt32LE(8);
    if (b[2] !== VERSION || !KNOWN_TYPES.has(b[3]!) || len > MAX_PAYLOAD ||
        b.readUInt32LE(16) !== crc32(b.subarray(0, 16))) {
      this.skip(1);
      return 'skipped';
    }
    if (b.length < HEADER_BYTES + len) return 'need-more';
    const payload = b.subarray(HEADER_BYTES, HEADER_BYTES + len);
    if (crc32(payload) !== b.readUInt32LE(12)) {
      this.skip(1);
      return 'skipped';
    }
    const frame: Frame = { type: b[3] as FrameType, id: b.readUInt32LE(4), payload: Buffer.from(payload) };
    this.buf = b.subarray(HEADER_BYTES + len);
    return frame;
  }
}

// ---- payloads ----

export interface ExecRequest {
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  /** Run inside the job's root filesystem (/rootfs in the guest) instead of the base image. */
  chroot: boolean;
  /** Run as this uid and gid (no supplementary groups); absent: as root. */
  user?: { uid: number; gid: number };
}

export const EXEC_FLAG_CHROOT = 1;
export const EXEC_FLAG_USER = 2;

export function encodeExec(req: ExecRequest): Buffer {
  const strings = [req.cwd, ...req.argv, ...Object.entries(req.env).map(([k, v]) => `${k}=${v}`)];
  for (const s of strings) {
    if (s.includes('\0')) throw new TypeError('exec strings must not contain NUL');
  }
  const head = Buffer.alloc(req.user ? 20 : 12);
  head.writeUInt32LE((req.chroot ? EXEC_FLAG_CHROOT : 0) | (req.user ? EXEC_FLAG_USER : 0), 0);
  head.writeUInt32LE(req.argv.length, 4);
  head.writeUInt32LE(Object.keys(req.env).length, 8);
  if (req.user) {
    head.writeUInt32LE(req.user.uid, 12);
    head.writeUInt32LE(req.user.gid, 16);
  }
  return Buffer.concat([head, ...strings.map((s) => Buffer.from(`${s}\0`, 'utf8'))]);
}

export interface ExitStatus {
  /** Exit code, or null when killed by a signal. */
  code: number | null;
  signal: number | null;
}

/** The guest reports what waitpid() gave it: an exit code 0-255, or -1 and a signal 1-64. Anything else is a lie. */
export function decodeExit(p: Buffer): ExitStatus {
  if (p.length < 8) throw new AgentPayloadError('exit', p.length);
  const code = p.readInt32LE(0);
  const signal = p.readInt32LE(4);
  if (signal < 0 || signal > 64 || code < -1 || code > 255 || (signal === 0 && code < 0)) {
    throw new AgentPayloadError('exit', p.length, `code ${code}, signal ${signal} is not an exit status`);
  }
  return signal > 0 ? { code: null, signal } : { code, signal: null };
}

export interface GuestStats {
  cpusOnline: number;
  cpusPresent: number;
  memTotalKiB: number;
  memAvailableKiB: number;
  load1: number;
  load5: number;
  load15: number;
  uptimeMs: number;
}

export const STATS_BYTES = 48;

/** Bounds no real guest passes: a report past them is a lie and is refused, not believed. */
const STATS_MAX = { cpus: 4096, memKiB: 2 ** 44, load: 1e6, uptimeMs: 2 ** 52 };

export function decodeStats(p: Buffer): GuestStats {
  if (p.length < STATS_BYTES) throw new AgentPayloadError('stats', p.length);
  const s = readStats(p);
  const bad = s.cpusPresent > STATS_MAX.cpus ? 'cpusPresent' : s.cpusOnline > s.cpusPresent ? 'cpusOnline > cpusPresent'
    : s.memTotalKiB > STATS_MAX.memKiB ? 'memTotal' : s.memAvailableKiB > s.memTotalKiB ? 'memAvailable > memTotal'
      : Math.max(s.load1, s.load5, s.load15) > STATS_MAX.load ? 'load' : s.uptimeMs > STATS_MAX.uptimeMs ? 'uptime' : null;
  if (bad) throw new AgentPayloadError('stats', p.length, `implausible ${bad}`);
  return s;
}

function readStats(p: Buffer): GuestStats {
  return {
    cpusOnline: p.readUInt32LE(0),
    cpusPresent: p.readUInt32LE(4),
    memTotalKiB: Number(p.readBigUInt64LE(8)),
    memAvailableKiB: Number(p.readBigUInt64LE(16)),
    load1: p.readUInt32LE(24) / 100,
    load5: p.readUInt32LE(28) / 100,
    load15: p.readUInt32LE(32) / 100,
    uptimeMs: Number(p.readBigUInt64LE(40)),
  };
}

export function encodeStats(s: GuestStats): Buffer {
  const p = Buffer.alloc(STATS_BYTES);
  p.writeUInt32LE(s.cpusOnline, 0);
  p.writeUInt32LE(s.cpusPresent, 4);
  p.writeBigUInt64LE(BigInt(s.memTotalKiB), 8);
  p.writeBigUInt64LE(BigInt(s.memAvailableKiB), 16);
  p.writeUInt32LE(Math.round(s.load1 * 100), 24);
  p.writeUInt32LE(Math.round(s.load5 * 100), 28);
  p.writeUInt32LE(Math.round(s.load15 * 100), 32);
  p.writeBigUInt64LE(BigInt(s.uptimeMs), 40);
  return p;
}

/** Stdout/Stderr payload: the u64 offset of these bytes in the job's stream, then the bytes. */
export function decodeOutput(p: Buffer): { offset: number; data: Buffer } {
  if (p.length < 8) throw new AgentPayloadError('output', p.length);
  return { offset: Number(p.readBigUInt64LE(0)), data: p.subarray(8) };
}

export function encodeOutput(offset: number, data: Buffer): Buffer {
  const b = Buffer.alloc(8 + data.length);
  b.writeBigUInt64LE(BigInt(offset), 0);
  data.copy(b, 8);
  return b;
}

/** Ack and Replay payload. */
export function encodeAck(stdout: number, stderr: number, exitStored: boolean): Buffer {
  const b = Buffer.alloc(20);
  b.writeBigUInt64LE(BigInt(stdout), 0);
  b.writeBigUInt64LE(BigInt(stderr), 8);
  b.writeUInt32LE(exitStored ? 1 : 0, 16);
  return b;
}

export function encodeU32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0, 0);
  return b;
}

/** The guest's words end up in job errors and logs: at most 512 characters, no control characters. */
export function decodeError(p: Buffer): { errno: number; message: string } {
  if (p.length < 4) throw new AgentPayloadError('error', p.length);
  return { errno: p.readInt32LE(0), message: guestText(p.subarray(4)) };
}

export function guestText(b: Buffer, max = 512): string {
  // Control characters (terminal escapes, line breaks that forge log lines) become '?'.
  const s = [...b.subarray(0, max * 4).toString('utf8')].map((c) => (c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f ? '?' : c)).join('');
  return s.length > max ? `${s.slice(0, max)}...` : s;
}

export class AgentPayloadError extends Error {
  readonly code = 'AGENT_BAD_PAYLOAD';
  constructor(what: string, len: number, why?: string) {
    super(`agent sent a ${what} frame with a ${len}-byte payload${why ? `: ${why}` : ''}`);
  }
}
