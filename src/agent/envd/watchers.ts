// Non-streaming watchers (CreateWatcher / GetWatcherEvents / RemoveWatcher): each holds an
// init watch open and buffers its events until polled. Kept in memory per sandbox, capped.
import { randomUUID } from 'node:crypto';
import { Code, ConnectError } from '@connectrpc/connect';
import type { FsEvent } from '../../runtime/init/answers.ts';
import type { InitClient } from '../../runtime/init/client.ts';
import type { FsEventSource } from './atomic-writes.ts';

export const MAX_WATCHERS_PER_SANDBOX = 64;
export const MAX_BUFFERED_EVENTS = 10_000;
/** A watcher nobody polled for this long is removed (the client went away). */
export const IDLE_WATCHER_MS = 10 * 60_000;


export class PolledWatcher {
  readonly id = randomUUID();
  events: FsEvent[] = [];
  dropped = 0;
  ended = false;
  error: Error | null = null;
  lastPolled = Date.now();

  constructor(
    readonly sandboxId: string,
    readonly path: string,
    readonly user: string,
    readonly includeEntry: boolean,
    readonly init: InitClient,
    private readonly handle: FsEventSource,
  ) {
    void this.pump();
  }

  private async pump() {
    try {
      for await (const ev of this.handle) {
        if (this.events.length >= MAX_BUFFERED_EVENTS) {
          this.events.shift();
          this.dropped++;
        }
        this.events.push(ev);
      }
    } catch (e) {
      this.error = e instanceof Error ? e : new Error(String(e));
    }
    this.ended = true;
  }

  /** Takes the buffered events. */
  takeEvents(): FsEvent[] {
    this.lastPolled = Date.now();
    const out = this.events;
    this.events = [];
    return out;
  }

  close() {
    this.handle.close();
  }
}

export class WatcherRegistry {
  private readonly bySandbox = new Map<string, Map<string, PolledWatcher>>();
  private readonly sweeper: NodeJS.Timeout;

  constructor() {
    this.sweeper = setInterval(() => this.sweep(), 60_000);
    this.sweeper.unref();
  }

  add(w: PolledWatcher) {
    let m = this.bySandbox.get(w.sandboxId);
    if (!m) {
      m = new Map();
      this.bySandbox.set(w.sandboxId, m);
    }
    m.set(w.id, w);
  }

  /** Throws resource_exhausted when the sandbox already has the maximum of watchers. */
  checkCapacity(sandboxId: string) {
    this.sweep();
    if ((this.bySandbox.get(sandboxId)?.size ?? 0) >= MAX_WATCHERS_PER_SANDBOX) {
      throw new ConnectError(`at most ${MAX_WATCHERS_PER_SANDBOX} watchers per sandbox; remove some first`, Code.ResourceExhausted);
    }
  }

  get(sandboxId: string, id: string): PolledWatcher {
    const w = this.bySandbox.get(sandboxId)?.get(id);
    if (!w) throw new ConnectError(`watcher ${id} not found`, Code.NotFound);
    return w;
  }

  remove(sandboxId: string, id: string) {
    const w = this.get(sandboxId, id);
    w.close();
    this.bySandbox.get(sandboxId)?.delete(id);
  }

  count(sandboxId: string) {
    return this.bySandbox.get(sandboxId)?.size ?? 0;
  }

  private sweep() {
    const now = Date.now();
    for (const [sid, m] of this.bySandbox) {
      for (const [id, w] of m) {
        if (now - w.lastPolled > IDLE_WATCHER_MS) {
          w.close();
          m.delete(id);
        }
      }
      if (m.size === 0) this.bySandbox.delete(sid);
    }
  }

  closeAll() {
    clearInterval(this.sweeper);
    for (const m of this.bySandbox.values()) for (const w of m.values()) w.close();
    this.bySandbox.clear();
  }
}
