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
