// End to end: the envd protocol served by a real node agent for a real sandbox, driven with
// Connect clients built from Nestbox's generated descriptors (JSON and binary), raw Connect
// requests checked byte for byte, and raw fetch for /files.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { Sandbox } from 'e2b';
import { Code, ConnectError, createClient, type Client, type Interceptor } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { Process, Signal, type StreamInputRequestSchema } from '../src/agent/envd/gen/process/process_pb.ts';
import { EventType, FileType, Filesystem } from '../src/agent/envd/gen/filesystem/filesystem_pb.ts';
import { createSandbox, sleep, startTestAgent, type TestAgent } from './helpers/agent-harness.ts';

let a: TestAgent;
let id: string;
let base: string;

before(async () => {
  a = await startTestAgent();
  id = await createSandbox(a, { envVars: { GREETING: 'hello', SHARED: 'sandbox' } });
  base = `${a.url}/v1/sandboxes/${id}/envd`;
});
after(async () => {
  await a?.stop();
});

const basic = (user: string) => `Basic ${Buffer.from(`${user}:`).toString('base64')}`;
/** Headers the control plane's proxy sends: the node token, the client's Authorization beside it. */
const hop = (extra: Record<string, string> = {}) => ({ authorization: `Bearer ${a.agent.nodeToken}`, ...extra });
const asUser = (user: string) => ({ 'x-envd-authorization': basic(user) });

function clients(binary: boolean) {
  const auth: Interceptor = (next) => async (req) => {
    req.header.set('authorization', `Bearer ${a.agent.nodeToken}`);
    return next(req);
  };
  const transport = createConnectTransport({ baseUrl: base, httpVersion: '1.1', useBinaryFormat: binary, interceptors: [auth] });
  return { proc: createClient(Process, transport), fs: createClient(Filesystem, transport) };
}

type ProcClient = Client<typeof Process>;
type FsClient = Client<typeof Filesystem>;

interface Run {
  pid: number;
  stdout: string;
  stderr: string;
  pty: string;
  events: string[];
  end?: { exitCode: number; exited: boolean; status: string; error?: string };
}

async function collect(events: AsyncIterable<{ event?: { event: { case: string | undefined; value?: any } } }>): Promise<Run> {
  const r: Run = { pid: 0, stdout: '', stderr: '', pty: '', events: [] };
  for await (const m of events) {
    const e = m.event!.event;
    r.events.push(e.case!);
    if (e.case === 'start') r.pid = e.value.pid;
    else if (e.case === 'data') (r as any)[e.value.output.case] += Buffer.from(e.value.output.value).toString();
    else if (e.case === 'end') r.end = { exitCode: e.value.exitCode, exited: e.value.exited, status: e.value.status, error: e.value.error };
  }
  return r;
}

const run = (proc: ProcClient, cmd: string, opts: { user?: string; envs?: Record<string, string>; cwd?: string } = {}) =>
  collect(
    proc.start(
      { process: { cmd: '/bin/bash', args: ['-l', '-c', cmd], envs: opts.envs ?? {}, cwd: opts.cwd }, stdin: false },
      { headers: opts.user ? asUser(opts.user) : {} },
    ),
  );

async function rejects(p: Promise<unknown>, code: Code) {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ConnectError, `expected a ConnectError, got ${String(e)}`);
    assert.equal(e.code, code, `expected ${Code[code]}, got ${Code[e.code]}: ${e.message}`);
    return e;
  }
  assert.fail(`expected ${Code[code]}`);
}

/** A streamed process whose first event has been read (so its pid is known). */
async function started(events: AsyncIterable<any>) {
  const it = events[Symbol.asyncIterator]();
  const first = await it.next();
  assert.equal(first.value.event.event.case, 'start');
  const rest = collect({ [Symbol.asyncIterator]: () => it });
  return { pid: first.value.event.event.value.pid as number, rest };
}

function envelope(flags: number, json: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(json));
  const head = Buffer.alloc(5);
  head.writeUInt8(flags, 0);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

function frames(buf: Buffer): { flags: number; json: any }[] {
  const out: { flags: number; json: any }[] = [];
  let o = 0;
  while (o < buf.length) {
    assert.ok(o + 5 <= buf.length, 'truncated envelope header');
    const flags = buf.readUInt8(o);
    const n = buf.readUInt32BE(o + 1);
    assert.ok(o + 5 + n <= buf.length, 'truncated envelope body');
    out.push({ flags, json: JSON.parse(buf.subarray(o + 5, o + 5 + n).toString()) });
    o += 5 + n;
  }
  return out;
}

