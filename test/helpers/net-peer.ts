// Hosts on the far side of the node, for network tests: each peer is a network namespace joined
// to the node by a veth pair, with the addresses and routes a real neighbour would have (a LAN
// host, a cloud metadata service, a server on the internet). Servers run inside with
// `ip netns exec`, so what they see is what crossed the node's firewall.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { run } from '../../src/runtime/command.ts';

export interface NetPeer {
  name: string;
  address: string;
  /** Starts a UDP and TCP echo/log server inside; returns a reader of what it logged. */
  listen(port: number): Promise<PeerLog>;
  close(): Promise<void>;
}

export interface PeerLog {
  /** One entry per UDP datagram or TCP connection: `udp <source> <payload>` / `tcp <source>`. */
  lines(): Promise<string[]>;
}

/**
 * A peer at `address` (a /32 inside), reached from the node through a veth whose node side has
 * `hostAddress` (a /32, or `hostCidr` for a connected LAN subnet).
 */
export async function startPeer(opts: { address: string; hostAddress: string; hostPrefix?: number }): Promise<NetPeer> {
  const tag = randomBytes(3).toString('hex');
  const name = `nbtpeer${tag}`;
  const hostIf = `nbtp${tag}`;
  const prefix = opts.hostPrefix ?? 32;
  await run(['ip', 'netns', 'add', name]);
  const servers: ChildProcess[] = [];
  const logs: string[] = [];
  try {
    await run(['ip', 'link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', name]);
    await run(['ip', 'addr', 'add', `${opts.hostAddress}/${prefix}`, 'dev', hostIf]);
    await run(['ip', 'link', 'set', hostIf, 'up']);
    if (prefix === 32) await run(['ip', 'route', 'replace', `${opts.address}/32`, 'dev', hostIf]);
    const inside = (...argv: string[]) => run(['ip', 'netns', 'exec', name, ...argv]);
    await inside('ip', 'link', 'set', 'lo', 'up');
    await inside('ip', 'addr', 'add', `${opts.address}/${prefix}`, 'dev', 'eth0');
    await inside('ip', 'link', 'set', 'eth0', 'up');
    if (prefix === 32) await inside('ip', 'route', 'add', `${opts.hostAddress}/32`, 'dev', 'eth0');
    await inside('ip', 'route', 'add', 'default', 'via', opts.hostAddress);
  } catch (e) {
    await run(['ip', 'netns', 'del', name], { allowFailure: true });
    throw e;
  }
  return {
    name,
    address: opts.address,
    async listen(port: number) {
      const log = path.join(tmpdir(), `${name}-${port}.log`);
      logs.push(log);
      const script = `
        const dgram = require('node:dgram'); const net = require('node:net'); const fs = require('node:fs');
        const log = (l) => fs.appendFileSync(${JSON.stringify(log)}, l + '\\n');
        const u = dgram.createSocket('udp4');
        u.on('message', (m, r) => { log('udp ' + r.address + ' ' + m.toString()); u.send('echo:' + m, r.port, r.address); });
        u.bind(${port}, ${JSON.stringify(opts.address)});
        net.createServer((c) => { log('tcp ' + c.remoteAddress); c.end('hello from ${opts.address}\\n'); })
          .listen(${port}, ${JSON.stringify(opts.address)}, () => log('ready'));
      `;
      const child = spawn('ip', ['netns', 'exec', name, process.execPath, '-e', script], { stdio: 'ignore' });
      servers.push(child);
      const lines = async () => (await readFile(log, 'utf8').catch(() => '')).split('\n').filter(Boolean);
      for (let i = 0; i < 200 && !(await lines()).includes('ready'); i++) await new Promise((r) => setTimeout(r, 25));
      return { lines: async () => (await lines()).filter((l) => l !== 'ready') };
    },
    async close() {
      for (const s of servers) s.kill('SIGKILL');
      await run(['ip', 'link', 'del', hostIf], { allowFailure: true });
      await run(['ip', 'netns', 'del', name], { allowFailure: true });
      for (const log of logs) await rm(log, { force: true });
    },
  };
}
