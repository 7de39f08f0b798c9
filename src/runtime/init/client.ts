// Client of the sandbox init (docs/init-protocol.md). The init runs inside the sandbox and is
// untrusted: every frame is size-checked, every answer is shape-checked, and a misbehaving init
// can only make the call it answers fail (with InitError 'protocol').
import { Readable } from 'node:stream';
import {
  bool, CHANNELS, errorFrom, expectType, int, isInt, optInt, parseEntry, parseFsEvent, parseProcess, str, type Entry, type ProcessInfo,
} from './answers.ts';
import { connect, type Conn } from './connection.ts';
import { InitError, protocolError } from './errors.ts';
import { CH_FILE, encodeData, encodeJson, MAX_DATA, type Json } from './frames.ts';
import { LivenessMonitor } from './liveness.ts';
import { ProcessStream, WatchHandle, type FileRead } from './streams.ts';

const UPLOAD_CHUNK = 256 * 1024;
/**
 * While a call waits longer than this for the init, a ping on a fresh connection checks that
 * the init still answers; if it does not within PING_TIMEOUT_MS, the call fails at once as
 * "not responding" instead of waiting out its whole timeout.
 */
const LIVENESS_INTERVAL_MS = 2000;
const PING_TIMEOUT_MS = 3000;

export interface StartRequest {
  argv: string[];
  env?: Record<string, string>;
  cwd?: string | null;
  user?: string;
  pty?: { cols: number; rows: number } | null;
  stdin?: boolean;
  tag?: string | null;
}
export interface WriteFileOptions {
  user?: string;
  mode?: number;
  append?: boolean;
}
export interface InitClientOptions {
  connectTimeoutMs?: number;
  /** Time allowed for the answer of a unary request (and for the first frame of a stream). */
  requestTimeoutMs?: number;
  /** Host uid the socket must belong to (the sandbox's mapped root); any other is refused. */
  socketOwner?: number;
}

export class InitClient {
  private readonly conns = new Set<Conn>();
  private readonly connectTimeoutMs: number;
  private readonly requestTimeoutMs: number;
  private readonly monitor: LivenessMonitor;

  constructor(
    readonly socketPath: string,
    private readonly opts: InitClientOptions = {},
  ) {
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 3000;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 30_000;
    this.monitor = new LivenessMonitor(() => this.ping(), LIVENESS_INTERVAL_MS, PING_TIMEOUT_MS);
  }

  /** Destroys every open connection of this client (streams end, pending calls fail). */
  closeAll() {
    for (const c of [...this.conns]) c.fail(new InitError('unavailable', 'connection closed by the client'));
  }

  get openConnections() {
    return this.conns.size;
  }

  private connect(): Promise<Conn> {
    return connect(this.socketPath, { timeoutMs: this.connectTimeoutMs, socketOwner: this.opts.socketOwner }, this.conns);
  }