describe('envd REST', () => {
  test('health, sandbox not on the node, node token required, unimplemented routes', async () => {
    assert.equal((await fetch(`${base}/health`, { headers: hop() })).status, 204);
    const missing = await fetch(`${a.url}/v1/sandboxes/abcdefghij0123456789/envd/health`, { headers: hop() });
    assert.equal(missing.status, 502);
    assert.deepEqual(await missing.json(), { sandboxId: 'abcdefghij0123456789', message: 'The sandbox was not found', code: 502 });
    assert.equal((await fetch(`${base}/health`)).status, 401);
    assert.equal((await fetch(`${base}/health`, { headers: { authorization: basic('user') } })).status, 401);
    const metrics = await fetch(`${base}/metrics`, { headers: hop() });
    assert.equal(metrics.status, 501);
    assert.match((await metrics.json()).message, /GET \/metrics is not implemented/);
    const init = await fetch(`${base}/init`, { method: 'POST', headers: hop({ 'content-type': 'application/json' }), body: '{}' });
    assert.equal(init.status, 501);
    // CORS preflight (the proxy lets it through without credentials; envd answers it)
    const pre = await fetch(`${base}/files`, {
      method: 'OPTIONS',
      headers: hop({ origin: 'https://app.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' }),
    });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers.get('access-control-allow-origin'), '*');
  });

  test('upload multipart (several files), octet-stream, gzip both ways; download; errors', async () => {
    const fd = new FormData();
    fd.append('file', new Blob(['first']), '/tmp/up/one.txt');
    fd.append('file', new Blob(['second']), 'up/two.txt'); // relative: against the user's home
    fd.append('other', 'ignored');
    fd.append('file', new Blob([]), 'up/empty.txt');
    let r = await fetch(`${base}/files`, { method: 'POST', headers: hop({ 'x-metadata-purpose': 'test' }), body: fd });
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), [
      { name: 'one.txt', type: 'file', path: '/tmp/up/one.txt' },
      { name: 'two.txt', type: 'file', path: '/home/user/up/two.txt' },
      { name: 'empty.txt', type: 'file', path: '/home/user/up/empty.txt' },
    ]);

    // multipart with path= names the destination of the single part
    const one = new FormData();
    one.append('file', new Blob(['via path']), 'ignored-name');
    r = await fetch(`${base}/files?path=${encodeURIComponent('/tmp/up/by-path.txt')}`, { method: 'POST', headers: hop(), body: one });
    assert.deepEqual(await r.json(), [{ name: 'by-path.txt', type: 'file', path: '/tmp/up/by-path.txt' }]);

    // two parts to one path: 400, as envd
    const dup = new FormData();
    dup.append('file', new Blob(['a']), 'dup.txt');
    dup.append('file', new Blob(['b']), 'dup.txt');
    r = await fetch(`${base}/files`, { method: 'POST', headers: hop(), body: dup });
    assert.equal(r.status, 400);
    assert.match((await r.json()).message, /same path/);

    r = await fetch(`${base}/files?path=raw/data.bin`, { method: 'POST', headers: hop({ 'content-type': 'application/octet-stream' }), body: 'raw bytes' });
    assert.deepEqual(await r.json(), [{ name: 'data.bin', type: 'file', path: '/home/user/raw/data.bin' }]);
    r = await fetch(`${base}/files`, { method: 'POST', headers: hop({ 'content-type': 'application/octet-stream' }), body: 'x' });
    assert.equal(r.status, 400);
    assert.match((await r.json()).message, /path query parameter is required/);

    const text = 'compressed '.repeat(1000);
    r = await fetch(`${base}/files?path=raw/gz.txt`, {
      method: 'POST',
      headers: hop({ 'content-type': 'application/octet-stream', 'content-encoding': 'gzip' }),
      body: gzipSync(text),
    });
    assert.equal(r.status, 200);
    // gzip multipart body too
    const gzForm = new FormData();
    gzForm.append('file', new Blob(['inside gzip multipart']), 'raw/gzform.txt');
    const formReq = new Request('http://x/', { method: 'POST', body: gzForm });
    r = await fetch(`${base}/files`, {
      method: 'POST',
      headers: hop({ 'content-type': formReq.headers.get('content-type')!, 'content-encoding': 'gzip' }),
      body: gzipSync(Buffer.from(await formReq.arrayBuffer())),
    });
    assert.equal(r.status, 200, await r.clone().text());

    const get = async (path: string, headers: Record<string, string> = {}) =>
      fetch(`${base}/files?path=${encodeURIComponent(path)}`, { headers: hop({ 'accept-encoding': 'identity', ...headers }) });
    r = await get('up/two.txt');
    assert.equal(r.headers.get('content-length'), '6');
    assert.equal(await r.text(), 'second');
    assert.equal(await (await get('/tmp/up/one.txt')).text(), 'first');
    assert.equal(await (await get('raw/gz.txt')).text(), text);
    assert.equal(await (await get('raw/gzform.txt')).text(), 'inside gzip multipart');
    r = await get('up/empty.txt');
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-length'), '0');
    assert.equal((await r.arrayBuffer()).byteLength, 0);

    // gzip download: undici would decompress transparently, so read the raw bytes with node:http
    const { request } = await import('node:http');
    const raw = await new Promise<{ headers: Record<string, unknown>; body: Buffer }>((resolve, reject) => {
      const req = request(`${base}/files?path=raw/gz.txt`, { headers: hop({ 'accept-encoding': 'gzip' }) }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ headers: res.headers, body: Buffer.concat(chunks) }));
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(raw.headers['content-encoding'], 'gzip');
    assert.ok(raw.body.length < text.length);
    assert.equal(gunzipSync(raw.body).toString(), text);

    r = await get('nope/missing.txt');
    assert.equal(r.status, 404);
    const body = await r.json();
    assert.equal(body.code, 404);
    assert.match(body.message, /No such file/);
    r = await get('/tmp/up');
    assert.equal(r.status, 400);
    assert.equal((await get('')).status, 400);
    r = await fetch(`${base}/files?path=x&username=nobody-here`, { headers: hop() });
    assert.equal(r.status, 401);
    r = await fetch(`${base}/files`, { method: 'PUT', headers: hop() });
    assert.equal(r.status, 405);
  });

  test('users: username query, Basic auth, ownership and permissions', async () => {
    const fsc = clients(false).fs;
    let r = await fetch(`${base}/files?path=/root/secret.txt&username=root`, {
      method: 'POST', headers: hop({ 'content-type': 'application/octet-stream' }), body: 'root only',
    });
    assert.equal(r.status, 200);
    const st = await fsc.stat({ path: '/root/secret.txt' }, { headers: asUser('root') });
    assert.equal(st.entry!.owner, 'root');
    // the default user may not read it
    r = await fetch(`${base}/files?path=/root/secret.txt`, { headers: hop() });
    assert.equal(r.status, 403);
    // Basic auth selects the user when there is no username query
    r = await fetch(`${base}/files?path=/root/secret.txt`, { headers: hop(asUser('root')) });
    assert.equal(await r.text(), 'root only');
    r = await fetch(`${base}/files?path=mine.txt`, { method: 'POST', headers: hop({ 'content-type': 'application/octet-stream' }), body: 'x' });
    assert.deepEqual(await r.json(), [{ name: 'mine.txt', type: 'file', path: '/home/user/mine.txt' }]);
    assert.equal((await fsc.stat({ path: 'mine.txt' })).entry!.owner, 'user');
    // a refused upload is answered even while the client is still sending (8 MiB parts)
    r = await fetch(`${base}/files?path=/root/no.bin`, { method: 'POST', headers: hop({ 'content-type': 'application/octet-stream' }), body: randomBytes(8 << 20) });
    assert.equal(r.status, 403);
    assert.match((await r.json()).message, /Permission denied/);
    const refused = new FormData();
    refused.append('file', new Blob([randomBytes(8 << 20)]), 'fine-first.bin');
    refused.append('file', new Blob([randomBytes(8 << 20)]), '/root/no.bin');
    refused.append('file', new Blob([randomBytes(8 << 20)]), 'never.bin');
    r = await fetch(`${base}/files`, { method: 'POST', headers: hop(), body: refused });
    assert.equal(r.status, 403);
    await rejects(fsc.stat({ path: 'never.bin' }), Code.NotFound);
    // relative paths are against the selected user's home
    r = await fetch(`${base}/files?path=rootfile.txt`, { method: 'POST', headers: hop({ ...asUser('root'), 'content-type': 'application/octet-stream' }), body: 'x' });
    assert.deepEqual(await r.json(), [{ name: 'rootfile.txt', type: 'file', path: '/root/rootfile.txt' }]);
  });

  test('50 MiB upload and download are streamed intact', async () => {
    const big = randomBytes(50 * 1024 * 1024);
    const sha = createHash('sha256').update(big).digest('hex');
    let r = await fetch(`${base}/files?path=big/blob.bin`, { method: 'POST', headers: hop({ 'content-type': 'application/octet-stream' }), body: big });
    assert.equal(r.status, 200);
    r = await fetch(`${base}/files?path=big/blob.bin`, { headers: hop({ 'accept-encoding': 'identity' }) });
    assert.equal(r.headers.get('content-length'), String(big.length));
    const h = createHash('sha256');
    let n = 0;
    for await (const c of r.body as unknown as AsyncIterable<Uint8Array>) {
      h.update(c);
      n += c.length;
    }
    assert.equal(n, big.length);
    assert.equal(h.digest('hex'), sha);
    // multipart of the same size
    const fd = new FormData();
    fd.append('file', new Blob([big]), 'big/form.bin');
    r = await fetch(`${base}/files`, { method: 'POST', headers: hop(), body: fd });
    assert.equal(r.status, 200);
    const check = await run(clients(false).proc, 'sha256sum big/form.bin | cut -d" " -f1');
    assert.equal(check.stdout.trim(), sha);
  });
});

