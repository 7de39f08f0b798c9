// Streaming HTTP and WebSocket-upgrade forwarding over Node's http, shared by the control
// plane's sandbox proxy and the node agent's port forwarding. Bodies stream both ways without
// buffering, response headers are sent as soon as the upstream answers, a client that goes
// away aborts the upstream request, and only the connection attempt has a timeout (streams
// may stay open as long as both ends want).
import http, { type ClientRequest, type IncomingHttpHeaders, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import { pipeline, type Duplex } from 'node:stream';

// Hop-by-hop headers (RFC 9110 7.6.1) and those the forwarder sets itself.
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer',
  'transfer-encoding', 'upgrade', 'expect', 'host', 'http2-settings',
]);

/** The request's end-to-end headers (hop-by-hop ones and any the Connection header lists removed). */
export function endToEndHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const listed = new Set(
    String(headers.connection ?? '').split(',').map((s) => s.trim().toLowerCase()).filter(Boolean),
  );
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined || HOP_BY_HOP.has(k) || listed.has(k)) continue;
    out[k] = v;
  }
  return out;
}

/** Appends the forwarding headers (X-Forwarded-For/-Host/-Proto) of one hop. */
export function addForwardedHeaders(out: OutgoingHttpHeaders, req: IncomingMessage): void {
  const prior = req.headers['x-forwarded-for'];
  const remote = req.socket.remoteAddress ?? '';
  out['x-forwarded-for'] = prior ? `${Array.isArray(prior) ? prior.join(', ') : prior}, ${remote}` : remote;
  if (req.headers.host && !req.headers['x-forwarded-host']) out['x-forwarded-host'] = req.headers.host;
  if (!req.headers['x-forwarded-proto']) out['x-forwarded-proto'] = 'http';
}

export class ConnectTimeoutError extends Error {
  readonly code = 'ECONNTIMEOUT';
}

export interface ForwardOptions {
  /** http://host:port of the upstream. */
  origin: string;
  /** Path and query to request upstream, sent as is (no normalisation). */
  path: string;
  headers: OutgoingHttpHeaders;
  /** Connection pool for plain requests; upgrades always use their own connection. */
  agent?: http.Agent | false;
  connectTimeoutMs: number;
  /** Called with each upstream socket (the caller may track and cut them). */
  onSocket?: (socket: Socket) => void;
  /**
   * The upstream failed before it answered: send the client an error (for upgrades, write it
   * to the socket with writeRawResponse).
   */
  onError: (err: Error) => void;
  /** The request's body, read beforehand: sent instead of streaming the request. */
  body?: Buffer;
  /**
   * Sees the upstream's answer before the client does: true keeps it from the client (it is
   * discarded, and the caller answers or sends the request elsewhere).
   */
  intercept?: (up: IncomingMessage) => boolean;
}

function requestUpstream(o: ForwardOptions, method: string, headers: OutgoingHttpHeaders, agent: http.Agent | false | undefined): ClientRequest {
  const u = new URL(o.origin);
  const mod = u.protocol === 'https:' ? https : http;
  const upstream = mod.request({
    protocol: u.protocol,
    hostname: u.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: u.port || (u.protocol === 'https:' ? 443 : 80),
    method,
    path: o.path,
    headers,
    agent,
  });
  upstream.on('socket', (s) => {
    const socket = s as Socket;
    socket.setNoDelay(true);
    o.onSocket?.(socket);
    if (!socket.connecting) return; // a kept-alive connection
    const timer = setTimeout(
      () => upstream.destroy(new ConnectTimeoutError(`no connection to ${o.origin} within ${o.connectTimeoutMs} ms`)),
      o.connectTimeoutMs,
    );
    const clear = () => clearTimeout(timer);
    socket.once('connect', clear);
    socket.once('close', clear);
  });
  return upstream;
}

function responseHeaders(up: IncomingMessage): OutgoingHttpHeaders {
  const listed = new Set(String(up.headers.connection ?? '').split(',').map((s) => s.trim().toLowerCase()).filter(Boolean));
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(up.headers)) {
    if (v === undefined || listed.has(k) || (HOP_BY_HOP.has(k) && k !== 'host')) continue;
    out[k] = v;
  }
  return out;
}

