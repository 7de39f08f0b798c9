// The wire format between the agent and a sandbox's init: length-prefixed JSON and DATA frames
// (docs/init-protocol.md). The init is untrusted: every frame is size-checked while decoding.
import { InitError, protocolError } from './errors.ts';

export const MAX_FRAME = 1024 * 1024 + 16;
/** Largest DATA payload the init accepts in one frame. */
export const MAX_DATA = 1024 * 1024;
const KIND_JSON = 1;
const KIND_DATA = 2;
/** The DATA channel of file content (1-3 are process output: stdout, stderr, pty). */
export const CH_FILE = 4;

export type Json = Record<string, unknown>;

export const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

export type Frame = { kind: 'json'; value: Json } | { kind: 'data'; channel: number; data: Buffer };

export function encodeJson(v: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(v), 'utf8');
  if (body.length + 1 > MAX_FRAME) throw new InitError('invalid', 'request too large');
  const hdr = Buffer.alloc(5);
  hdr.writeUInt32BE(body.length + 1, 0);
  hdr[4] = KIND_JSON;
  return Buffer.concat([hdr, body]);
}

export function encodeData(channel: number, data: Buffer): Buffer {
  const hdr = Buffer.alloc(6);
  hdr.writeUInt32BE(data.length + 2, 0);
  hdr[4] = KIND_DATA;
  hdr[5] = channel;
  return Buffer.concat([hdr, data]);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Incremental frame decoder with a hard frame size limit. */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  /** Returns the complete frames in `chunk`, then (if garbage follows them) the error. */
  push(chunk: Buffer): { frames: Frame[]; error: InitError | null } {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: Frame[] = [];
    try {
      this.decode(frames);
    } catch (e) {
      return { frames, error: e instanceof InitError ? e : protocolError(String(e)) };
    }
    return { frames, error: null };
  }

  private decode(frames: Frame[]): void {
    for (;;) {
      if (this.buffered < 5) break;
      const head = this.peek(5);
      const len = head.readUInt32BE(0);
      if (len < 1 || len > MAX_FRAME) throw protocolError(`frame length ${len} out of range`);
      const kind = head[4];
      if (kind !== KIND_JSON && kind !== KIND_DATA) throw protocolError(`unknown frame kind ${kind}`);
      if (this.buffered < 4 + len) break;
      const frame = this.take(4 + len).subarray(5);
      if (kind === KIND_JSON) {
        let value: unknown;
        try {
          value = JSON.parse(utf8.decode(frame));
        } catch {
          throw protocolError('invalid JSON frame');
        }
        if (!isObj(value)) throw protocolError('JSON frame is not an object');
        frames.push({ kind: 'json', value });
      } else {
        if (frame.length < 1) throw protocolError('DATA frame without channel');
        const channel = frame[0]!;
        if (channel < 1 || channel > 4) throw protocolError(`unknown channel ${channel}`);
        frames.push({ kind: 'data', channel, data: frame.subarray(1) });
      }
    }
  }

  get pending(): number {
    return this.buffered;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length >= n) return this.chunks[0]!.subarray(0, n);
    const all = Buffer.concat(this.chunks);
    this.chunks = [all];
    return all.subarray(0, n);
  }

  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      const all = Buffer.concat(this.chunks);
      out = all.subarray(0, n);
      this.chunks = all.length > n ? [all.subarray(n)] : [];
    }
    this.buffered -= n;
    return out;
  }
}
