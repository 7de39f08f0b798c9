export function percentile(samples: number[], p: number): number {
  if (!samples.length) return NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx]!;
}

export async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t0 = performance.now();
  const v = await fn();
  return [performance.now() - t0, v];
}

export interface Row {
  name: string;
  p50_ms: number;
  p99_ms: number;
  limit_p50_ms: number | null;
  limit_name?: string;
  n: number;
}

export function row(name: string, samples: number[], limit: number[] | null, limitName?: string): Row {
  return {
    name,
    p50_ms: round(percentile(samples, 50)),
    p99_ms: round(percentile(samples, 99)),
    limit_p50_ms: limit ? round(percentile(limit, 50)) : null,
    limit_name: limitName,
    n: samples.length,
  };
}

const round = (x: number) => Math.round(x * 100) / 100;

export function printTable(rows: Row[]) {
  const header = ['benchmark', 'n', 'p50 ms', 'p99 ms', 'limit p50 ms', 'ratio', 'limit measured'];
  const lines = rows.map((r) => [
    r.name, String(r.n), r.p50_ms.toFixed(2), r.p99_ms.toFixed(2),
    r.limit_p50_ms === null ? '-' : r.limit_p50_ms.toFixed(2),
    r.limit_p50_ms ? (r.p50_ms / r.limit_p50_ms).toFixed(2) + 'x' : '-',
    r.limit_name ?? '',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i === 0 || i === 6 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  console.log(fmt(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const l of lines) console.log(fmt(l));
}
