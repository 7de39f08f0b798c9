// The short chaos run inside `make test` (the long one: `make chaos`). It must end with no
// violation of the lifecycle's invariants; see test/chaos/chaos.ts for what is done and checked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatResult, runChaos } from './chaos/chaos.ts';

test('chaos (short): crashes and faults under concurrent clients leave no invariant broken', async (t) => {
  const r = await runChaos({
    ops: Number(process.env.CHAOS_OPS ?? 150), crashes: Number(process.env.CHAOS_CRASHES ?? 6), clients: 6,
    checkpointFault: 0.1, restoreFault: 0.1, nodeTimeoutFault: 0.05, dbDrops: 3, maxLive: 8,
    log: (m) => t.diagnostic(m),
  });
  t.diagnostic(formatResult(r));
  assert.ok(r.crashes.controlPlane + r.crashes.agent >= 4, 'the run crashed both processes several times');
  assert.ok(r.faults.dbDrops >= 1);
  assert.ok(r.sandboxes > 10, 'the run did real work');
  assert.deepEqual(r.violations, []);
});

test('chaos (short, fleet): replicas and agents killed, nodes drained, under concurrent clients leave no invariant broken', async (t) => {
  const r = await runChaos({
    ops: Number(process.env.CHAOS_FLEET_OPS ?? 100), crashes: 4, clients: 6,
    checkpointFault: 0.1, restoreFault: 0.1, nodeTimeoutFault: 0.05, dbDrops: 2, maxLive: 8,
    fleet: { agents: 3, replicas: 2 },
    log: (m) => t.diagnostic(m),
  });
  t.diagnostic(formatResult(r));
  // Four events, one of each kind: a replica and an agent killed, a drain, an agent's own drain.
  assert.equal(r.crashes.controlPlane, 1);
  assert.equal(r.crashes.agent, 1);
  assert.equal(r.fleet!.drains, 1);
  assert.equal(r.fleet!.gracefulStops, 1);
  assert.ok(r.sandboxes > 10, 'the run did real work');
  assert.deepEqual(r.violations, []);
});