  /**
   * Opens a connection, sends `req` and resolves with `parse` of the first answer frame; the
   * connection is then closed unless `keep` is set (the caller then owns it).
   */
  private async request<T>(
    req: Json,
    parse: (o: Json, conn: Conn) => T,
    opts: { keep?: boolean; timeoutMs?: number; unwatched?: boolean } = {},
  ): Promise<T> {
    const frame = encodeJson(req);
    const conn = await this.connect();
    const timeoutMs = opts.timeoutMs ?? this.requestTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        settle(new InitError('unavailable', `the sandbox's init did not answer ${String(req.op)} within ${timeoutMs} ms`));
      }, timeoutMs);
      // A stream keeps its watch after the answer: its init may stop at any time.
      if (!opts.unwatched) conn.liveness = this.monitor.watch((e) => conn.fail(e));
      const settle = (err: Error | null, value?: T) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) {
          conn.handlers = null;
          conn.fail(null);
          reject(err);
        } else {
          if (!opts.keep) {
            conn.handlers = null;
            conn.fail(null);
          }
          resolve(value as T);
        }
      };
      conn.handlers = {
        frame: (f) => {
          if (f.kind !== 'json') throw protocolError(`${String(req.op)}: DATA frame before the answer`);
          const err = errorFrom(f.value);
          if (err) return settle(err);
          let value: T;
          try {
            value = parse(f.value, conn);
          } catch (e) {
            return settle(e instanceof InitError ? e : protocolError(String(e)));
          }
          settle(null, value);
        },
        close: (err) => settle(err ?? protocolError(`connection closed before the answer to ${String(req.op)}`)),
      };
      if (conn.isClosed) return settle(protocolError(`connection closed before the answer to ${String(req.op)}`));
      conn.send(frame);
    });
  }

  async ping(): Promise<{ version: string; pid: number }> {
    return this.request(
      { op: 'ping' },
      (o) => {
        expectType(o, 'pong');
        return { version: str(o, 'version'), pid: int(o, 'pid', 1) };
      },
      { timeoutMs: PING_TIMEOUT_MS, unwatched: true },
    );
  }

  // --- processes ---------------------------------------------------------------------------

  start(req: StartRequest): Promise<ProcessStream> {
    const msg: Json = {
      op: 'start',
      argv: req.argv,
      env: req.env ?? {},
      cwd: req.cwd ?? null,
      user: req.user ?? 'user',
      pty: req.pty ?? null,
      stdin: req.stdin ?? false,
      tag: req.tag ?? null,
    };
    return this.stream(msg, 'started');
  }

  attach(pid: number): Promise<ProcessStream> {
    return this.stream({ op: 'attach', pid }, 'attached', pid);
  }

  private stream(msg: Json, first: string, expectPid?: number): Promise<ProcessStream> {
    return this.request(
      msg,
      (o, conn) => {
        expectType(o, first);
        const pid = int(o, 'pid', 1);
        if (expectPid !== undefined && pid !== expectPid) throw protocolError('attached to a different pid');
        const ps = new ProcessStream(pid, conn);
        const dropped = o.dropped;
        if (isInt(dropped) && dropped > 0) ps.droppedBytes = dropped;
        conn.handlers = {
          frame: (f) => {
            if (f.kind === 'data') {
              const channel = CHANNELS[f.channel];
              if (!channel) throw protocolError(`unexpected channel ${f.channel} in process output`);
              ps._chunk({ channel, data: f.data });
              return;
            }
            const v = f.value;
            const err = errorFrom(v);
            if (err) throw err;
            expectType(v, 'exit');
            if (int(v, 'pid', 1) !== pid) throw protocolError('exit of a different pid');
            const exit = { exitCode: optInt(v, 'exit_code'), signal: optInt(v, 'signal') };
            ps._end(exit, null);
            conn.fail(null);
          },
          close: (err) => ps._end(null, err ?? protocolError('process stream closed before the exit')),
        };
        return ps;
      },
      { keep: true },
    );
  }

  private async unaryOk(msg: Json): Promise<void> {
    await this.request(msg, (o) => {
      if (o.ok !== true) throw protocolError(`expected {"ok":true} for ${String(msg.op)}`);
    });
  }

  input(pid: number, data: Buffer): Promise<void> {
    if (data.length > MAX_DATA / 2) return this.inputChunked(pid, data);
    return this.unaryOk({ op: 'input', pid, data: data.toString('base64') });
  }

  private async inputChunked(pid: number, data: Buffer): Promise<void> {
    for (let off = 0; off < data.length; off += MAX_DATA / 2) {
      await this.unaryOk({ op: 'input', pid, data: data.subarray(off, off + MAX_DATA / 2).toString('base64') });
    }
  }

  closeStdin(pid: number): Promise<void> {
    return this.unaryOk({ op: 'close_stdin', pid });
  }

  signal(pid: number, signal: number): Promise<void> {
    return this.unaryOk({ op: 'signal', pid, signal });
  }

  resize(pid: number, cols: number, rows: number): Promise<void> {
    return this.unaryOk({ op: 'resize', pid, cols, rows });
  }

  list(): Promise<ProcessInfo[]> {
    return this.request({ op: 'list' }, (o) => {
      expectType(o, 'list');
      if (!Array.isArray(o.processes)) throw protocolError('processes is not an array');
      return o.processes.map(parseProcess);
    });
  }

  // --- files -------------------------------------------------------------------------------

  readFile(path: string, user = 'user'): Promise<FileRead> {
    return this.request(
      { op: 'read_file', path, user },
      (o, conn) => {
        expectType(o, 'file');
        const size = int(o, 'size', 0);
        let received = 0;
        const stream = new Readable({
          read: () => conn.resume(),
          destroy: (err, cb) => {
            conn.fail(null);
            cb(err);
          },
        });
        // The stream may fail before the caller has attached a listener; it sees the error
        // through its own listener or iterator, never as an uncaught 'error' event.
        stream.on('error', () => undefined);
        conn.handlers = {
          frame: (f) => {
            if (f.kind === 'data') {
              if (f.channel !== CH_FILE) throw protocolError('file content on a wrong channel');
              received += f.data.length;
              if (received > size) throw protocolError('file is longer than announced');
              if (!stream.push(f.data)) conn.pause();
              return;
            }
            const err = errorFrom(f.value);
            if (err) throw err;
            expectType(f.value, 'end');
            if (received !== size) throw protocolError(`file changed while read (${received} of ${size} bytes)`);
            stream.push(null);
            conn.handlers = null;
            conn.fail(null);
          },
          close: (err) => {
            if (!stream.readableEnded && !stream.destroyed) stream.destroy(err ?? protocolError('file stream closed before its end'));
          },
        };
        return { size, stream };
      },
      { keep: true },
    );
  }

  async writeFile(
    path: string,
    source: Buffer | Readable | AsyncIterable<Buffer | Uint8Array | string>,
    opts: WriteFileOptions = {},
  ): Promise<Entry> {
    const msg: Json = { op: 'write_file', path, user: opts.user ?? 'user', mode: opts.mode ?? 0o644, append: opts.append ?? false };
    const frame = encodeJson(msg);
    const conn = await this.connect();
    return new Promise<Entry>((resolve, reject) => {
      let settled = false;
      let uploaded = false;
      let timer: NodeJS.Timeout | null = null;
      let stallTimer: NodeJS.Timeout | null = null;
      let drainWaiter: (() => void) | null = null;
      conn.liveness = this.monitor.watch((e) => conn.fail(e));
      const settle = (err: Error | null, entry?: Entry) => {
        if (settled) return;
        settled = true;
        if (timer) clearTimeout(timer);
        if (stallTimer) clearTimeout(stallTimer);
        conn.handlers = null;
        conn.fail(null);
        const w = drainWaiter;
        drainWaiter = null;
        w?.();
        if (err) reject(err);
        else resolve(entry!);
      };
      conn.handlers = {
        frame: (f) => {
          if (f.kind !== 'json') throw protocolError('write_file: unexpected DATA frame');
          const err = errorFrom(f.value);
          if (err) return settle(err);
          let entry: Entry;
          try {
            expectType(f.value, 'entry');
            if (!uploaded) throw protocolError('write_file answered before the upload ended');
            entry = parseEntry(f.value.entry);
          } catch (e) {
            return settle(e instanceof InitError ? e : protocolError(String(e)));
          }
          settle(null, entry);
        },
        close: (err) => settle(err ?? protocolError('connection closed before the answer to write_file')),
      };
      conn.socket.on('drain', () => {
        conn.liveness?.progress();
        const w = drainWaiter;
        drainWaiter = null;
        w?.();
      });
      const send = async (buf: Buffer) => {
        if (settled) return;
        if (conn.send(buf) || settled) return;
        // An init that stops reading the upload must not hang the call forever.
        stallTimer = setTimeout(
          () => settle(new InitError('unavailable', `the sandbox's init stopped reading the upload for ${this.requestTimeoutMs} ms`)),
          this.requestTimeoutMs,
        );
        await new Promise<void>((r) => (drainWaiter = r));
        clearTimeout(stallTimer);
        stallTimer = null;
      };
      const upload = async () => {
        await send(frame);
        const chunks: AsyncIterable<Buffer | Uint8Array | string> | Iterable<Buffer> = Buffer.isBuffer(source) ? [source] : source;
        for await (const c of chunks) {
          if (settled) return;
          const buf = typeof c === 'string' ? Buffer.from(c) : Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
          for (let off = 0; off < buf.length; off += UPLOAD_CHUNK) {
            await send(encodeData(CH_FILE, buf.subarray(off, off + UPLOAD_CHUNK)));
            if (settled) return;
          }
        }
        uploaded = true;
        await send(encodeJson({ op: 'end' }));
        if (!settled) {
          timer = setTimeout(
            () => settle(new InitError('unavailable', `the sandbox's init did not answer write_file within ${this.requestTimeoutMs} ms`)),
            this.requestTimeoutMs,
          );
        }
      };
      upload().catch((e: unknown) => {
        // A failing source aborts the upload; the init discards the temporary file.
        settle(e instanceof Error ? e : new Error(String(e)));
      });
    });
  }

  stat(path: string, user = 'user'): Promise<Entry> {
    return this.request({ op: 'stat', path, user }, (o) => {
      expectType(o, 'entry');
      return parseEntry(o.entry);
    });
  }

  listDir(path: string, depth = 1, user = 'user'): Promise<Entry[]> {
    return this.request({ op: 'list_dir', path, depth, user }, (o) => {
      expectType(o, 'entries');
      if (!Array.isArray(o.entries)) throw protocolError('entries is not an array');
      return o.entries.map(parseEntry);
    });
  }

  /** Creates the directory (with parents); resolves true when it was created. */
  mkdir(path: string, user = 'user'): Promise<boolean> {
    return this.request({ op: 'mkdir', path, user }, (o) => {
      expectType(o, 'mkdir');
      return bool(o, 'created');
    });
  }

  move(from: string, to: string, user = 'user'): Promise<Entry> {
    return this.request({ op: 'move', from, to, user }, (o) => {
      expectType(o, 'entry');
      return parseEntry(o.entry);
    });
  }

  remove(path: string, user = 'user'): Promise<void> {
    return this.unaryOk({ op: 'remove', path, user });
  }

  watch(path: string, opts: { recursive?: boolean; user?: string } = {}): Promise<WatchHandle> {
    return this.request(
      { op: 'watch', path, recursive: opts.recursive ?? false, user: opts.user ?? 'user' },
      (o, conn) => {
        expectType(o, 'watching');
        const w = new WatchHandle(conn);
        conn.handlers = {
          frame: (f) => {
            if (f.kind !== 'json') throw protocolError('watch: unexpected DATA frame');
            const err = errorFrom(f.value);
            if (err) throw err;
            w._event(parseFsEvent(f.value));
          },
          close: (err) => w._end(err),
        };
        return w;
      },
      { keep: true },
    );
  }
}
