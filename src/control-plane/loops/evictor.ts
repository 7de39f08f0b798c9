import type { Database } from '../../store/database.ts';
import { getSandbox, listExpired, type SandboxRow } from '../../store/sandboxes.ts';
import { StaleWrite, type SandboxTransitions } from '../transitions.ts';

/**
 * The evictor: sandboxes whose end has passed are paused (when they asked for it) or killed.
 * Each eviction is a compare-and-set on the row as read, so a timeout extended in the
 * meantime wins; a failed pause falls back to a kill with reason pause_failed.
 */
export class Evictor {
  constructor(
    private readonly db: Database,
    private readonly lifecycle: SandboxTransitions,
    private readonly batch = 256,
  ) {}

  /** One pass; returns how many sandboxes it evicted. */
  async tick(): Promise<number> {
    const expired = await listExpired(this.db, this.lifecycle.clock.now(), this.batch);
    const results = await Promise.allSettled(expired.map((row) => this.evict(row)));
    return results.filter((r) => r.status === 'fulfilled' && r.value).length;
  }

  private async evict(row: SandboxRow): Promise<boolean> {
    try {
      if (!row.autoPause) {
        await this.lifecycle.killFrom(row, 'timeout');
        return true;
      }
      try {
        await this.lifecycle.pauseFrom(row, 'timeout', { memory: row.autoPauseMemory });
        return true;
      } catch (e) {
        if (e instanceof StaleWrite) throw e;
        // The pause failed; if the sandbox went back to running, it ends by a kill.
        const after = await getSandbox(this.db, row.sandboxId);
        if (after?.state === 'running') await this.lifecycle.killFrom(after, 'pause_failed');
        return true;
      }
    } catch (e) {
      if (e instanceof StaleWrite) return false; // someone else acted first; re-read next tick
      throw e;
    }
  }
}
