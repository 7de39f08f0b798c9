// Client of the sandbox init (docs/init-protocol.md). The init runs inside the sandbox and is
// untrusted: every frame is size-checked, every answer is shape-checked, and a misbehaving init
// can only make the call it answers fail (with InitError 'protocol').
import { EventEmitter } from 'node:events';
import { constants as fsConstants } from 'node:fs';
import { open as openFile, type FileHandle } from 'node:fs/promises';
import net from 'node:net';
import { Readable } from 'node:stream';

export const MAX_FRAME = 1024 * 1024 + 16;
const MAX_DATA = 1024 * 1024;
const UPLOAD_CHUNK = 256 * 1024;
const KIND_JSON = 1;
const KIND_DATA = 2;
const CH_FILE = 4;
const MAX_MESSAGE = 2000;
/** Unconsumed output kept by a ProcessStream nobody iterates (oldest dropped beyond it). */
const UNREAD_CAP = 4 * 1024 * 1024;
/** Queued output/events above which the socket is paused until the consumer catches up. */
const HIGH_WATER = 1024 * 1024;
const MAX_QUEUED_EVENTS = 10_000;

const SPEC_CODES = ['invalid', 'not_found', 'exists', 'not_dir', 'is_dir', 'permission', 'no_space', 'internal'] as const;
export type InitErrorCode = (typeof SPEC_CODES)[number] | 'protocol' | 'unavailable';

export class InitError extends Error {
  constructor(
    readonly code: InitErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'InitError';
  }
}

const protocol = (msg: string) => new InitError('protocol', `init protocol violation: ${msg}`);

export type Channel = 'stdout' | 'stderr' | 'pty';
export interface OutputChunk {
  channel: Channel;
  data: Buffer;
}
export interface ExitStatus {
  exitCode: number | null;
  signal: number | null;
}
export interface StartRequest {
  argv: string[];
  env?: Record<string, string>;
  cwd?: string | null;
  user?: string;
  pty?: { cols: number; rows: number } | null;
  stdin?: boolean;
  tag?: string | null;
}
export interface ProcessInfo {
  pid: number;
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  tag: string | null;
  pty: boolean;
}
export type EntryType = 'file' | 'dir' | 'symlink' | 'other';
export interface Entry {
  name: string;
  type: EntryType;
  path: string;
  size: number;
  mode: number;
  permissions: string;
  owner: string;
  group: string;
  mtime_ms: number;
  symlink_target: string | null;
}
export type FsOp = 'create' | 'write' | 'remove' | 'rename' | 'chmod';
export interface FsEvent {
  name: string;
  op: FsOp;
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
  /**
   * While a call waits longer than this for the init, a ping on a fresh connection checks that
   * the init still answers; if it does not within `pingTimeoutMs`, the call fails at once as
   * "not responding" instead of waiting out its whole timeout.
   */
  livenessMs?: number;
  pingTimeoutMs?: number;
  /** Host uid the socket must belong to (the sandbox's mapped root); any other is refused. */
  socketOwner?: number;
}

/** Not exported by node:fs: open(2)'s O_PATH, a descriptor that names an inode without opening it. */
const O_PATH = 0o10000000;

// ---------------------------------------------------------------------------------------------
// Validation of untrusted answers

type Json = Record<string, unknown>;

const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);

function str(o: Json, k: string): string {
  const v = o[k];
  if (typeof v !== 'string') throw protocol(`field ${k} is not a string`);
  return v;
}
function int(o: Json, k: string, min = Number.MIN_SAFE_INTEGER): number {
  const v = o[k];
  if (!isInt(v) || v < min) throw protocol(`field ${k} is not a valid integer`);
  return v;
}
function optInt(o: Json, k: string): number | null {
  const v = o[k];
  if (v === null || v === undefined) return null;
  if (!isInt(v)) throw protocol(`field ${k} is not an integer or null`);
  return v;
}
function optStr(o: Json, k: string): string | null {
  const v = o[k];
  if (v === null || v === undefined) return null;
  if (typeof v !== 'string') throw protocol(`field ${k} is not a string or null`);
  return v;
}
function bool(o: Json, k: string): boolean {
  const v = o[k];
  if (typeof v !== 'boolean') throw protocol(`field ${k} is not a boolean`);
  return v;
}
function expectType(o: Json, type: string): void {
  if (o.type !== type) throw protocol(`expected a ${type} answer, got ${describe(o.type)}`);
}
function describe(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v.slice(0, 40)) : typeof v;
}

