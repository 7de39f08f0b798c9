// One connection to a sandbox's init, reached without ever following a path the sandbox controls.
import { constants as fsConstants } from 'node:fs';
import { open as openFile, type FileHandle } from 'node:fs/promises';
import net from 'node:net';
import { InitError, protocolError } from './errors.ts';
import { FrameDecoder, type Frame } from './frames.ts';
import type { LivenessWaiter } from './liveness.ts';

/** Not exported by node:fs: open(2)'s O_PATH, a descriptor that names an inode without opening it. */
const O_PATH = 0o10000000;

export interface ConnHandlers {
  frame: (f: Frame) => void;
  /** Called once: null on a clean end of the connection. */
  close: (err: InitError | null) => void;
}

/** One connection carrying one request. Never throws from socket events. */
export class Conn {
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
    socket.on('end', () => this.finish(this.decoder.pending > 0 ? protocolError('truncated frame') : null));
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
        this.fail(e instanceof InitError ? e : protocolError(String(e)));
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

export interface ConnectOptions {
  timeoutMs: number;
  /** Host uid the socket must belong to (the sandbox's mapped root); any other is refused. */
  socketOwner?: number;
}

/**
 * The socket lives in a directory the sandbox writes (root inside can put anything there), so
 * it is never reached by path: the last component is opened with O_PATH|O_NOFOLLOW (a link
 * the sandbox planted is opened as the link itself, not followed), the inode is checked to be
 * a socket of the sandbox's own root, and the connection goes through that descriptor
 * (/proc/self/fd/N names exactly the inode that was checked). Only sockets bound inside this
 * sandbox can be at that path, so nothing reached this way is another sandbox or the host.
 */
async function openSocket(socketPath: string, socketOwner: number | undefined): Promise<FileHandle> {
  let fh: FileHandle;
  try {
    fh = await openFile(socketPath, O_PATH | fsConstants.O_NOFOLLOW);
  } catch (e) {
    throw new InitError('unavailable', `the sandbox's init is not listening (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  try {
    const st = await fh.stat();
    if (!st.isSocket()) {
      throw new InitError('unavailable', "the sandbox's init socket was replaced from inside the sandbox by something that is not a socket; refusing to follow it");
    }
    if (socketOwner !== undefined && st.uid !== socketOwner) {
      throw new InitError('unavailable', "the sandbox's init socket does not belong to the sandbox's root; refusing to use it");
    }
    return fh;
  } catch (e) {
    await fh.close();
    throw e;
  }
}

/** A new connection to the init listening at `socketPath`, added to `owner` while it is open. */
export async function connect(socketPath: string, opts: ConnectOptions, owner: Set<Conn>): Promise<Conn> {
  const fh = await openSocket(socketPath, opts.socketOwner);
  // The descriptor is closed without waiting: the Conn must reach its caller in the same
  // turn as the connect event, before any frame (or the end of the connection) arrives.
  const release = () => void fh.close().catch(() => undefined);
  return new Promise<Conn>((resolve, reject) => {
    const socket = net.createConnection({ path: `/proc/self/fd/${fh.fd}` });
    let finished = false;
    const timer = setTimeout(() => {
      if (finished) return;
      finished = true;
      release();
      socket.destroy();
      reject(new InitError('unavailable', "the sandbox's init did not accept a connection: connect timed out"));
    }, opts.timeoutMs);
    socket.once('connect', () => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      release();
      socket.removeAllListeners('error');
      resolve(new Conn(socket, owner));
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      release();
      socket.destroy();
      reject(new InitError('unavailable', `the sandbox's init refused the connection (${e.code ?? e.message})`));
    });
  });
}
