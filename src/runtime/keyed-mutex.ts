/**
 * Serialises async work per key: the node never runs two runtime operations on one sandbox at
 * once (a pause racing a kill would leave half a checkpoint behind). It also remembers the
 * order in which work finished, so a reader can tell which keys changed while it looked.
 */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<unknown>>();
  private finishedCount = 0;
  private readonly finished = new Map<string, number>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const result = previous.catch(() => undefined).then(fn);
    const tail = result.catch(() => undefined);
    this.tails.set(key, tail);
    try {
      return await result;
    } finally {
      if (this.tails.get(key) === tail) this.tails.delete(key);
      this.markFinished(key);
    }
  }

  private markFinished(key: string) {
    this.finished.delete(key);
    this.finished.set(key, ++this.finishedCount);
    // Bounded: only recent completions matter to a reader.
    if (this.finished.size > 4096) this.finished.delete(this.finished.keys().next().value!);
  }

  isBusy(key: string): boolean {
    return this.tails.has(key);
  }

  /** The keys with work queued or running. */
  busyKeys(): string[] {
    return [...this.tails.keys()];
  }

  /** Resolves once no key has work queued or running (work queued meanwhile included). */
  async idle(): Promise<void> {
    while (this.tails.size) await Promise.all(this.tails.values());
  }

  /** A mark to pass to changedSince(). */
  mark(): number {
    return this.finishedCount;
  }

  /** Keys whose work finished after `mark` was taken. */
  changedSince(mark: number): string[] {
    const out: string[] = [];
    for (const [key, n] of this.finished) if (n > mark) out.push(key);
    return out;
  }
}
