// The network hook (sandbox-init's nestbox-net-hook) on a real network namespace: what runc
// gets wired at create and restore (the pair, addresses, routes, no IPv6 on either side,
// unprivileged ping), and input it refuses without touching the host.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, readlinkSync } from 'node:fs';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';

const HOOK = runtimeConfigFromEnv().networkHook;
const HOST_IF = `nbhooktest${process.pid % 100000}`.slice(0, 15);
const ADDRESS = '10.251.7.9';
const GATEWAY = '10.251.0.1';
let holder: ChildProcess; // a process in a network namespace of its own, as runc's init is

function hook(args: string[], state: string) {
  return spawnSync(HOOK, args, { input: state, encoding: 'utf8' });
}
function ip(args: string[], inside = false) {
  const argv = inside ? ['nsenter', '-t', String(holder.pid), '-n', 'ip', ...args] : ['ip', ...args];
  return spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' }).stdout;
}
function inside(file: string) {
  return spawnSync('nsenter', ['-t', String(holder.pid), '-n', 'cat', file], { encoding: 'utf8' }).stdout.trim();
}

before(async () => {
  holder = spawn('unshare', ['-n', 'sleep', '600'], { stdio: 'ignore' });
  // Until it is in a namespace of its own (and has become sleep), the hook would wire the host's.
  const ours = readlinkSync('/proc/self/ns/net');
  const ready = () => {
    try {
      return readlinkSync(`/proc/${holder.pid}/ns/net`) !== ours && readFileSync(`/proc/${holder.pid}/comm`, 'utf8').trim() === 'sleep';
    } catch {
      return false;
    }
  };
  while (!ready()) {
    assert.equal(holder.exitCode, null, 'unshare -n sleep runs');
    await new Promise((r) => setTimeout(r, 10));
  }
});

after(() => {
  spawnSync('ip', ['link', 'del', HOST_IF]);
  holder?.kill('SIGKILL');
});

test('refused input: a bad interface name or address, a state without a pid; nothing is made', () => {
  const state = JSON.stringify({ ociVersion: '1.0.2', id: 'x', status: 'creating', pid: holder.pid });
  for (const [args, why] of [
    [['../../etc', ADDRESS, GATEWAY], /bad interface name/],
    [['a'.repeat(16), ADDRESS, GATEWAY], /bad interface name/],
    [[HOST_IF, '10.251.7', GATEWAY], /ADDRESS/],
    [[HOST_IF, ADDRESS], /usage/],
  ] as const) {
    const r = hook([...args], state);
    assert.equal(r.status, 1, `${args.join(' ')}`);
    assert.match(r.stderr, why);
  }
  for (const bad of ['', '{"pid": 0}', '{"status":"creating"}', '{"pid": "12"}', 'x'.repeat(100_000)]) {
    const r = hook([HOST_IF, ADDRESS, GATEWAY], bad);
    assert.equal(r.status, 1, `state ${bad.slice(0, 30)}`);
    assert.match(r.stderr, /no pid in it|reading the container state/);
  }
  assert.equal(ip(['-o', 'link', 'show', 'dev', HOST_IF]), '', 'no link was made');
});

test('the pair, its addresses and routes, no IPv6 on either side, unprivileged ping inside', () => {
  const r = hook([HOST_IF, ADDRESS, GATEWAY], JSON.stringify({ ociVersion: '1.0.2', id: 'x', status: 'creating', pid: holder.pid, bundle: '/b' }));
  assert.equal(r.status, 0, r.stderr);
  // The host's side: the gateway's address, up, a route to the sandbox's address over it.
  assert.match(ip(['-o', '-4', 'addr', 'show', 'dev', HOST_IF]), new RegExp(`inet ${GATEWAY}/32 `));
  assert.match(ip(['-o', 'link', 'show', 'dev', HOST_IF]), /[<,]UP[,>]/);
  assert.match(ip(['route', 'show', `${ADDRESS}/32`]), new RegExp(`^${ADDRESS} dev ${HOST_IF} .*scope link`));
  assert.equal(readFileSync(`/proc/sys/net/ipv6/conf/${HOST_IF}/disable_ipv6`, 'utf8').trim(), '1');
  assert.equal(ip(['-o', '-6', 'addr', 'show', 'dev', HOST_IF]), '', 'no IPv6 address on the host side');
  // The sandbox's side: eth0 with its address, lo up, a route to the gateway and the default via it.
  assert.match(ip(['-o', '-4', 'addr', 'show', 'dev', 'eth0'], true), new RegExp(`inet ${ADDRESS}/32 `));
  assert.match(ip(['-o', 'link', 'show', 'dev', 'lo'], true), /[<,]UP[,>]/);
  const routes = ip(['route', 'show'], true);
  assert.match(routes, new RegExp(`^default via ${GATEWAY} dev eth0`, 'm'));
  assert.match(routes, new RegExp(`^${GATEWAY} dev eth0 .*scope link`, 'm'));
  assert.equal(inside('/proc/sys/net/ipv6/conf/eth0/disable_ipv6'), '1');
  assert.equal(ip(['-o', '-6', 'addr', 'show', 'dev', 'eth0'], true), '', 'no IPv6 address on eth0');
  assert.match(ip(['-o', '-6', 'addr', 'show', 'dev', 'lo'], true), /::1\/128/, 'loopback keeps ::1');
  assert.equal(inside('/proc/sys/net/ipv4/ping_group_range').split(/\s+/).join(' '), '0 2147483647');
  // A second run finds the link there and fails (the agent removes leftovers before a start).
  const again = hook([HOST_IF, ADDRESS, GATEWAY], JSON.stringify({ pid: holder.pid }));
  assert.equal(again.status, 1);
  assert.match(again.stderr, /creating the veth pair: File exists/);
});
