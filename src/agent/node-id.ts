import { readFileSync } from 'node:fs';
import os from 'node:os';
import { NODE_ID_PATTERN, NODE_ID_RULES } from '../node-api/membership.ts';

const NODE_ID = new RegExp(NODE_ID_PATTERN);

/** Names every host may carry: no use as a node id, two hosts would claim the same one. */
const SHARED_HOSTNAMES = new Set(['localhost', 'localhost.localdomain', 'local']);

/**
 * A node id made of this host's name (lower-cased, each run of other characters made '-', cut
 * to 63), or, for a name that says nothing (empty, localhost), of its machine id (`node-` and
 * its first 12 hex digits). Null when neither gives one. The same host gives the same id at
 * every start, so a restarted agent comes back as the node it was.
 */
export function nodeIdOfHost(hostname: string, machineId: string | null): string | null {
  const name = hostname.trim().toLowerCase().replace(/[^a-z0-9._-]+/g, '-').replace(/^[^a-z0-9]+/, '').slice(0, 63);
  if (name && !SHARED_HOSTNAMES.has(name) && NODE_ID.test(name)) return name;
  const mid = machineId?.trim().toLowerCase() ?? '';
  return /^[0-9a-f]{12,}$/.test(mid) ? `node-${mid.slice(0, 12)}` : null;
}

/** This host's machine id (systemd's, or D-Bus's), or null. */
function machineId(): string | null {
  for (const file of ['/etc/machine-id', '/var/lib/dbus/machine-id']) {
    try {
      return readFileSync(file, 'utf8');
    } catch {
      /* next */
    }
  }
  return null;
}

/** The id of a node that joins a fleet without --node-id or NESTBOX_NODE_ID: its host's. */
export function defaultFleetNodeId(): string {
  const id = nodeIdOfHost(os.hostname(), machineId());
  if (!id) {
    throw new Error(`this host's name (${JSON.stringify(os.hostname())}) and machine id give no node id: `
      + `give the node one with --node-id or NESTBOX_NODE_ID (${NODE_ID_RULES})`);
  }
  return id;
}

/** Checks a node id given on the command line or in NESTBOX_NODE_ID. */
export function checkNodeId(id: string): string {
  if (!NODE_ID.test(id)) throw new Error(`node id ${JSON.stringify(id)} is not valid: it must be ${NODE_ID_RULES}`);
  return id;
}
