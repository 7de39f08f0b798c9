// End to end: the node agent's port forwarding into a real sandbox (runc container, its own
// network namespace), with a server started inside it through the agent's process API.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createSandbox, exec, sleep, startTestAgent, type TestAgent } from './helpers/agent-harness.ts';

let a: TestAgent;
before(async () => {
  a = await startTestAgent();
});
after(async () => {
  await a?.stop();
});

/** Starts a background process in the sandbox (its output stream is let go; it keeps running). */
async function spawn(id: string, argv: string[], cwd = '/home/user') {
  const res = await a.api('POST', `/v1/sandboxes/${id}/processes`, { argv, cwd });
  if (res.status !== 200) throw new Error(`start ${argv.join(' ')}: ${res.status} ${await res.text()}`);
  await res.body?.cancel();
}

async function waitFor(url: string) {
  for (let i = 0; i < 100; i++) {
    const res = await a.api('GET', url).catch(() => null);
    if (res?.status === 200) return res;
    await res?.body?.cancel();
    await sleep(100);
  }
  throw new Error(`${url} never answered 200`);
}

// A server answering `Upgrade: echo` with 101 and then echoing raw bytes (no WebSocket framing:
// the forwarding relays bytes after the 101 whatever the protocol).
const ECHO_SERVER = `
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get('Upgrade') != 'echo':
            self.send_response(404); self.send_header('Content-Length', '0'); self.end_headers(); return
        self.send_response(101); self.send_header('Upgrade', 'echo'); self.send_header('Connection', 'Upgrade'); self.end_headers()
        self.wfile.flush()
        while True:
            d = self.connection.recv(4096)
            if not d: break
            self.connection.sendall(b'echo:' + d)
        self.close_connection = True
http.server.ThreadingHTTPServer(('0.0.0.0', 8001), H).serve_forever()
`;

function upgrade(id: string, port: number): Promise<{ socket: import('node:net').Socket; status: number }> {
  const u = new URL(a.url);
  return new Promise((resolve, reject) => {
    const req = http.request({
      hostname: u.hostname, port: u.port, path: `/v1/sandboxes/${id}/ports/${port}/`,
      headers: { authorization: `Bearer ${a.agent.nodeToken}`, connection: 'Upgrade', upgrade: 'echo' },
    });
    req.on('upgrade', (res, socket) => resolve({ socket: socket as import('node:net').Socket, status: res.statusCode! }));
    req.on('response', (res) => reject(new Error(`no upgrade: ${res.statusCode}`)));
    req.on('error', reject);
    req.end();
  });
}

const read = (s: import('node:net').Socket) => new Promise<string>((resolve) => s.once('data', (d) => resolve(d.toString())));

describe('port forwarding into a sandbox', () => {
  test('python3 -m http.server 8000, reached through the agent; a closed port is a 502', async () => {
    const id = await createSandbox(a);
    await exec(a, id, 'echo hello-from-the-sandbox > /home/user/hello.txt');
    await spawn(id, ['python3', '-m', 'http.server', '8000']);
    const listing = await waitFor(`/v1/sandboxes/${id}/ports/8000/`);
    assert.match(await listing.text(), /hello\.txt/);
    const file = await a.api('GET', `/v1/sandboxes/${id}/ports/8000/hello.txt?x=1`);
    assert.equal(file.status, 200);
    assert.equal(await file.text(), 'hello-from-the-sandbox\n');
    const missing = await a.api('GET', `/v1/sandboxes/${id}/ports/8000/nope`);
    assert.equal(missing.status, 404, 'the app answers for itself');
    await missing.body?.cancel();

    const closed = await a.api('GET', `/v1/sandboxes/${id}/ports/8002/`);
    assert.equal(closed.status, 502);
    const body = await closed.json();
    assert.equal(body.message, 'The sandbox is running but port is not open');
    assert.equal(body.port, 8002);

    const unknown = await a.api('GET', `/v1/sandboxes/${'z'.repeat(20)}/ports/8000/`);
    assert.equal(unknown.status, 502);
    assert.equal((await unknown.json()).message, 'The sandbox was not found');
    await a.json('DELETE', `/v1/sandboxes/${id}`);
  });

  test('upgrades reach the sandbox; pause cuts them, and after resume the port answers again', async () => {
    const id = await createSandbox(a);
    await spawn(id, ['python3', '-c', ECHO_SERVER]);
    await spawn(id, ['python3', '-m', 'http.server', '8000']);
    await waitFor(`/v1/sandboxes/${id}/ports/8000/`);
    let up: Awaited<ReturnType<typeof upgrade>> | null = null;
    for (let i = 0; i < 150 && !up; i++) {
      up = await upgrade(id, 8001).catch(() => null);
      if (!up) await sleep(100);
    }
    assert.ok(up, 'the echo server upgraded');
    assert.equal(up.status, 101);
    up.socket.write('ping');
    assert.equal(await read(up.socket), 'echo:ping');

    // a checkpoint must not carry the forwarded connection: pause cuts it first
    const closed = new Promise<void>((resolve) => up!.socket.once('close', () => resolve()));
    up.socket.on('error', () => undefined);
    await a.json('POST', `/v1/sandboxes/${id}/pause`, { memory: true });
    await Promise.race([closed, sleep(5000).then(() => Promise.reject(new Error('the forwarded connection outlived the pause')))]);
    await a.json('POST', `/v1/sandboxes/${id}/resume`);
    const again = await waitFor(`/v1/sandboxes/${id}/ports/8000/`);
    assert.equal(again.status, 200);
    await again.body?.cancel();
    const up2 = await upgrade(id, 8001);
    up2.socket.write('pong');
    assert.equal(await read(up2.socket), 'echo:pong');
    up2.socket.destroy();
    await a.json('DELETE', `/v1/sandboxes/${id}`);
  });
});
