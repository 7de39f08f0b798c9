// The CLI's HTTP requests (the API and envd), through node:http, or node:https for an https URL.
// Not fetch: Node compiles its fetch (undici) on first use, ~100 ms of a CLI call on a 2-core
// host, more than the rest of `nestbox sandbox list` together.
import type { IncomingMessage } from 'node:http';

export async function httpRequest(
  url: URL, o: { method: string; headers: Record<string, string>; body?: Buffer | string },
): Promise<IncomingMessage> {
  const { request } = url.protocol === 'https:' ? await import('node:https') : await import('node:http');
  const body = o.body === undefined ? undefined : Buffer.from(o.body);
  const headers = body === undefined ? o.headers : { ...o.headers, 'Content-Length': String(body.length) };
  return new Promise((resolve, reject) => {
    const req = request(url, { method: o.method, headers }, resolve);
    req.on('error', reject);
    req.end(body);
  });
}

/** The whole body of an answer. */
export async function readBody(res: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}
