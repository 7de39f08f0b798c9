// What callers read from the init: process output and filesystem events, both through one
// async queue that holds back the connection while its reader lags.
import { EventEmitter } from 'node:events';
import type { Readable } from 'node:stream';
import type { ExitStatus, FsEvent, OutputChunk } from './answers.ts';
import type { Conn } from './connection.ts';
import { InitError } from './errors.ts';

/** Unconsumed output kept by a ProcessStream nobody iterates (oldest dropped beyond it). */
const UNREAD_CAP = 4 * 1024 * 1024;
/** Queued output above which the socket is paused until the consumer catches up. */
const HIGH_WATER = 1024 * 1024;
/** Queued events above which a watch's socket is paused. */
const MAX_QUEUED_EVENTS = 10_000;

interface QueueOptions<T> {
  /** How much of the queue's limits one item takes (bytes, or 1 per event). */
  size: (item: T) => number;
  /** Above it, a reader that lags holds back the connection; reading below half lets it go on. */
  highWater: number;
  /** Without a reader, the oldest items beyond this are dropped instead (the newest one is kept). */
  unreadCap?: number;
  conn: Conn;
}

/**
 * Items arriving from a connection, read by at most one async iteration. Ends with an error
 * (thrown to the reader once the items before it are read) or without.
 */
class AsyncQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private queued = 0;
  private done = false;
  private error: Error | null = null;
  private wake: (() => void) | null = null;
  private iterating = false;

  constructor(private readonly o: QueueOptions<T>) {}

  /** Queues `item`; returns the size of what was dropped to make room (0 mostly). */
  push(item: T): number {
    if (this.done) return 0;
    this.items.push(item);
    this.queued += this.o.size(item);
    let dropped = 0;
    if (this.o.unreadCap !== undefined && !this.iterating) {
      while (this.queued > this.o.unreadCap && this.items.length > 1) {
        const size = this.o.size(this.items.shift()!);
        this.queued -= size;
        dropped += size;
      }
    } else if (this.queued > this.o.highWater) {
      this.o.conn.pause();
    }
    this.notify();
    return dropped;
  }

  end(error: Error | null) {
    if (this.done) return;
    this.done = true;
    this.error = error;
    this.notify();
  }

  private notify() {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    this.iterating = true;
    try {
      for (;;) {
        if (this.items.length) {
          const item = this.items.shift()!;
          this.queued -= this.o.size(item);
          if (this.queued <= this.o.highWater / 2) this.o.conn.resume();
          yield item;
          continue;
        }
        if (this.done) {
          if (this.error) throw this.error;
          return;
        }
        await new Promise<void>((r) => (this.wake = r));
      }
    } finally {
      this.iterating = false;
      this.o.conn.resume();
    }
  }
}

/** Output of one process: async-iterable chunks (also emitted as 'data'), plus its exit. */
export class ProcessStream extends EventEmitter implements AsyncIterable<OutputChunk> {
  readonly exited: Promise<ExitStatus>;
  /** Bytes the init dropped while no reader was attached, plus any dropped here. */
  droppedBytes = 0;
  private resolveExit!: (e: ExitStatus) => void;
  private rejectExit!: (e: Error) => void;
  private readonly queue: AsyncQueue<OutputChunk>;
  private done = false;
  private detached = false;

  constructor(
    readonly pid: number,
    private readonly conn: Conn,
  ) {
    super();
    this.queue = new AsyncQueue<OutputChunk>({ size: (c) => c.data.length, highWater: HIGH_WATER, unreadCap: UNREAD_CAP, conn });
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
    this.droppedBytes += this.queue.push(c);
  }

  /** @internal */
  _end(exit: ExitStatus | null, err: Error | null) {
    if (this.done) return;
    this.done = true;
    if (exit) this.resolveExit(exit);
    else this.rejectExit(err ?? new InitError('unavailable', 'process stream ended without an exit'));
    // A detach ends the iteration quietly; a broken stream is reported (and via `exited`).
    this.queue.end(exit || this.detached ? null : err);
    this.emitSafe('end', exit);
  }

  private emitSafe(event: string, arg: unknown) {
    try {
      this.emit(event, arg);
    } catch {
      // listener errors are the listener's business
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<OutputChunk> {
    return this.queue[Symbol.asyncIterator]();
  }
}

/** Filesystem events of one watch: async-iterable; `close()` ends it. */
export class WatchHandle implements AsyncIterable<FsEvent> {
  private readonly queue: AsyncQueue<FsEvent>;
  private closedByUs = false;

  constructor(private readonly conn: Conn) {
    this.queue = new AsyncQueue<FsEvent>({ size: () => 1, highWater: MAX_QUEUED_EVENTS, conn });
  }

  close() {
    this.closedByUs = true;
    this.conn.fail(null);
  }

  /** @internal */
  _event(e: FsEvent) {
    this.queue.push(e);
  }

  /** @internal */
  _end(err: Error | null) {
    this.queue.end(this.closedByUs ? null : err);
  }

  [Symbol.asyncIterator](): AsyncIterator<FsEvent> {
    return this.queue[Symbol.asyncIterator]();
  }
}

/** A file being read: its announced size and its content. */
export interface FileRead {
  size: number;
  stream: Readable;
}
