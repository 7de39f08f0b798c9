// filesystem.Filesystem over the sandbox init (stat, list_dir, mkdir, move, remove, watch).
import path from 'node:path/posix';
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import type { Entry, FsEvent } from '../../runtime/init/answers.ts';
import type { InitClient } from '../../runtime/init/client.ts';
import { InitError } from '../../runtime/init/errors.ts';
import type { WatchHandle } from '../../runtime/init/streams.ts';
import { expandPath, keepaliveIntervalMs } from './context.ts';
import { isUnknownUser, toConnectError } from './errors.ts';
import { withResolvedTarget } from './symlinks.ts';
import { withKeepalive } from './keepalive.ts';
import { requestContext } from './process-service.ts';
import { PolledWatcher, type WatcherRegistry } from './watchers.ts';
import { hideAtomicWrites, type FsEventSource } from './atomic-writes.ts';
import {
  EventType, FileType, Filesystem, type EntryInfoSchema, type FilesystemEventSchema,
} from './gen/filesystem/filesystem_pb.ts';

type EntryInit = MessageInitShape<typeof EntryInfoSchema>;
type EventInit = MessageInitShape<typeof FilesystemEventSchema>;

const FILE_TYPES: Record<Entry['type'], FileType> = {
  file: FileType.FILE,
  dir: FileType.DIRECTORY,
  symlink: FileType.SYMLINK,
  other: FileType.UNSPECIFIED,
};

const EVENT_TYPES: Record<FsEvent['op'], EventType> = {
  create: EventType.CREATE,
  write: EventType.WRITE,
  remove: EventType.REMOVE,
  rename: EventType.RENAME,
  chmod: EventType.CHMOD,
};

export function toEntryInfo(e: Entry): EntryInit {
  return {
    name: e.name,
    type: FILE_TYPES[e.type],
    path: e.path,
    size: BigInt(e.size),
    mode: e.mode,
    permissions: e.permissions,
    owner: e.owner,
    group: e.group,
    modifiedTime: timestampFromMs(e.mtime_ms),
    symlinkTarget: e.symlink_target ?? undefined,
  };
}

/** The event as envd reports it; with include_entry, the entry (when it still exists). */
async function toEvent(init: InitClient, dir: string, user: string, ev: FsEvent, includeEntry: boolean): Promise<EventInit> {
  const out: EventInit = { name: ev.name, type: EVENT_TYPES[ev.op] };
  if (includeEntry && ev.op !== 'remove') {
    out.entry = await init.stat(path.join(dir, ev.name), user).then(toEntryInfo, () => undefined);
  }
  return out;
}

async function call<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw toConnectError(e);
  }
}

function requirePath(p: string, what = 'path'): string {
  if (!p) throw new ConnectError(`${what} is required`, Code.InvalidArgument);
  return expandPath(p);
}

async function openWatch(ctx: HandlerContext, p: string, recursive: boolean): Promise<{ dir: string; handle: FsEventSource }> {
  const rc = requestContext(ctx);
  const dir = requirePath(p);
  return { dir, handle: hideAtomicWrites(await call(() => rc.init.watch(dir, { recursive, user: rc.user }))) };
}

export function filesystemService(watchers: WatcherRegistry): Partial<ServiceImpl<typeof Filesystem>> {
  return {
    async stat(req, ctx) {
      const rc = requestContext(ctx);
      const p = requirePath(req.path);
      const entry = await call(() => rc.init.stat(p, rc.user));
      return { entry: toEntryInfo(await withResolvedTarget(rc.init, rc.user, entry)) };
    },

    async makeDir(req, ctx) {
      const rc = requestContext(ctx);
      const p = requirePath(req.path);
      const created = await call(() => rc.init.mkdir(p, rc.user));
      if (!created) throw new ConnectError(`directory ${req.path} already exists`, Code.AlreadyExists);
      return { entry: toEntryInfo(await call(() => rc.init.stat(p, rc.user))) };
    },

    async move(req, ctx) {
      const rc = requestContext(ctx);
      const from = requirePath(req.source, 'source');
      const to = requirePath(req.destination, 'destination');
      const entry = await call(() => rc.init.move(from, to, rc.user));
      return { entry: toEntryInfo(await withResolvedTarget(rc.init, rc.user, entry)) };
    },

    async listDir(req, ctx) {
      const rc = requestContext(ctx);
      const p = requirePath(req.path);
      const entries = await call(() => rc.init.listDir(p, Math.max(1, req.depth), rc.user));
      const resolved = await Promise.all(entries.map((e) => withResolvedTarget(rc.init, rc.user, e)));
      return { entries: resolved.map(toEntryInfo) };
    },

    async remove(req, ctx) {
      const rc = requestContext(ctx);
      const p = requirePath(req.path);
      try {
        await rc.init.remove(p, rc.user);
      } catch (e) {
        // As envd (os.RemoveAll): a path that is not there is removed already.
        if (e instanceof InitError && e.code === 'not_found' && !isUnknownUser(e)) return {};
        throw toConnectError(e);
      }
      return {};
    },

    async *watchDir(req, ctx) {
      const rc = requestContext(ctx);
      const { dir, handle } = await openWatch(ctx, req.path, req.recursive);
      const close = () => handle.close();
      ctx.signal.addEventListener('abort', close, { once: true });
      try {
        yield { event: { case: 'start', value: {} } };
        const interval = keepaliveIntervalMs(ctx.requestHeader.get('keepalive-ping-interval'));
        for await (const ev of withKeepalive(handle, interval, () => null)) {
          if (ev === null) {
            yield { event: { case: 'keepalive', value: {} } };
            continue;
          }
          yield { event: { case: 'filesystem', value: await toEvent(rc.init, dir, rc.user, ev, req.includeEntry) } };
        }
        if (ctx.signal.aborted) throw toConnectError(ctx.signal.reason);
      } catch (e) {
        if (ctx.signal.aborted) throw toConnectError(ctx.signal.reason);
        throw toConnectError(e);
      } finally {
        ctx.signal.removeEventListener('abort', close);
        handle.close();
      }
    },

    async createWatcher(req, ctx) {
      const rc = requestContext(ctx);
      watchers.checkCapacity(rc.sandboxId);
      const { dir, handle } = await openWatch(ctx, req.path, req.recursive);
      const w = new PolledWatcher(rc.sandboxId, dir, rc.user, req.includeEntry, rc.init, handle);
      watchers.add(w);
      return { watcherId: w.id };
    },

    async getWatcherEvents(req, ctx) {
      const rc = requestContext(ctx);
      const w = watchers.get(rc.sandboxId, req.watcherId);
      const evs = w.takeEvents();
      if (!evs.length && w.ended && w.error) throw toConnectError(w.error);
      const events = await Promise.all(evs.map((ev) => toEvent(w.init, w.path, w.user, ev, w.includeEntry)));
      return { events };
    },

    async removeWatcher(req, ctx) {
      const rc = requestContext(ctx);
      watchers.remove(rc.sandboxId, req.watcherId);
      return {};
    },
  };
}
