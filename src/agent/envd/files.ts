// envd's REST file transfer: GET /files (download) and POST /files (multipart or raw upload).
// Bodies are streamed between the HTTP connection and the init; nothing is buffered whole.
import { createGunzip, createGzip } from 'node:zlib';
import { PassThrough, Readable, pipeline, type Transform } from 'node:stream';
import type { IncomingHttpHeaders } from 'node:http';
import busboy from 'busboy';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Entry } from '../../runtime/init/answers.ts';
import { InitError } from '../../runtime/init/errors.ts';
import { expandPath, type EnvdRequestContext } from './context.ts';
import { HttpError, toHttpError } from './errors.ts';

interface FileQuery {
  path?: string;
  username?: string;
}

export interface UploadedFile {
  name: string;
  type: 'file';
  path: string;
}

function query(req: FastifyRequest): FileQuery {
  const q = (req.query ?? {}) as Record<string, unknown>;
  const s = (v: unknown) => (typeof v === 'string' ? v : Array.isArray(v) && typeof v[0] === 'string' ? v[0] : undefined);
  return { path: s(q.path), username: s(q.username) };
}

/**
 * `username` query first, then Basic auth, then the default user (envd >= 0.4.0): the request
 * context's user is already Basic auth's, else the template's (an imported image's), else `user`.
 */
function fileUser(rc: EnvdRequestContext, q: FileQuery): string {
  return q.username || rc.user;
}

export function sendHttpError(reply: FastifyReply, e: unknown) {
  const { status, message } = toHttpError(e);
  if (status >= 500 && !(e instanceof InitError) && !(e instanceof HttpError)) reply.log.error(e);
  return reply.code(status).header('content-type', 'application/json').send({ code: status, message });
}

const acceptsGzip = (h: IncomingHttpHeaders) =>
  String(h['accept-encoding'] ?? '')
    .split(',')
    .some((part) => {
      const [coding, ...params] = part.trim().toLowerCase().split(';');
      return coding === 'gzip' && !params.some((p) => /^\s*q=0(\.0*)?\s*$/.test(p));
    });

export async function getFile(req: FastifyRequest, reply: FastifyReply, rc: EnvdRequestContext) {
  const q = query(req);
  if (!q.path) return sendHttpError(reply, new HttpError(400, 'path is required'));
  let file;
  try {
    file = await rc.init.readFile(expandPath(q.path), fileUser(rc, q));
  } catch (e) {
    return sendHttpError(reply, e);
  }
  reply.header('content-type', 'application/octet-stream');
  reply.header('vary', 'Accept-Encoding');
  if (file.size > 0 && acceptsGzip(req.headers)) {
    reply.header('content-encoding', 'gzip');
    const gz = createGzip({ level: 1 }); // fetch clients ask for gzip by default: favour speed
    pipeline(file.stream, gz, () => undefined);
    return reply.send(gz);
  }
  reply.header('content-length', String(file.size));
  return reply.send(file.stream);
}

/**
 * The request body (decompressed when it came with `Content-Encoding: gzip`), as a stream of its
 * own: whoever consumes it may destroy it without destroying the request, so that an error can
 * still be answered on the connection (the rest of the body is then drained).
 */
function requestBody(req: FastifyRequest): Readable {
  const raw = req.body instanceof Readable ? req.body : req.raw;
  const enc = String(req.headers['content-encoding'] ?? '').trim().toLowerCase();
  if (enc && enc !== 'identity' && enc !== 'gzip') throw new HttpError(400, `unsupported Content-Encoding ${enc}; only gzip is accepted`);
  return detachable(raw, enc === 'gzip' ? createGunzip() : new PassThrough());
}

/** `src` piped into `out`; `out` fails when `src` ends early (client gone). */
function detachable(src: Readable, out: Transform | PassThrough): Readable {
  const early = () => {
    if (!src.readableEnded) out.destroy(new HttpError(400, 'upload aborted by the client'));
  };
  src.once('error', early);
  src.once('close', early);
  src.once('aborted', early);
  out.once('close', () => {
    // the consumer is done (or failed): keep reading what the client still sends
    src.unpipe(out);
    if (!src.readableEnded) src.resume();
  });
  src.pipe(out);
  return out;
}

