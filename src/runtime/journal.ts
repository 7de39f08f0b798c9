import { appendFile, readFile } from 'node:fs/promises';

/** When a sandbox's container started or stopped on this node, as the node itself saw it. */
export interface JournalEntry {
  sandboxId: string;
  event: 'start' | 'stop';
  at: string; // ISO time
  /** What started or stopped it: create, resume, pause, kill, or found_dead (it died unseen). */
  cause: string;
}

/**
 * The node's own record of running time: one JSON line per container start and stop, appended
 * to a file in the data directory. It is the node's side of the usage ledger, for audits (the
 * chaos check compares billed time against it) and survives agent restarts.
 */
export class NodeJournal {
  /** The last entry of each sandbox (read from the file once, then kept up to date). */
  private last: Promise<Map<string, JournalEntry>> | null = null;

  constructor(readonly file: string) {}

  async append(e: JournalEntry): Promise<void> {
    const last = await this.lastEntries();
    await appendFile(this.file, JSON.stringify(e) + '\n', { mode: 0o600 });
    last.set(e.sandboxId, e);
  }

  /** The sandbox stopped computing: its container died or was killed, or it was frozen for a dump. */
  async stopped(sandboxId: string, cause: string, at: Date): Promise<void> {
    await this.append({ sandboxId, event: 'stop', at: at.toISOString(), cause });
  }

  /** The sandbox kept running after a stop was journaled: a start at the same instant cancels it. */
  async cancelStop(sandboxId: string): Promise<void> {
    const last = (await this.lastEntries()).get(sandboxId);
    if (last?.event === 'stop') await this.append({ sandboxId, event: 'start', at: last.at, cause: 'pause_failed' });
  }

  /**
   * When the sandbox's container last stopped on this node, if its last entry is a stop: what a
   * control plane asks when the answer of the call that stopped it was lost.
   */
  async lastStop(sandboxId: string): Promise<string | null> {
    const e = (await this.lastEntries()).get(sandboxId);
    return e?.event === 'stop' ? e.at : null;
  }

  /** When the sandbox's container last started on this node, if its last entry is a start. */
  async lastStart(sandboxId: string): Promise<string | null> {
    const e = (await this.lastEntries()).get(sandboxId);
    return e?.event === 'start' ? e.at : null;
  }

  private lastEntries(): Promise<Map<string, JournalEntry>> {
    this.last ??= this.read().then((all) => new Map(all.map((e) => [e.sandboxId, e])));
    return this.last;
  }

  async read(): Promise<JournalEntry[]> {
    const text = await readFile(this.file, 'utf8').catch(() => '');
    const out: JournalEntry[] = [];
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      try {
        out.push(JSON.parse(line) as JournalEntry);
      } catch {
        /* a line cut short by a crash */
      }
    }
    return out;
  }
}
