import type { FsEvent } from '../../runtime/init/answers.ts';
import type { WatchHandle } from '../../runtime/init/streams.ts';

/**
 * The init writes a file to a hidden temporary name (`.NAME.nestbox-PID-N`) and renames it into
 * place. A watcher would see that as events on a name nobody wrote plus a rename; E2B clients
 * expect a write of NAME. So temporary names are hidden and the rename that lands one is
 * reported as a write of the target.
 */
const TEMP = /^(.*\/)?\.(.+)\.nestbox-\d+-\d+$/;

export type FsEventSource = Pick<WatchHandle, 'close'> & AsyncIterable<FsEvent>;

export function hideAtomicWrites(handle: WatchHandle): FsEventSource {
  return {
    close: () => handle.close(),
    async *[Symbol.asyncIterator]() {
      const landing = new Set<string>();
      for await (const ev of handle) {
        const temp = TEMP.exec(ev.name);
        if (temp) {
          if (ev.op === 'rename') landing.add(`${temp[1] ?? ''}${temp[2]}`);
          continue;
        }
        if (ev.op === 'rename' && landing.delete(ev.name)) {
          yield { ...ev, op: 'write' };
          continue;
        }
        yield ev;
      }
    },
  };
}