// `X-Metadata-<key>` headers: envd stores them as user xattrs of the written files. The init
// has no xattr operation (and the agent must not touch the sandbox's files from the host), so
// Nestbox accepts them and does not store them; EntryInfo.metadata stays empty.

const uploaded = (e: Entry): UploadedFile => ({ name: e.name, type: 'file', path: e.path });

export async function postFile(req: FastifyRequest, reply: FastifyReply, rc: EnvdRequestContext) {
  const q = query(req);
  const user = fileUser(rc, q);
  const mediaType = String(req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  try {
    let files: UploadedFile[];
    if (mediaType === 'application/octet-stream') {
      if (!q.path) throw new HttpError(400, 'path query parameter is required for raw body upload');
      const entry = await rc.init.writeFile(expandPath(q.path), requestBody(req), { user });
      files = [uploaded(entry)];
    } else if (mediaType.startsWith('multipart/')) {
      files = await multipartUpload(req, rc, user, q.path);
    } else {
      throw new HttpError(400, `unsupported content type: ${mediaType || '(none)'}, expected multipart/form-data or application/octet-stream`);
    }
    return reply.code(200).header('content-type', 'application/json').send(files);
  } catch (e) {
    if (!req.raw.complete) {
      req.raw.unpipe();
      req.raw.resume(); // drain the rest of the upload so that the answer can be read
    }
    return sendHttpError(reply, e);
  }
}

/**
 * Each part named `file` is written to `path` (when given) or to the part's filename (the
 * SDK puts the destination path there). Parts are streamed to the init one after another.
 */
function multipartUpload(req: FastifyRequest, rc: EnvdRequestContext, user: string, pathParam: string | undefined): Promise<UploadedFile[]> {
  return new Promise((resolve, reject) => {
    let body: Readable;
    let bb: busboy.Busboy;
    try {
      body = requestBody(req);
      bb = busboy({ headers: req.headers, preservePath: true });
    } catch (e) {
      return reject(e instanceof HttpError ? e : new HttpError(400, `invalid multipart request: ${(e as Error).message}`));
    }
    const results: (UploadedFile | undefined)[] = [];
    const writes: Promise<void>[] = [];
    const targets = new Set<string>();
    const open = new Set<Readable>();
    let failure: unknown = null;
    let parsed = false;
    const fail = (e: unknown) => {
      failure ??= e;
    };

    bb.on('file', (field, stream, info) => {
      if (field !== 'file' || failure) {
        stream.resume();
        return;
      }
      const dest = pathParam || info.filename;
      if (!dest) {
        fail(new HttpError(400, 'a file part needs a filename or the path query parameter'));
        stream.resume();
        return;
      }
      const target = expandPath(dest);
      if (targets.has(target)) {
        fail(new HttpError(400, `you cannot upload multiple files to the same path '${dest}' in one upload request`));
        stream.resume();
        return;
      }
      targets.add(target);
      const index = results.length;
      results.push(undefined);
      // The init client may stop reading (and destroy its source) on an error; busboy must
      // still be able to finish parsing so that the answer can be sent.
      const source = detachable(stream, new PassThrough());
      open.add(source);
      source.once('close', () => open.delete(source));
      writes.push(
        rc.init.writeFile(target, source, { user }).then(
          (entry) => {
            results[index] = uploaded(entry);
          },
          (e: unknown) => fail(e),
        ),
      );
    });
    bb.on('error', (e: unknown) => {
      fail(new HttpError(400, `invalid multipart body: ${(e as Error).message}`));
      for (const s of open) s.destroy(e as Error);
      finish();
    });
    bb.on('close', () => finish());
    // A client that goes away mid-upload: fail the parts still being written (the init then
    // discards their temporary files) instead of waiting for bytes that never come.
    req.raw.once('close', () => {
      if (parsed || req.raw.complete) return;
      const err = new HttpError(400, 'upload aborted by the client');
      for (const s of open) s.destroy(err);
      fail(err);
      finish();
    });

    let finished = false;
    function finish() {
      if (finished) return;
      finished = true;
      parsed = true;
      void Promise.allSettled(writes).then(() => {
        if (failure) return reject(failure);
        const files = results.filter((r): r is UploadedFile => r !== undefined);
        resolve(files);
      });
    }
    body.on('error', (e) => bb.destroy(e));
    body.pipe(bb);
  });
}
