import { isSandboxId } from '../../core/ids.ts';
import { invalid } from '../../core/errors.ts';
import { sandboxNotFound } from './errors.ts';
import type { PublicState } from './views.ts';

/**
 * Parses E2B's `metadata` list filter. The SDK URI-encodes each key and value, joins the pairs
 * with URLSearchParams (which percent-encodes again) and sends that as one query value, which
 * the query-string parser has decoded once already. So: parse as URLSearchParams (second
 * decoding of the pair syntax), then decodeURIComponent each key and value (the SDK's own).
 * A plain `metadata=user%3Dabc` from curl arrives as "user=abc" and parses the same way.
 */
export function parseMetadataFilter(raw: string | undefined): Record<string, string> | undefined {
  if (raw === undefined || raw === '') return undefined;
  const out: Record<string, string> = {};
  for (const [k, v] of new URLSearchParams(raw)) {
    let key: string;
    let value: string;
    try {
      key = decodeURIComponent(k);
      value = decodeURIComponent(v);
    } catch {
      throw invalid('metadata filter: malformed percent-encoding');
    }
    if (key === '') throw invalid('metadata filter: empty key');
    out[key] = value;
  }
  return Object.keys(out).length > 0 ? out : undefined;
}

/** `state=running,paused` or `state=running&state=paused` (the schema has checked each value). */
export function parseStates(raw: readonly string[] | undefined): PublicState[] | undefined {
  if (raw === undefined || raw.length === 0) return undefined;
  const out = new Set<PublicState>();
  for (const part of raw.flatMap((s) => s.split(','))) out.add(part as PublicState);
  return [...out];
}

/**
 * Normalises a sandbox id from a path. Older SDKs append the client id ("<id>-6532622b");
 * E2B strips it, and so do we. A malformed id names no sandbox: 404, as for an unknown one.
 */
export function sandboxIdFrom(raw: string): string {
  const m = WITH_CLIENT_ID.exec(raw);
  const id = m?.[1] ?? '';
  if (!isSandboxId(id)) throw sandboxNotFound(raw);
  return id;
}

const WITH_CLIENT_ID = /^([^-]*)(?:-[a-z0-9]{1,32})?$/;

/** order, startedAfter and template of E2B's list, as the lifecycle takes them (the schema has checked each). */
export function listFilters(q: { order?: 'asc' | 'desc'; startedAfter?: string; template?: string }) {
  return {
    order: q.order ?? 'desc',
    ...(q.startedAfter !== undefined ? { startedAfter: new Date(q.startedAfter) } : {}),
    ...(q.template !== undefined ? { template: q.template } : {}),
  } as const;
}
