/**
 * Checks `ready` until it holds or `timeoutMs` passed, waiting a little longer after each miss
 * (from `firstDelayMs`, doubling, up to `maxDelayMs`); whether it held.
 */
export async function waitUntil(ready: () => Promise<boolean>, o: { timeoutMs: number; maxDelayMs: number; firstDelayMs?: number }): Promise<boolean> {
  const deadline = Date.now() + o.timeoutMs;
  for (let delay = o.firstDelayMs ?? 1; ; delay = Math.min(delay * 2, o.maxDelayMs)) {
    if (await ready()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, delay));
  }
}

/**
 * Runs `op`, and again after each of `delaysMs` while it fails (a store away for a few seconds
 * is ridden out); the last failure is thrown.
 */
export async function retried<T>(op: () => Promise<T>, delaysMs: readonly number[] = [1000, 3000]): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await op();
    } catch (e) {
      if (attempt >= delaysMs.length) throw e;
      await new Promise((r) => setTimeout(r, delaysMs[attempt]));
    }
  }
}