const ENTRY_TYPES = new Set<string>(['file', 'dir', 'symlink', 'other']);
const FS_OPS = new Set<string>(['create', 'write', 'remove', 'rename', 'chmod']);

function parseEntry(v: unknown): Entry {
  if (!isObj(v)) throw protocol('entry is not an object');
  const type = str(v, 'type');
  if (!ENTRY_TYPES.has(type)) throw protocol('bad entry type');
  return {
    name: str(v, 'name'),
    type: type as EntryType,
    path: str(v, 'path'),
    size: int(v, 'size', 0),
    mode: int(v, 'mode', 0),
    permissions: str(v, 'permissions'),
    owner: str(v, 'owner'),
    group: str(v, 'group'),
    mtime_ms: int(v, 'mtime_ms'),
    symlink_target: optStr(v, 'symlink_target'),
  };
}

function parseStrings(v: unknown, what: string): string[] {
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw protocol(`${what} is not an array of strings`);
  return v as string[];
}

function parseProcess(v: unknown): ProcessInfo {
  if (!isObj(v)) throw protocol('process is not an object');
  const env = v.env;
  if (!isObj(env) || !Object.values(env).every((x) => typeof x === 'string')) throw protocol('env is not an object of strings');
  const safeEnv: Record<string, string> = Object.create(null);
  for (const [k, x] of Object.entries(env)) safeEnv[k] = x as string;
  return {
    pid: int(v, 'pid', 1),
    argv: parseStrings(v.argv, 'argv'),
    env: { ...safeEnv },
    cwd: str(v, 'cwd'),
    tag: optStr(v, 'tag'),
    pty: bool(v, 'pty'),
  };
}

/** An error frame becomes an InitError; anything else that is not `type` is a protocol error. */
function errorFrom(o: Json): InitError | null {
  if (o.type !== 'error') return null;
  const code = o.code;
  const message = o.message;
  if (typeof code !== 'string' || !(SPEC_CODES as readonly string[]).includes(code) || typeof message !== 'string') {
    return protocol('malformed error answer');
  }
  return new InitError(code as InitErrorCode, message.slice(0, MAX_MESSAGE));
}

// ---------------------------------------------------------------------------------------------
// Framing

type Frame = { kind: 'json'; value: Json } | { kind: 'data'; channel: number; data: Buffer };

function encodeJson(v: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(v), 'utf8');
  if (body.length + 1 > MAX_FRAME) throw new InitError('invalid', 'request too large');
  const hdr = Buffer.alloc(5);
  hdr.writeUInt32BE(body.length + 1, 0);
  hdr[4] = KIND_JSON;
  return Buffer.concat([hdr, body]);
}

