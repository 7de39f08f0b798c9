// Interleaves keep-alive messages into a server stream that has been idle for `intervalMs`
// (envd's `keepalive` events; the SDK asks for them with Keepalive-Ping-Interval). Values are
// pulled from the source only when the consumer asks for more, so backpressure is kept.

export async function* withKeepalive<T, K>(source: AsyncIterable<T>, intervalMs: number, keepalive: () => K): AsyncGenerator<T | K> {
  const it = source[Symbol.asyncIterator]();
  let pending: Promise<IteratorResult<T>> | null = null;
  for (;;) {
    pending ??= it.next();
    let timer: NodeJS.Timeout | undefined;
    const tick = new Promise<'tick'>((resolve) => {
      timer = setTimeout(() => resolve('tick'), intervalMs);
    });
    let r: IteratorResult<T> | 'tick';
    try {
      r = await Promise.race([pending, tick]);
    } finally {
      clearTimeout(timer);
    }
    if (r === 'tick') {
      yield keepalive();
      continue;
    }
    pending = null;
    if (r.done) return;
    yield r.value;
  }
}
