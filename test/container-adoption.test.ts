// runc's state of a container made ahead, rewritten for the sandbox that takes it (pure), and the
// host link naming that lets a sandbox keep the link its container was made with.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { adoptedState, cgroupNameOf } from '../src/runtime/container-adoption.ts';
import { hostIfFor } from '../src/runtime/network.ts';

const FROM = '/data/root-pool/pool-0123456789ab';
const TO = '/data/sandboxes/abcdefghij0123456789';

function madeAhead() {
  return {
    id: 'pool-0123456789ab',
    init_process_pid: 4242,
    init_process_start: '99',
    config: {
      rootfs: `${FROM}/rootfs`,
      hostname: 'pool-0123456789ab',
      labels: [`bundle=${FROM}`, `org.criu.config=${FROM}/criu.conf`],
      mounts: [
        { source: 'proc', destination: '/proc' },
        { source: `${FROM}/disk/etc/hosts`, destination: '/etc/hosts' },
        { source: `${FROM}-other/x`, destination: '/x' }, // shares the prefix, not the directory
      ],
      hooks: { createContainer: [{ path: '/usr/lib/nestbox/bind-hook', args: ['nestbox-bind-hook', `${FROM}/disk/etc/boot_id`, `${FROM}/rootfs/proc/sys/kernel/random/boot_id`] }] },
      cgroups: { path: '/nestbox/pool-0123456789ab' },
    },
    cgroup_paths: { memory: '/sys/fs/cgroup/memory/nestbox/pool-0123456789ab' },
    namespace_paths: { NEWNET: '/proc/4242/ns/net' },
  };
}

test("an adopted container's state names the sandbox: its id, host name and directory; its init, namespaces and cgroups stay", () => {
  const out = adoptedState(madeAhead(), { id: 'abcdefghij0123456789', fromDir: FROM, toDir: TO, hostname: 'abcdefghij0123456789' }) as ReturnType<typeof madeAhead>;
  assert.equal(out.id, 'abcdefghij0123456789');
  assert.equal(out.config.hostname, 'abcdefghij0123456789');
  assert.equal(out.config.rootfs, `${TO}/rootfs`);
  assert.deepEqual(out.config.labels, [`bundle=${TO}`, `org.criu.config=${TO}/criu.conf`]);
  assert.deepEqual(out.config.mounts.map((m) => m.source), ['proc', `${TO}/disk/etc/hosts`, `${FROM}-other/x`]);
  assert.deepEqual(out.config.hooks.createContainer[0]!.args, ['nestbox-bind-hook', `${TO}/disk/etc/boot_id`, `${TO}/rootfs/proc/sys/kernel/random/boot_id`]);
  assert.equal(out.init_process_pid, 4242);
  assert.equal(out.init_process_start, '99');
  assert.deepEqual(out.namespace_paths, { NEWNET: '/proc/4242/ns/net' });
  assert.deepEqual(out.cgroup_paths, madeAhead().cgroup_paths, 'cgroups keep their name (cgroup v2 cannot rename them)');
  assert.equal(cgroupNameOf(out), 'pool-0123456789ab');
  assert.equal(cgroupNameOf({ id: 'x', config: { cgroups: { path: '/nestbox/abc' } } }), 'abc');
  assert.ok(!JSON.stringify(out).includes(`${FROM}/`), 'no path under the pool entry is left');
});

test('host link names: one per address, unique, within the kernel\'s 15 characters', () => {
  fc.assert(fc.property(fc.ipV4(), fc.ipV4(), (x, y) => {
    assert.ok(hostIfFor(x).length <= 15);
    assert.match(hostIfFor(x), /^nbh[0-9a-f]{8}$/);
    assert.equal(hostIfFor(x) === hostIfFor(y), x === y);
  }));
});
