// ttrpc framing: a 10-byte big-endian header (length u32, stream id u32, type u8, flags
// u8) before each message. The reader holds at most one message of up to `max` bytes;
// a longer one is reported and its bytes discarded as they arrive, never buffered (the
// peer is untrusted), as Go's ttrpc does.

export const HEADER_LENGTH = 10;
/** Go ttrpc's messageLengthMax. */
export const MAX_MESSAGE = 4 << 20;
export const TYPE_REQUEST = 1;
export const TYPE_RESPONSE = 2;

export interface Frame {
  streamId: number;
  type: number;
  flags: number;
  data: Buffer;
}

export type FrameEvent = { kind: 'frame'; frame: Frame } | { kind: 'oversized'; streamId: number; type: number; length: number };

export function encodeFrame(streamId: number, type: number, data: Buffer, flags = 0): Buffer {
  const h = Buffer.alloc(HEADER_LENGTH);
  h.writeUInt32BE(data.length, 0);
  h.writeUInt32BE(streamId >>> 0, 4);
  h.writeUInt8(type, 8);
  h.writeUInt8(flags, 9);
  return Buffer.concat([h, data]);
}

export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);
  /** Bytes of an oversized message still to discard. */
  private skip = 0;

  constructor(private readonly max = MAX_MESSAGE) {}

  /** Bytes held now (for tests: never more than one header and one message). */
  get buffered(): number {
    return this.buf.length;
  }

  /** Whether a message is cut short (for the peer closing mid-frame). */
  get partial(): boolean {
    return this.buf.length > 0 || this.skip > 0;
  }

  push(chunk: Buffer): FrameEvent[] {
    const out: FrameEvent[] = [];
    if (this.skip > 0) {
      const n = Math.min(this.skip, chunk.length);
      this.skip -= n;
      chunk = chunk.subarray(n);
    }
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    while (this.buf.length >= HEADER_LENGTH) {
      const length = this.buf.readUInt32BE(0);
      const streamId = this.buf.readUInt32BE(4);
      const type = this.buf.readUInt8(8);
      const flags = this.buf.readUInt8(9);
      if (length > this.max) {
        out.push({ kind: 'oversized', streamId, type, length });
        const have = this.buf.length - HEADER_LENGTH;
        const n = Math.min(have, length);
        this.skip = length - n;
        this.buf = this.buf.subarray(HEADER_LENGTH + n);
        if (this.skip > 0) break;
        continue;
      }
      if (this.buf.length < HEADER_LENGTH + length) break;
      out.push({ kind: 'frame', frame: { streamId, type, flags, data: this.buf.subarray(HEADER_LENGTH, HEADER_LENGTH + length) } });
      this.buf = this.buf.subarray(HEADER_LENGTH + length);
    }
    // Keep only what is unread, in a buffer of its own (not a view pinning a large chunk).
    if (this.buf.length && this.buf.byteOffset !== 0) this.buf = Buffer.from(this.buf);
    return out;
  }
}