function encodeData(channel: number, data: Buffer): Buffer {
  const hdr = Buffer.alloc(6);
  hdr.writeUInt32BE(data.length + 2, 0);
  hdr[4] = KIND_DATA;
  hdr[5] = channel;
  return Buffer.concat([hdr, data]);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Incremental frame decoder with a hard frame size limit. */
class FrameDecoder {
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
      return { frames, error: e instanceof InitError ? e : protocol(String(e)) };
    }
    return { frames, error: null };
  }

  private decode(frames: Frame[]): void {
    for (;;) {
      if (this.buffered < 5) break;
      const head = this.peek(5);
      const len = head.readUInt32BE(0);
      if (len < 1 || len > MAX_FRAME) throw protocol(`frame length ${len} out of range`);
      const kind = head[4];
      if (kind !== KIND_JSON && kind !== KIND_DATA) throw protocol(`unknown frame kind ${kind}`);
      if (this.buffered < 4 + len) break;
      const frame = this.take(4 + len).subarray(5);
      if (kind === KIND_JSON) {
        let value: unknown;
        try {
          value = JSON.parse(utf8.decode(frame));
        } catch {
          throw protocol('invalid JSON frame');
        }
        if (!isObj(value)) throw protocol('JSON frame is not an object');
        frames.push({ kind: 'json', value });
      } else {
        if (frame.length < 1) throw protocol('DATA frame without channel');
        const channel = frame[0]!;
        if (channel < 1 || channel > 4) throw protocol(`unknown channel ${channel}`);
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

interface ConnHandlers {
  frame: (f: Frame) => void;
  /** Called once: null on a clean end of the connection. */
  close: (err: InitError | null) => void;
}

/** One connection carrying one request. Never throws from socket events. */
class Conn {
  private readonly decoder = new FrameDecoder();
  private closed = false;
  handlers: ConnHandlers | null = null;
  /** Set while something waits on this connection: frames count as signs of life. */
  liveness: LivenessWaiter | null = null;

  constructor(
    readonly socket: net.Socket,
    private readonly owner: Set<Conn>,
  ) {
    owner.add(this);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.finish(this.decoder.pending > 0 ? protocol('truncated frame') : null));
    socket.on('error', (e: Error) => this.finish(new InitError('unavailable', `init connection: ${e.message}`)));
    socket.on('close', () => this.finish(null));
  }

  private onData(chunk: Buffer) {
    if (this.closed) return;
    this.liveness?.progress();
    const { frames, error } = this.decoder.push(chunk);
    for (const f of frames) {
      if (this.closed) return;
      try {
        this.handlers?.frame(f);
      } catch (e) {
        this.fail(e instanceof InitError ? e : protocol(String(e)));
      }
    }
    if (error) this.fail(error);
  }

  send(buf: Buffer): boolean {
    if (this.closed) return false;
    return this.socket.write(buf);
  }

  /** Ends the connection and reports `err` (or a clean close). */
  fail(err: InitError | null) {
    this.finish(err);
  }

  private finish(err: InitError | null) {
    if (this.closed) return;
    this.closed = true;
    this.liveness?.stop();
    this.liveness = null;
    this.owner.delete(this);
    this.socket.destroy();
    const h = this.handlers;
    this.handlers = null;
    try {
      h?.close(err);
    } catch {
      // handlers never throw; belt and braces
    }
  }

  get isClosed() {
    return this.closed;
  }

  pause() {
    if (!this.closed) this.socket.pause();
  }

  resume() {
    if (!this.closed) this.socket.resume();
  }
}

// ---------------------------------------------------------------------------------------------
// Streams handed to callers

/** Output of one process: async-iterable chunks (also emitted as 'data'), plus its exit. */
export class ProcessStream extends EventEmitter implements AsyncIterable<OutputChunk> {
  readonly exited: Promise<ExitStatus>;
  /** Bytes the init dropped while no reader was attached, plus any dropped here. */
  droppedBytes = 0;
  private resolveExit!: (e: ExitStatus) => void;
  private rejectExit!: (e: Error) => void;
  private queue: OutputChunk[] = [];
  private queuedBytes = 0;
  private done = false;
  private error: Error | null = null;
  private wake: (() => void) | null = null;
  private iterating = false;
  private detached = false;

  constructor(
    readonly pid: number,
    private readonly conn: Conn,
  ) {
    super();
    this.exited = new Promise<ExitStatus>((res, rej) => {
      this.resolveExit = res;
      this.rejectExit = rej;
    });
    this.exited.catch(() => undefined); // a caller that never looks at it must not crash the process
  }

  /** Stops reading (the process keeps running and can be attached again). */
  detach() {
    this.detached = true;
    this.conn.fail(new InitError('unavailable', `detached from process ${this.pid} before it exited`));
  }

  /** @internal */
  _chunk(c: OutputChunk) {
    if (this.done) return;
    if (this.listenerCount('data') > 0) this.emitSafe('data', c);
    this.queue.push(c);
    this.queuedBytes += c.data.length;
    if (this.iterating) {
      if (this.queuedBytes > HIGH_WATER) this.conn.pause();
    } else {
      while (this.queuedBytes > UNREAD_CAP && this.queue.length > 1) {
        const old = this.queue.shift()!;
        this.queuedBytes -= old.data.length;
        this.droppedBytes += old.data.length;
      }
    }
    this.notify();
  }

  /** @internal */
  _end(exit: ExitStatus | null, err: Error | null) {
    if (this.done) return;
    this.done = true;
    if (exit) this.resolveExit(exit);
    else this.rejectExit(err ?? new InitError('unavailable', 'process stream ended without an exit'));
    this.error = exit ? null : err;
    this.emitSafe('end', exit);
    this.notify();
  }

  private emitSafe(event: string, arg: unknown) {
    try {
      this.emit(event, arg);
    } catch {
      // listener errors are the listener's business
    }
  }

  private notify() {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<OutputChunk> {
    this.iterating = true;
    try {
      for (;;) {
        const c = this.queue.shift();
        if (c) {
          this.queuedBytes -= c.data.length;
          if (this.queuedBytes <= HIGH_WATER / 2) this.conn.resume();
          yield c;
          continue;
        }
        if (this.done) {
          // A detach ends the iteration quietly; a broken stream is reported (and via `exited`).
          if (this.error && !this.detached) throw this.error;
          return;
        }
        await new Promise<void>((r) => (this.wake = r));
      }
    } finally {
      this.iterating = false;
      this.conn.resume();
    }
  }
}

/** Filesystem events of one watch: async-iterable; `close()` ends it. */
export class WatchHandle implements AsyncIterable<FsEvent> {
  private queue: FsEvent[] = [];
  private done = false;
  private error: Error | null = null;
  private wake: (() => void) | null = null;
  private closedByUs = false;

  constructor(private readonly conn: Conn) {}

  close() {
    this.closedByUs = true;
    this.conn.fail(null);
  }

  /** @internal */
  _event(e: FsEvent) {
    if (this.done) return;
    this.queue.push(e);
    if (this.queue.length > MAX_QUEUED_EVENTS) this.conn.pause();
    this.notify();
  }

  /** @internal */
  _end(err: Error | null) {
    if (this.done) return;
    this.done = true;
    this.error = this.closedByUs ? null : err;
    this.notify();
  }

  private notify() {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<FsEvent> {
    for (;;) {
      const e = this.queue.shift();
      if (e) {
        if (this.queue.length < MAX_QUEUED_EVENTS / 2) this.conn.resume();
        yield e;
        continue;
      }
      if (this.done) {
        if (this.error) throw this.error;
        return;
      }
      await new Promise<void>((r) => (this.wake = r));
    }
  }
}

export interface FileRead {
  size: number;
  stream: Readable;
}

// ---------------------------------------------------------------------------------------------
// Liveness

interface LivenessWaiter {
  progress(): void;
  stop(): void;
}

/**
 * One per client. While calls or streams wait on the init, each `intervalMs` in which some of
 * them heard nothing, one ping on a fresh connection checks that the init still answers; when
 * it does not, every waiter that heard nothing fails at once. A stopped init (ptrace, a frozen
 * cgroup) thus fails calls and streams within seconds, and a long silent stream of a live
 * process costs one ping per interval and sandbox, not per stream.
 */
class LivenessMonitor {
  private readonly waiters = new Set<{ progressed: boolean; dead: (e: InitError) => void }>();
  private timer: NodeJS.Timeout | null = null;
  private pinging = false;

  constructor(
    private readonly ping: () => Promise<unknown>,
    private readonly intervalMs: number,
    private readonly pingTimeoutMs: number,
  ) {}

  watch(dead: (e: InitError) => void): LivenessWaiter {
    const w = { progressed: false, dead };
    this.waiters.add(w);
    if (!this.timer) {
      this.timer = setInterval(() => this.tick(), this.intervalMs);
      this.timer.unref();
    }
    return {
      progress: () => (w.progressed = true),
      stop: () => {
        this.waiters.delete(w);
        if (this.waiters.size === 0 && this.timer) {
          clearInterval(this.timer);
          this.timer = null;
        }
      },
    };
  }

  private tick() {
    const silent = [...this.waiters].filter((w) => !w.progressed);
    for (const w of this.waiters) w.progressed = false;
    if (silent.length === 0 || this.pinging) return;
    this.pinging = true;
    this.ping().then(
      () => (this.pinging = false),
      (e: unknown) => {
        this.pinging = false;
        const why = e instanceof Error ? e.message : String(e);
        const err = new InitError('unavailable', `the sandbox is not responding: its init did not answer a ping within ${this.pingTimeoutMs} ms (${why})`);
        for (const w of silent) if (this.waiters.has(w)) w.dead(err);
      },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// The client

const CHANNELS: Record<number, Channel> = { 1: 'stdout', 2: 'stderr', 3: 'pty' };

export class InitClient {
  private readonly conns = new Set<Conn>();
  private readonly connectTimeoutMs: number;
  private readonly requestTimeoutMs: number;
  private readonly pingTimeoutMs: number;
  private readonly monitor: LivenessMonitor;

  constructor(
    readonly socketPath: string,
    private readonly opts: InitClientOptions = {},
  ) {
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 3000;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 30_000;
    this.pingTimeoutMs = opts.pingTimeoutMs ?? 3000;
    this.monitor = new LivenessMonitor(() => this.ping(), opts.livenessMs ?? 2000, this.pingTimeoutMs);
  }

  /** Destroys every open connection of this client (streams end, pending calls fail). */
  closeAll() {
    for (const c of [...this.conns]) c.fail(new InitError('unavailable', 'connection closed by the client'));
  }

  get openConnections() {
    return this.conns.size;
  }

  /**
   * The socket lives in a directory the sandbox writes (root inside can put anything there), so
   * it is never reached by path: the last component is opened with O_PATH|O_NOFOLLOW (a link
   * the sandbox planted is opened as the link itself, not followed), the inode is checked to be
   * a socket of the sandbox's own root, and the connection goes through that descriptor
   * (/proc/self/fd/N names exactly the inode that was checked). Only sockets bound inside this
   * sandbox can be at that path, so nothing reached this way is another sandbox or the host.
   */
  private async openSocket(): Promise<FileHandle> {
    let fh: FileHandle;
    try {
      fh = await openFile(this.socketPath, O_PATH | fsConstants.O_NOFOLLOW);
    } catch (e) {
      throw new InitError('unavailable', `the sandbox's init is not listening (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
    }
    try {
      const st = await fh.stat();
      if (!st.isSocket()) {
        throw new InitError('unavailable', "the sandbox's init socket was replaced from inside the sandbox by something that is not a socket; refusing to follow it");
      }
      if (this.opts.socketOwner !== undefined && st.uid !== this.opts.socketOwner) {
        throw new InitError('unavailable', "the sandbox's init socket does not belong to the sandbox's root; refusing to use it");
      }
      return fh;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  private async connect(): Promise<Conn> {
    const fh = await this.openSocket();
    // The descriptor is closed without waiting: the Conn must reach its caller in the same
    // turn as the connect event, before any frame (or the end of the connection) arrives.
    const release = () => void fh.close().catch(() => undefined);
    return new Promise<Conn>((resolve, reject) => {
      const socket = net.createConnection({ path: `/proc/self/fd/${fh.fd}` });
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        release();
        socket.destroy();
        reject(new InitError('unavailable', "the sandbox's init did not accept a connection: connect timed out"));
      }, this.connectTimeoutMs);
      socket.once('connect', () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        release();
        socket.removeAllListeners('error');
        resolve(new Conn(socket, this.conns));
      });
      socket.on('error', (e: NodeJS.ErrnoException) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        release();
        socket.destroy();
        reject(new InitError('unavailable', `the sandbox's init refused the connection (${e.code ?? e.message})`));
      });
    });
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
          if (f.kind !== 'json') throw protocol(`${String(req.op)}: DATA frame before the answer`);
          const err = errorFrom(f.value);
          if (err) return settle(err);
          let value: T;
          try {
            value = parse(f.value, conn);
          } catch (e) {
            return settle(e instanceof InitError ? e : protocol(String(e)));
          }
          settle(null, value);
        },
        close: (err) => settle(err ?? protocol(`connection closed before the answer to ${String(req.op)}`)),
      };
      if (conn.isClosed) return settle(protocol(`connection closed before the answer to ${String(req.op)}`));
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
      { timeoutMs: this.pingTimeoutMs, unwatched: true },
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
        if (expectPid !== undefined && pid !== expectPid) throw protocol('attached to a different pid');
        const ps = new ProcessStream(pid, conn);
        const dropped = o.dropped;
        if (isInt(dropped) && dropped > 0) ps.droppedBytes = dropped;
        conn.handlers = {
          frame: (f) => {
            if (f.kind === 'data') {
              const channel = CHANNELS[f.channel];
              if (!channel) throw protocol(`unexpected channel ${f.channel} in process output`);
              ps._chunk({ channel, data: f.data });
              return;
            }
            const v = f.value;
            const err = errorFrom(v);
            if (err) throw err;
            expectType(v, 'exit');
            if (int(v, 'pid', 1) !== pid) throw protocol('exit of a different pid');
            const exit = { exitCode: optInt(v, 'exit_code'), signal: optInt(v, 'signal') };
            ps._end(exit, null);
            conn.fail(null);
          },
          close: (err) => ps._end(null, err ?? protocol('process stream closed before the exit')),
        };
        return ps;
      },
      { keep: true },
    );
  }

  private async unaryOk(msg: Json): Promise<void> {
    await this.request(msg, (o) => {
      if (o.ok !== true) throw protocol(`expected {"ok":true} for ${String(msg.op)}`);
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
      if (!Array.isArray(o.processes)) throw protocol('processes is not an array');
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
              if (f.channel !== CH_FILE) throw protocol('file content on a wrong channel');
              received += f.data.length;
              if (received > size) throw protocol('file is longer than announced');
              if (!stream.push(f.data)) conn.pause();
              return;
            }
            const err = errorFrom(f.value);
            if (err) throw err;
            expectType(f.value, 'end');
            if (received !== size) throw protocol(`file changed while read (${received} of ${size} bytes)`);
            stream.push(null);
            conn.handlers = null;
            conn.fail(null);
          },
          close: (err) => {
            if (!stream.readableEnded && !stream.destroyed) stream.destroy(err ?? protocol('file stream closed before its end'));
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
          if (f.kind !== 'json') throw protocol('write_file: unexpected DATA frame');
          const err = errorFrom(f.value);
          if (err) return settle(err);
          let entry: Entry;
          try {
            expectType(f.value, 'entry');
            if (!uploaded) throw protocol('write_file answered before the upload ended');
            entry = parseEntry(f.value.entry);
          } catch (e) {
            return settle(e instanceof InitError ? e : protocol(String(e)));
          }
          settle(null, entry);
        },
        close: (err) => settle(err ?? protocol('connection closed before the answer to write_file')),
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
      if (!Array.isArray(o.entries)) throw protocol('entries is not an array');
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

  watch(path: string, recursive = false, user = 'user'): Promise<WatchHandle> {
    return this.request(
      { op: 'watch', path, recursive, user },
      (o, conn) => {
        expectType(o, 'watching');
        const w = new WatchHandle(conn);
        conn.handlers = {
          frame: (f) => {
            if (f.kind !== 'json') throw protocol('watch: unexpected DATA frame');
            const err = errorFrom(f.value);
            if (err) throw err;
            expectType(f.value, 'fs_event');
            const op = str(f.value, 'op');
            if (!FS_OPS.has(op)) throw protocol('bad fs_event op');
            w._event({ name: str(f.value, 'name'), op: op as FsOp });
          },
          close: (err) => w._end(err),
        };
        return w;
      },
      { keep: true },
    );
  }
}