for (const binary of [false, true]) {
  describe(`process.Process (${binary ? 'binary' : 'JSON'})`, () => {
    test('Start as commands.run: output, exit, env vars, cwd, users', async () => {
      const { proc } = clients(binary);
      const r = await run(proc, 'echo out-$GREETING-$SHARED-$EXTRA; echo err >&2; pwd; exit 3', { envs: { EXTRA: 'x', SHARED: 'override' }, cwd: '/tmp' });
      assert.equal(r.events[0], 'start');
      assert.ok(r.pid > 1);
      assert.equal(r.stdout, 'out-hello-override-x\n/tmp\n');
      assert.equal(r.stderr, 'err\n');
      assert.deepEqual(r.end, { exitCode: 3, exited: true, status: 'exit status 3', error: 'exit status 3' });
      assert.equal(r.events.at(-1), 'end');

      const ok = await run(proc, 'id -un; echo $HOME; pwd');
      assert.equal(ok.stdout, 'user\n/home/user\n/home/user\n');
      assert.deepEqual(ok.end, { exitCode: 0, exited: true, status: 'exit status 0', error: undefined });
      const root = await run(proc, 'id -un; pwd', { user: 'root' });
      assert.equal(root.stdout, 'root\n/root\n');
      await rejects(run(proc, 'true', { user: 'nobody-here' }), Code.Unauthenticated);
      await rejects(collect(proc.start({ process: { cmd: '/no/such/binary', args: [] } })), Code.NotFound);
      await rejects(collect(proc.start({ process: { cmd: '', args: [] } })), Code.InvalidArgument);
    });

    test('stdin: SendInput, StreamInput, CloseStdin; List and Connect by tag', async () => {
      const { proc } = clients(binary);
      const tag = `cat-${binary ? 'bin' : 'json'}`;
      const s = await started(proc.start({ process: { cmd: '/bin/cat', args: [] }, stdin: true, tag }));
      const list = await proc.list({});
      const mine = list.processes.find((p) => p.pid === s.pid);
      assert.ok(mine, 'the process is listed');
      assert.equal(mine.tag, tag);
      assert.equal(mine.config!.cmd, '/bin/cat');
      assert.deepEqual(mine.config!.args, []);
      assert.equal(mine.config!.envs.GREETING, 'hello');

      await proc.sendInput({ process: { selector: { case: 'pid', value: s.pid } }, input: { input: { case: 'stdin', value: Buffer.from('one\n') } } });
      await proc.sendInput({ process: { selector: { case: 'tag', value: tag } }, input: { input: { case: 'stdin', value: Buffer.from('two\n') } } });
      async function* input(): AsyncGenerator<MessageInitShape<typeof StreamInputRequestSchema>> {
        yield { event: { case: 'start' as const, value: { process: { selector: { case: 'pid' as const, value: s.pid } } } } };
        yield { event: { case: 'keepalive' as const, value: {} } };
        yield { event: { case: 'data' as const, value: { input: { input: { case: 'stdin' as const, value: Buffer.from('three\n') } } } } };
        yield { event: { case: 'data' as const, value: { input: { input: { case: 'stdin' as const, value: Buffer.from('four\n') } } } } };
      }
      await proc.streamInput(input());

      // a second reader attached by tag sees the output that follows
      const other = await started(proc.connect({ process: { selector: { case: 'tag', value: tag } } }));
      assert.equal(other.pid, s.pid);
      await sleep(100);
      await proc.sendInput({ process: { selector: { case: 'pid', value: s.pid } }, input: { input: { case: 'stdin', value: Buffer.from('five\n') } } });
      await proc.closeStdin({ process: { selector: { case: 'pid', value: s.pid } } });
      const r = await s.rest;
      assert.equal(r.stdout, 'one\ntwo\nthree\nfour\nfive\n');
      assert.deepEqual(r.end, { exitCode: 0, exited: true, status: 'exit status 0', error: undefined });
      const o = await other.rest;
      assert.match(o.stdout, /five\n$/);
      assert.equal(o.end?.exitCode, 0);

      await rejects(proc.sendInput({ process: { selector: { case: 'pid', value: s.pid } }, input: { input: { case: 'stdin', value: Buffer.from('x') } } }), Code.NotFound);
      await rejects(proc.connect({ process: { selector: { case: 'tag', value: 'no-such-tag' } } })[Symbol.asyncIterator]().next(), Code.NotFound);
      await rejects(proc.closeStdin({ process: {} }), Code.InvalidArgument);
      async function* startless(): AsyncGenerator<MessageInitShape<typeof StreamInputRequestSchema>> {
        yield { event: { case: 'data' as const, value: { input: { input: { case: 'stdin' as const, value: Buffer.from('x') } } } } };
      }
      await rejects(proc.streamInput(startless()), Code.InvalidArgument);
    });

    test('SendSignal SIGTERM and SIGKILL; disconnect keeps the process; deadline kills it', async () => {
      const { proc } = clients(binary);
      const t = await started(proc.start({ process: { cmd: '/bin/sleep', args: ['100'] }, stdin: false }));
      await proc.sendSignal({ process: { selector: { case: 'pid', value: t.pid } }, signal: Signal.SIGTERM });
      assert.deepEqual((await t.rest).end, { exitCode: -1, exited: false, status: 'signal: terminated', error: 'signal: terminated' });

      // a client that goes away only detaches; Connect reattaches; SIGKILL ends it
      const ac = new AbortController();
      const k = await started(proc.start({ process: { cmd: '/bin/sleep', args: ['100'] }, stdin: false, tag: 'sleeper' }, { signal: ac.signal }));
      ac.abort();
      await k.rest.catch(() => undefined);
      await sleep(100);
      assert.ok((await proc.list({})).processes.some((p) => p.pid === k.pid), 'still running after the client left');
      const again = await started(proc.connect({ process: { selector: { case: 'pid', value: k.pid } } }));
      await proc.sendSignal({ process: { selector: { case: 'tag', value: 'sleeper' } }, signal: Signal.SIGKILL });
      assert.deepEqual((await again.rest).end, { exitCode: -1, exited: false, status: 'signal: killed', error: 'signal: killed' });
      await rejects(proc.sendSignal({ process: { selector: { case: 'pid', value: k.pid } }, signal: Signal.UNSPECIFIED }), Code.InvalidArgument);
      await rejects(proc.sendSignal({ process: { selector: { case: 'pid', value: 999_999 } }, signal: Signal.SIGKILL }), Code.NotFound);

      // Connect-Timeout-Ms on Start: deadline_exceeded, and the process is killed (as envd does)
      const before = Date.now();
      await rejects(collect(proc.start({ process: { cmd: '/bin/sleep', args: ['60'] }, stdin: false, tag: 'timed' }, { timeoutMs: 800 })), Code.DeadlineExceeded);
      assert.ok(Date.now() - before < 30_000, 'ended by the deadline, not by the sleep of 60 s');
      // (the kill that follows the deadline may take a moment on a loaded host)
      for (let i = 0; (await proc.list({})).processes.some((p) => p.tag === 'timed'); i++) {
        assert.ok(i < 100, 'killed at the deadline');
        await sleep(100);
      }
    });

    test('PTY: size, Update (resize), input on the pty', async () => {
      const { proc } = clients(binary);
      const s = await started(
        proc.start({
          process: { cmd: '/bin/bash', args: ['-c', 'tty; stty size; read x; stty size; echo got:$x'], envs: {} },
          pty: { size: { cols: 80, rows: 24 } },
        }),
      );
      await sleep(300);
      await proc.update({ process: { selector: { case: 'pid', value: s.pid } }, pty: { size: { cols: 120, rows: 40 } } });
      await proc.sendInput({ process: { selector: { case: 'pid', value: s.pid } }, input: { input: { case: 'pty', value: Buffer.from('abc\n') } } });
      const r = await s.rest;
      assert.equal(r.stdout, '');
      assert.match(r.pty, /\/dev\/pts\/\d+/);
      assert.match(r.pty, /24 80/);
      assert.match(r.pty, /40 120/);
      assert.match(r.pty, /got:abc/);
      assert.equal(r.end?.exitCode, 0);
      // resizing a process without a pty is invalid
      const plain = await started(proc.start({ process: { cmd: '/bin/sleep', args: ['5'] }, stdin: false }));
      await rejects(proc.update({ process: { selector: { case: 'pid', value: plain.pid } }, pty: { size: { cols: 10, rows: 10 } } }), Code.InvalidArgument);
      await proc.sendSignal({ process: { selector: { case: 'pid', value: plain.pid } }, signal: Signal.SIGKILL });
      await plain.rest;
    });

    test('keepalive events on an idle stream (Keepalive-Ping-Interval)', async () => {
      const { proc } = clients(binary);
      const r = await collect(
        proc.start({ process: { cmd: '/bin/bash', args: ['-c', 'echo a; sleep 2.3; echo b'] }, stdin: false }, { headers: { 'keepalive-ping-interval': '1' } }),
      );
      assert.equal(r.events[0], 'start');
      assert.equal(r.events.at(-1), 'end');
      const kas = r.events.filter((e) => e === 'keepalive').length;
      assert.ok(kas >= 1 && kas <= 3, `keepalives: ${r.events.join(',')}`);
      assert.equal(r.stdout, 'a\nb\n');
    });
  });

  describe(`filesystem.Filesystem (${binary ? 'binary' : 'JSON'})`, () => {
    const dir = `fs-${binary ? 'bin' : 'json'}`;

    test('Stat, MakeDir, ListDir, Move, Remove', async () => {
      const { fs, proc } = clients(binary);
      const made = await fs.makeDir({ path: `${dir}/a/b` });
      assert.equal(made.entry!.type, FileType.DIRECTORY);
      assert.equal(made.entry!.path, `/home/user/${dir}/a/b`);
      assert.equal(made.entry!.name, 'b');
      assert.equal(made.entry!.owner, 'user');
      await rejects(fs.makeDir({ path: `${dir}/a/b` }), Code.AlreadyExists);

      await run(proc, `printf 12345 > ${dir}/a/file.txt; chmod 640 ${dir}/a/file.txt; ln -s file.txt ${dir}/a/link`);
      const st = (await fs.stat({ path: `${dir}/a/file.txt` })).entry!;
      assert.equal(st.type, FileType.FILE);
      assert.equal(st.size, 5n);
      assert.equal(st.mode, 0o640);
      assert.equal(st.permissions, '-rw-r-----');
      assert.equal(st.group, 'user');
      const age = Date.now() - Number(st.modifiedTime!.seconds) * 1000;
      assert.ok(age >= -2000 && age < 60_000, `modified ${age} ms ago`);
      const link = (await fs.stat({ path: `${dir}/a/link` })).entry!;
      assert.equal(link.type, FileType.SYMLINK);
      assert.equal(link.symlinkTarget, `/home/user/${dir}/a/file.txt`, "as envd: the absolute path it resolves to, not the link's text");
      assert.equal(st.symlinkTarget, undefined);

      const one = await fs.listDir({ path: dir, depth: 1 });
      assert.deepEqual(one.entries.map((e) => e.path), [`/home/user/${dir}/a`]);
      const two = await fs.listDir({ path: dir, depth: 2 });
      assert.deepEqual(two.entries.map((e) => e.name).sort(), ['a', 'b', 'file.txt', 'link']);
      assert.equal((await fs.listDir({ path: dir, depth: 0 })).entries.length, 1); // 0 means 1

      const moved = await fs.move({ source: `${dir}/a/file.txt`, destination: `${dir}/moved.txt` });
      assert.equal(moved.entry!.path, `/home/user/${dir}/moved.txt`);
      await rejects(fs.stat({ path: `${dir}/a/file.txt` }), Code.NotFound);
      await fs.remove({ path: `${dir}/a` });
      await rejects(fs.stat({ path: `${dir}/a` }), Code.NotFound);
      await rejects(fs.listDir({ path: `${dir}/moved.txt`, depth: 1 }), Code.InvalidArgument);
      await rejects(fs.listDir({ path: `${dir}/nope`, depth: 1 }), Code.NotFound);
      await rejects(fs.makeDir({ path: '/root/forbidden' }), Code.PermissionDenied);
      // root may
      const rootDir = await fs.makeDir({ path: `/root/${dir}` }, { headers: asUser('root') });
      assert.equal(rootDir.entry!.owner, 'root');
      await rejects(fs.stat({ path: '' }), Code.InvalidArgument);
    });

    test('WatchDir streams events (recursive, with entries) and keepalives', async () => {
      const { fs } = clients(binary);
      const wdir = `${dir}/watched`;
      await fs.makeDir({ path: `${wdir}/sub` });
      const ac = new AbortController();
      const it = fs
        .watchDir({ path: wdir, recursive: true, includeEntry: true }, { signal: ac.signal, headers: { 'keepalive-ping-interval': '1' } })
        [Symbol.asyncIterator]();
      const first = await it.next();
      assert.equal(first.value!.event.case, 'start');
      const seen: { name: string; type: EventType; entry?: string }[] = [];
      let keepalives = 0;
      const reader = (async () => {
        for (;;) {
          const n = await it.next().catch(() => ({ done: true as const, value: undefined }));
          if (n.done) return;
          const e = n.value.event;
          if (e.case === 'keepalive') keepalives++;
          if (e.case === 'filesystem') seen.push({ name: e.value.name, type: e.value.type, entry: e.value.entry?.path });
        }
      })();
      await sleep(100);
      const put = await fetch(`${base}/files?path=${wdir}/sub/new.txt`, { method: 'POST', headers: hop({ 'content-type': 'application/octet-stream' }), body: 'x' });
      assert.equal(put.status, 200);
      await sleep(300);
      await fs.remove({ path: `${wdir}/sub/new.txt` });
      // (a keepalive goes every second while idle; the events come as the host schedules them)
      for (let i = 0; i < 150 && !(keepalives >= 1 && seen.some((e) => e.type === EventType.REMOVE)); i++) await sleep(100);
      ac.abort();
      await reader;
      assert.ok(keepalives >= 1, 'a keepalive while idle');
      const created = seen.find((e) => e.type === EventType.RENAME || e.type === EventType.CREATE);
      assert.ok(seen.some((e) => e.name === 'sub/new.txt'), `events: ${JSON.stringify(seen)}`);
      assert.ok(created, `events: ${JSON.stringify(seen)}`);
      assert.ok(seen.some((e) => e.name === 'sub/new.txt' && e.type === EventType.REMOVE), `events: ${JSON.stringify(seen)}`);
      assert.ok(seen.some((e) => e.entry === `/home/user/${wdir}/sub/new.txt`), 'include_entry gives entries');
      await rejects(fs.watchDir({ path: `${dir}/none` })[Symbol.asyncIterator]().next(), Code.NotFound);
    });

    test('CreateWatcher, GetWatcherEvents, RemoveWatcher', async () => {
      const { fs } = clients(binary);
      const wdir = `${dir}/polled`;
      await fs.makeDir({ path: wdir });
      const { watcherId } = await fs.createWatcher({ path: wdir, recursive: false });
      assert.ok(watcherId);
      assert.deepEqual((await fs.getWatcherEvents({ watcherId })).events, []);
      await fetch(`${base}/files?path=${wdir}/f.txt`, { method: 'POST', headers: hop({ 'content-type': 'application/octet-stream' }), body: 'x' });
      await fs.makeDir({ path: `${wdir}/d` });
      let events: { name: string; type: EventType }[] = [];
      for (let i = 0; i < 300 && !events.some((e) => e.name === 'd'); i++) {
        await sleep(50);
        events = events.concat((await fs.getWatcherEvents({ watcherId })).events.map((e) => ({ name: e.name, type: e.type })));
      }
      assert.ok(events.some((e) => e.name === 'f.txt'), JSON.stringify(events));
      assert.ok(events.some((e) => e.name === 'd' && e.type === EventType.CREATE), JSON.stringify(events));
      await fs.removeWatcher({ watcherId });
      await rejects(fs.getWatcherEvents({ watcherId }), Code.NotFound);
      await rejects(fs.removeWatcher({ watcherId }), Code.NotFound);
      await rejects(fs.createWatcher({ path: `${dir}/none` }), Code.NotFound);
    });
  });
}