/** Forwards one HTTP request and streams its response back. */
export function forwardHttp(req: IncomingMessage, res: ServerResponse, o: ForwardOptions): void {
  const headers = { ...o.headers };
  // A body of unknown length stays chunked whatever the method (Node picks by method otherwise).
  if (o.body) {
    if (o.body.length || req.headers['content-length'] !== undefined) headers['content-length'] = String(o.body.length);
  } else if (req.headers['transfer-encoding'] && req.headers['content-length'] === undefined) headers['transfer-encoding'] = 'chunked';
  const upstream = requestUpstream(o, req.method ?? 'GET', headers, o.agent);
  let answered = false;
  let intercepted = false;
  upstream.on('response', (up) => {
    answered = true;
    if (o.intercept?.(up)) {
      // The caller answers (or sends the request again): nothing of this exchange may touch the client's response.
      intercepted = true;
      up.resume();
      return;
    }
    if (res.destroyed) {
      up.destroy();
      return;
    }
    res.writeHead(up.statusCode ?? 502, up.statusMessage, responseHeaders(up));
    // Headers go out now, not with the first body chunk: a stream may be slow to start.
    res.flushHeaders();
    pipeline(up, res, () => {
      /* a failure on either side destroys both; nothing to answer any more */
    });
  });
  upstream.on('error', (err) => {
    if (intercepted) return;
    if (!answered && !res.headersSent && !res.destroyed) o.onError(err);
    else res.destroy();
  });
  // The client went away before the response was complete: abort the upstream request.
  res.on('close', () => {
    if (!res.writableFinished) upstream.destroy();
  });
  req.on('error', () => upstream.destroy());
  upstream.flushHeaders();
  if (o.body) upstream.end(o.body);
  else req.pipe(upstream);
}

/**
 * The request's whole body when it is small enough to keep (at most `limit` bytes, its length
 * given); undefined for a larger or chunked body, which is streamed. Rejects when the client
 * goes away meanwhile.
 */
export async function readSmallBody(req: IncomingMessage, limit: number): Promise<Buffer | undefined> {
  const declared = req.headers['content-length'];
  if (declared === undefined) return req.headers['transfer-encoding'] === undefined ? Buffer.alloc(0) : undefined;
  const length = Number(declared);
  if (!Number.isSafeInteger(length) || length > limit) return undefined;
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Writes a complete HTTP/1.1 response on a raw socket and closes it (upgrade failures). */
export function writeRawResponse(socket: Duplex, status: number, headers: Record<string, string>, body: string | Buffer = ''): void {
  if (socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  const buf = typeof body === 'string' ? Buffer.from(body) : body;
  const lines = [`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}`];
  for (const [k, v] of Object.entries({ ...headers, 'content-length': String(buf.length), connection: 'close' })) lines.push(`${k}: ${v}`);
  socket.end(Buffer.concat([Buffer.from(lines.join('\r\n') + '\r\n\r\n'), buf]));
}

function headBlock(up: IncomingMessage, drop: Set<string>): Buffer {
  const lines = [`HTTP/1.1 ${up.statusCode} ${up.statusMessage ?? ''}`];
  for (let i = 0; i + 1 < up.rawHeaders.length; i += 2) {
    if (drop.has(up.rawHeaders[i]!.toLowerCase())) continue;
    lines.push(`${up.rawHeaders[i]}: ${up.rawHeaders[i + 1]}`);
  }
  return Buffer.from(lines.join('\r\n') + '\r\n\r\n');
}

/**
 * Forwards an upgrade request (WebSocket); on 101 the two sockets are spliced together until
 * either side closes. An upstream that declines the upgrade has its response relayed.
 * Returns the upstream request.
 */
export function forwardUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, o: ForwardOptions): ClientRequest {
  const headers: OutgoingHttpHeaders = { ...o.headers, connection: 'Upgrade', upgrade: req.headers.upgrade ?? 'websocket' };
  const upstream = requestUpstream(o, req.method ?? 'GET', headers, false);
  let settled = false;
  const onClientGone = () => upstream.destroy();
  socket.once('close', onClientGone);
  socket.on('error', onClientGone);

  upstream.on('upgrade', (up, upSocket, upHead) => {
    settled = true;
    socket.off('close', onClientGone);
    const cut = () => {
      socket.destroy();
      upSocket.destroy();
    };
    if (socket.destroyed) {
      upSocket.destroy();
      return;
    }
    upSocket.setNoDelay(true);
    (socket as Partial<Socket>).setNoDelay?.(true);
    socket.write(headBlock(up, new Set()));
    if (upHead.length) socket.write(upHead);
    if (head.length) upSocket.write(head);
    upSocket.on('error', cut);
    socket.on('error', cut);
    upSocket.on('close', cut);
    socket.on('close', cut);
    upSocket.pipe(socket);
    socket.pipe(upSocket);
  });

  upstream.on('response', (up) => {
    // The upstream answered without upgrading: relay that answer and close.
    settled = true;
    if (socket.destroyed) {
      up.destroy();
      return;
    }
    socket.write(headBlock(up, new Set(['transfer-encoding', 'content-length', 'connection', 'keep-alive'])).subarray(0, -2));
    socket.write('connection: close\r\n\r\n');
    up.pipe(socket);
    up.on('error', () => socket.destroy());
  });

  upstream.on('error', (err) => {
    if (!settled) {
      settled = true;
      o.onError(err);
    } else socket.destroy();
  });
  upstream.end();
  return upstream;
}
