// The pieces of isolation that need no container: the egress floor's ranges and rules, and the
// node's files inside a sandbox (written without following links, a sandbox's edits kept).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, symlink, writeFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { egressPolicy, egressRules, nameServersOf, networkOf, parseCidr, parseCidrList } from '../src/runtime/egress-policy.ts';
import { sandboxFileContents, writeSandboxFiles } from '../src/runtime/sandbox-files.ts';

describe('egress floor', () => {
  test('ranges are parsed strictly and normalised to their network', () => {
    assert.equal(parseCidr('192.168.7.9/24'), '192.168.7.0/24');
    assert.equal(parseCidr('10.1.2.3'), '10.1.2.3/32');
    assert.equal(parseCidr(' 0.0.0.0/0 '), '0.0.0.0/0');
    for (const bad of ['192.168.1.0/33', '192.168.1/24', 'example.com/8', '::1/128', '1.2.3.4/', '1.2.3.4/8/8', '1.2.3.4/-1', '1.2.3.4/1e1']) {
      assert.throws(() => parseCidr(bad), /is not an IPv4 range/, bad);
    }
    assert.deepEqual(parseCidrList('10.0.0.0/8, 192.168.1.5', 'X'), ['10.0.0.0/8', '192.168.1.5/32']);
    assert.throws(() => parseCidrList('10.0.0.0/8,nope', 'NESTBOX_EGRESS_ALLOW'), /^Error: NESTBOX_EGRESS_ALLOW: "nope"/);
  });

  test('networkOf keeps exactly the prefix bits', () => {
    fc.assert(
      fc.property(fc.ipV4(), fc.integer({ min: 0, max: 32 }), (addr, prefix) => {
        const net = networkOf(addr, prefix);
        assert.equal(networkOf(net, prefix), net, 'idempotent');
        const bits = (a: string) => a.split('.').map((p) => Number(p).toString(2).padStart(8, '0')).join('');
        assert.equal(bits(net).slice(0, prefix), bits(addr).slice(0, prefix));
        assert.equal(bits(net).slice(prefix), '0'.repeat(32 - prefix));
      }),
    );
  });

  test('the operator allowance comes first, then the name servers, then every refused range', () => {
    const policy = egressPolicy({ allow: ['192.168.214.0/24'], deny: ['8.8.8.8/32'], hostNetworks: ['192.0.2.0/24'], nameServers: ['10.255.255.53'] });
    const rules = egressRules(policy).map((r) => r.join(' '));
    assert.equal(rules[0], '-d 192.168.214.0/24 -j RETURN');
    assert.deepEqual(rules.slice(1, 3), ['-d 10.255.255.53/32 -p udp --dport 53 -j RETURN', '-d 10.255.255.53/32 -p tcp --dport 53 -j RETURN']);
    const refused = rules.slice(3);
    for (const cidr of ['169.254.0.0/16', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', '192.0.2.0/24', '8.8.8.8/32']) {
      assert.ok(refused.includes(`-d ${cidr} -j REJECT --reject-with icmp-admin-prohibited`), cidr);
    }
  });

  test('name servers: IPv4, not loopback, once each', () => {
    assert.deepEqual(nameServersOf('# x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nnameserver 10.0.0.2\noptions edns0\n'), ['10.0.0.2']);
  });
});

describe("the node's files in a sandbox", () => {
  test('written with the owner given; a link planted in their place is never followed', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nestbox-files-'));
    const victim = path.join(dir, 'victim');
    try {
      await writeFile(victim, 'untouched');
      const etc = path.join(dir, 'etc');
      await writeSandboxFiles(etc, sandboxFileContents('sbxhost', '10.88.1.2', 'nameserver 127.0.0.53\nnameserver 10.0.0.2\n'), process.getuid!());
      assert.match(await readFile(path.join(etc, 'hosts'), 'utf8'), /^10\.88\.1\.2\tsbxhost$/m);
      assert.equal(await readFile(path.join(etc, 'hostname'), 'utf8'), 'sbxhost\n', 'the host name given, not a constant');
      assert.equal(await readFile(path.join(etc, 'resolv.conf'), 'utf8'), 'nameserver 10.0.0.2\n');
      await rm(path.join(etc, 'hosts'));
      await symlink(victim, path.join(etc, 'hosts'));
      await assert.rejects(
        writeSandboxFiles(etc, sandboxFileContents('sbxhost', '10.88.1.3', ''), process.getuid!()),
        (e: NodeJS.ErrnoException) => e.code === 'ELOOP',
      );
      assert.equal(await readFile(victim, 'utf8'), 'untouched');
      assert.equal((await stat(victim)).size, 'untouched'.length);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("what the sandbox changed stays; what it did not change follows the node (a new address)", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nestbox-files-'));
    try {
      const uid = process.getuid!();
      const first = await writeSandboxFiles(dir, sandboxFileContents('sbxhost', '10.88.1.2', 'nameserver 10.0.0.2\n'), uid);
      await writeFile(path.join(dir, 'resolv.conf'), 'nameserver 9.9.9.9\n'); // the sandbox's own choice
      const second = await writeSandboxFiles(dir, sandboxFileContents('sbxhost', '10.88.7.7', 'nameserver 10.0.0.3\n'), uid, first);
      assert.equal(await readFile(path.join(dir, 'resolv.conf'), 'utf8'), 'nameserver 9.9.9.9\n');
      assert.match(await readFile(path.join(dir, 'hosts'), 'utf8'), /^10\.88\.7\.7\tsbxhost$/m, 'the address follows the node');
      // and the sandbox's file stays its own on the next start too
      await writeSandboxFiles(dir, sandboxFileContents('sbxhost', '10.88.7.8', 'nameserver 10.0.0.4\n'), uid, second);
      assert.equal(await readFile(path.join(dir, 'resolv.conf'), 'utf8'), 'nameserver 9.9.9.9\n');
      // a huge file cannot be the node's: it is kept too, and never read whole
      await writeFile(path.join(dir, 'hostname'), 'x'.repeat(1 << 20));
      await writeSandboxFiles(dir, sandboxFileContents('sbxhost', '10.88.7.9', ''), uid, second);
      assert.equal((await stat(path.join(dir, 'hostname'))).size, 1 << 20);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