describe('clients that go away', () => {
  async function settled() {
    const init = a.agent.runtime.initClient(id);
    for (let i = 0; i < 300 && init.openConnections > 0; i++) await sleep(50);
    return init.openConnections;
  }

  test('aborted uploads and streams release their init connections; nothing half-written stays', async () => {
    assert.equal(await settled(), 0);
    for (const kind of ['raw', 'multipart'] as const) {
      // node:http, not fetch: undici keeps a spare connection open after an abort, which would
      // only slow the agent's shutdown down
      const boundary = 'xxBOUNDARYxx';
      const headers = kind === 'raw' ? { 'content-type': 'application/octet-stream' } : { 'content-type': `multipart/form-data; boundary=${boundary}` };
      const q = kind === 'raw' ? `?path=aborted/${kind}.bin` : '';
      const req = httpRequest(`${base}/files${q}`, { method: 'POST', headers: hop(headers) }, (res) => res.resume());
      req.on('error', () => undefined);
      if (kind === 'multipart') {
        req.write(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="aborted/${kind}.bin"\r\n\r\n`);
      }
      req.write(randomBytes(1024 * 1024)); // then nothing more: the client stalls, then leaves
      for (let i = 0; i < 150 && a.agent.runtime.initClient(id).openConnections < 1; i++) await sleep(100);
      assert.ok(a.agent.runtime.initClient(id).openConnections >= 1, 'the upload reached the init');
      req.destroy();
      assert.equal(await settled(), 0, `${kind}: init connections after the abort`);
    }
    const { fs, proc } = clients(false);
    await rejects(fs.stat({ path: 'aborted/raw.bin' }), Code.NotFound);
    await rejects(fs.stat({ path: 'aborted/multipart.bin' }), Code.NotFound);
    assert.equal((await run(proc, 'ls -A aborted | wc -l')).stdout.trim(), '0', 'no temporary files left');

    const ac = new AbortController();
    const s = await started(proc.start({ process: { cmd: '/bin/sleep', args: ['100'] }, stdin: false }, { signal: ac.signal }));
    const w = fs.watchDir({ path: '/tmp' }, { signal: ac.signal })[Symbol.asyncIterator]();
    await w.next();
    assert.ok(a.agent.runtime.initClient(id).openConnections >= 2);
    ac.abort();
    await s.rest.catch(() => undefined);
    await w.next().catch(() => undefined);
    assert.equal(await settled(), 0, 'streams detached');
    await proc.sendSignal({ process: { selector: { case: 'pid', value: s.pid } }, signal: Signal.SIGKILL });
  });
});

describe('Connect wire format', () => {
  const rpc = (path: string, body: Buffer | string, headers: Record<string, string>) =>
    fetch(`${base}/${path}`, { method: 'POST', headers: hop({ 'connect-protocol-version': '1', ...headers }), body: body as BodyInit });

  test('server stream: start first, data, end, then the end-stream frame 0x02 {}', async () => {
    const res = await rpc('process.Process/Start', envelope(0, { process: { cmd: '/bin/bash', args: ['-l', '-c', 'printf hi'] }, stdin: false }), {
      'content-type': 'application/connect+json',
      'x-envd-authorization': basic('root'),
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/connect+json');
    const fr = frames(Buffer.from(await res.arrayBuffer()));
    assert.equal(fr[0]!.flags, 0);
    assert.deepEqual(Object.keys(fr[0]!.json.event), ['start']);
    assert.ok(fr[0]!.json.event.start.pid > 1);
    assert.deepEqual(fr[1], { flags: 0, json: { event: { data: { stdout: Buffer.from('hi').toString('base64') } } } });
    assert.deepEqual(fr.at(-2), { flags: 0, json: { event: { end: { exited: true, status: 'exit status 0' } } } });
    assert.deepEqual(fr.at(-1), { flags: 2, json: {} });
  });

  test('server stream errors arrive in the end-stream frame; unary errors as HTTP status + JSON', async () => {
    let res = await rpc('process.Process/Start', envelope(0, { process: { cmd: '/no/such', args: [] } }), { 'content-type': 'application/connect+json' });
    assert.equal(res.status, 200);
    let fr = frames(Buffer.from(await res.arrayBuffer()));
    assert.equal(fr.length, 1);
    assert.equal(fr[0]!.flags, 2);
    assert.equal(fr[0]!.json.error.code, 'not_found');
    assert.equal(typeof fr[0]!.json.error.message, 'string');

    res = await rpc('filesystem.Filesystem/Stat', JSON.stringify({ path: '/definitely/not/here' }), { 'content-type': 'application/json' });
    assert.equal(res.status, 404);
    assert.equal((await res.json()).code, 'not_found');
    res = await rpc('filesystem.Filesystem/MakeDir', JSON.stringify({ path: '/tmp' }), { 'content-type': 'application/json' });
    assert.equal(res.status, 409);
    assert.equal((await res.json()).code, 'already_exists');
    res = await rpc('filesystem.Filesystem/Stat', JSON.stringify({ path: '/tmp' }), { 'content-type': 'application/json' });
    assert.equal(res.status, 200);
    const st = await res.json();
    assert.equal(st.entry.type, 'FILE_TYPE_DIRECTORY');
    assert.equal(typeof st.entry.modifiedTime, 'string');
    // the sandbox not on this node: the proxy's 502 shape
    res = await fetch(`${a.url}/v1/sandboxes/abcdefghij0123456789/envd/filesystem.Filesystem/Stat`, {
      method: 'POST', headers: hop({ 'content-type': 'application/json' }), body: '{}',
    });
    assert.equal(res.status, 502);
  });

  test('unimplemented RPCs answer unimplemented, never hang', async () => {
    let res = await rpc('process.Process/Nope', '{}', { 'content-type': 'application/json' });
    assert.equal(res.status, 501);
    assert.deepEqual(await res.json(), { code: 'unimplemented', message: 'process.Process/Nope is not implemented by Nestbox' });
    res = await rpc('inspector.Inspector/Inspect', envelope(0, {}), { 'content-type': 'application/connect+json' });
    assert.equal(res.status, 200);
    const fr = frames(Buffer.from(await res.arrayBuffer()));
    assert.equal(fr.length, 1);
    assert.equal(fr[0]!.flags, 2);
    assert.equal(fr[0]!.json.error.code, 'unimplemented');
  });
});

describe('the official e2b SDK, through a minimal stand-in for the sandbox proxy', () => {
  // What the control plane's proxy does for envd: route by E2b-Sandbox-Id, authenticate the hop
  // with the node token, move the client's Authorization to X-Envd-Authorization, stream both ways.
  let server: Server;
  let sandboxUrl: string;
  before(async () => {
    server = createServer((req, res) => {
      const sid = String(req.headers['e2b-sandbox-id'] ?? '');
      const headers = { ...req.headers };
      delete headers.host;
      delete headers.connection;
      if (headers.authorization) headers['x-envd-authorization'] = headers.authorization;
      headers.authorization = `Bearer ${a.agent.nodeToken}`;
      const up = httpRequest(`${a.url}/v1/sandboxes/${sid}/envd${req.url}`, { method: req.method, headers }, (ur) => {
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        ur.pipe(res);
      });
      up.on('error', () => res.destroy());
      res.on('close', () => up.destroy());
      req.pipe(up);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    sandboxUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => {
    server?.closeAllConnections();
    server?.close();
  });

  const sdk = (envdVersion = '0.6.3') =>
    new (Sandbox as unknown as new (o: Record<string, unknown>) => Sandbox)({ sandboxId: id, envdVersion, sandboxUrl, apiKey: 'e2b_00', envdAccessToken: undefined });

  test('commands: run, users, exit errors, background, stdin, list, kill', async () => {
    const sbx = sdk();
    const r = await sbx.commands.run('echo hi $GREETING; id -un; pwd');
    assert.equal(r.stdout, 'hi hello\nuser\n/home/user\n');
    assert.equal(r.exitCode, 0);
    assert.equal((await sbx.commands.run('id -un', { user: 'root' })).stdout, 'root\n');
    await assert.rejects(sbx.commands.run('echo bad >&2; exit 3'), (e: any) => e.exitCode === 3 && e.stderr === 'bad\n');
    let out = '';
    const cat = await sbx.commands.run('cat', { background: true, stdin: true, onStdout: (d) => void (out += d) });
    await sbx.commands.sendStdin(cat.pid, 'through stdin\n');
    await sbx.commands.closeStdin(cat.pid);
    assert.equal((await cat.wait()).stdout, 'through stdin\n');
    assert.equal(out, 'through stdin\n');
    const sleeper = await sbx.commands.run('sleep 100', { background: true });
    assert.ok((await sbx.commands.list()).some((p) => p.pid === sleeper.pid));
    assert.equal(await sbx.commands.kill(sleeper.pid), true);
    assert.equal(await sbx.commands.kill(999_999), false);
    await assert.rejects(sbx.commands.run('sleep 10', { timeoutMs: 500 }), /timeout|deadline/i);
    // an old envd version (the SDK then sends no stdin flag and the default user itself)
    assert.equal((await sdk('0.1.0').commands.run('echo old')).stdout, 'old\n');
    assert.equal(await sbx.isRunning(), true);
  });

  test('files: write (multipart, octet-stream, gzip), read, list, info, makeDir, rename, remove, watch', async () => {
    const sbx = sdk();
    const info = await sbx.files.write('sdk/a.txt', 'alpha');
    assert.equal(info.path, '/home/user/sdk/a.txt');
    await sbx.files.write([
      { path: 'sdk/b.txt', data: 'beta' },
      { path: '/tmp/sdk-c.txt', data: new Blob(['gamma']) },
    ]);
    await sbx.files.write('sdk/gz.txt', 'zipped', { gzip: true });
    await sbx.files.write('sdk/stream.bin', Readable.toWeb(Readable.from([Buffer.from('str'), Buffer.from('eam')])) as ReadableStream);
    assert.equal(await sbx.files.read('sdk/a.txt'), 'alpha');
    assert.equal(await sbx.files.read('/tmp/sdk-c.txt'), 'gamma');
    assert.equal(await sbx.files.read('sdk/gz.txt', { gzip: true }), 'zipped');
    assert.equal(Buffer.from(await sbx.files.read('sdk/stream.bin', { format: 'bytes' })).toString(), 'stream');
    await sbx.files.write('sdk/empty.txt', '');
    assert.equal(await sbx.files.read('sdk/empty.txt'), '');
    await assert.rejects(sbx.files.read('sdk/none.txt'), (e: any) => e.name === 'FileNotFoundError' || e.name === 'NotFoundError');
    const names = (await sbx.files.list('sdk')).map((e) => e.name).sort();
    assert.deepEqual(names, ['a.txt', 'b.txt', 'empty.txt', 'gz.txt', 'stream.bin']);
    const st = await sbx.files.getInfo('sdk/a.txt');
    assert.equal(st.type, 'file');
    assert.equal(st.size, 5);
    assert.ok(st.modifiedTime instanceof Date);
    assert.equal(await sbx.files.makeDir('sdk/dir'), true);
    assert.equal(await sbx.files.makeDir('sdk/dir'), false);
    assert.equal(await sbx.files.exists('sdk/dir'), true);
    assert.equal((await sbx.files.rename('sdk/a.txt', 'sdk/dir/a2.txt')).path, '/home/user/sdk/dir/a2.txt');
    await sbx.files.remove('sdk/dir');
    assert.equal(await sbx.files.exists('sdk/dir'), false);

    const events: string[] = [];
    const w = await sbx.files.watchDir('sdk', (e) => void events.push(`${e.type}:${e.name}`), { recursive: true });
    await sbx.files.write('sdk/watched.txt', 'w');
    for (let i = 0; i < 300 && !events.some((e) => e.endsWith(':watched.txt')); i++) await sleep(50);
    await w.stop();
    assert.ok(events.some((e) => e.endsWith(':watched.txt')), events.join(','));
  });

  test('pty: create, input, resize, kill', async () => {
    const sbx = sdk();
    let screen = '';
    const t = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => void (screen += Buffer.from(d).toString()) });
    await sbx.pty.sendInput(t.pid, new TextEncoder().encode('stty size; echo $TERM\n'));
    for (let i = 0; i < 300 && !/24 80/.test(screen); i++) await sleep(50);
    await sbx.pty.resize(t.pid, { cols: 100, rows: 30 });
    await sbx.pty.sendInput(t.pid, new TextEncoder().encode('stty size\n'));
    for (let i = 0; i < 300 && !/30 100/.test(screen); i++) await sleep(50);
    assert.match(screen, /24 80/);
    assert.match(screen, /xterm-256color/);
    assert.match(screen, /30 100/);
    assert.equal(await sbx.pty.kill(t.pid), true);
    await t.wait().catch(() => undefined);
  });
});
