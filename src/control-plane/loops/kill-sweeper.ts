import type { Database } from '../../store/database.ts';
import { getSandbox, listStuckKilling } from '../../store/sandboxes.ts';
import type { SandboxTransitions } from '../transitions.ts';

/**
 * Kill intent is stored (`killing`) before the node is called; this loop re-issues the call for
 * sandboxes that stayed in `killing` (node unreachable, control plane restarted), in bounded
 * batches, until the node confirms.
 */
export class KillSweeper {
  constructor(
    private readonly db: Database,
    private readonly lifecycle: SandboxTransitions,
    private readonly graceMs = 5_000,
    private readonly batch = 64,
  ) {}

  async tick(): Promise<number> {
    const before = new Date(this.lifecycle.clock.now().getTime() - this.graceMs);
    let done = 0;
    for (const id of await listStuckKilling(this.db, before, this.batch)) {
      const row = await getSandbox(this.db, id);
      if (row?.state !== 'killing') continue;
      try {
        await this.lifecycle.finishKill(row, row.lastReason as never, { anyNode: true });
        done++;
      } catch {
        /* still unreachable: next tick */
      }
    }
    return done;
  }
}
