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
  constructor(readonly file: string) {}

  async append(e: JournalEntry): Promise<void> {
    await appendFile(this.file, JSON.stringify(e) + '\n', { mode: 0o600 });
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
