// The fleet membership protocol, the calls a node makes to the control plane: it joins with a
// join token and gets its own credential, then heartbeats with that credential. The control
// plane's routes are declared with these schemas; the agent builds its requests as these types
// and reads the answers as them. A field cannot differ between the sides.
import { Type, type Static } from 'typebox';

/** Route patterns on the control plane's API (Fastify syntax; fill with nodePath). */
export const MEMBERSHIP_ROUTES = {
  /** POST: join with a join token (201 Joined). */
  join: '/nestbox/v1/nodes/join',
  /** POST: a heartbeat, the node's credential as bearer token (200 HeartbeatAnswer). */
  heartbeat: '/nestbox/v1/nodes/:id/heartbeat',
} as const;

/** A node's id: its name in the fleet (NESTBOX_NODE_ID). */
export const NODE_ID_PATTERN = '^[a-z0-9][a-z0-9._-]{0,62}$';
export const NODE_ID_RULES = "1-63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit";
export const NodeId = Type.String({ pattern: NODE_ID_PATTERN, description: 'The node\'s name (NESTBOX_NODE_ID)' });

/** A template's name as a node reports it. */
export const TEMPLATE_NAME_PATTERN = '^[a-z0-9][a-z0-9._-]{0,62}$';

export const NodeCapacityFields = {
  cpuCount: Type.Integer({ minimum: 0, maximum: 4096 }),
  memoryMB: Type.Integer({ minimum: 0, maximum: 64 * 1024 * 1024 }),
  diskMB: Type.Integer({ minimum: 0, maximum: 1024 * 1024 * 1024 }),
  maxSandboxes: Type.Integer({ minimum: 0, maximum: 100_000 }),
};

const NodeReportFields = {
  url: Type.String({ minLength: 1, maxLength: 2048, pattern: '^https?://', description: 'Where the control plane reaches the agent' }),
  ...NodeCapacityFields,
  templates: Type.Array(Type.String({ pattern: TEMPLATE_NAME_PATTERN }), { maxItems: 1000 }),
  version: Type.String({ maxLength: 64 }),
};

/** What a node tells the control plane about itself, at join and in every heartbeat (the heartbeat's body). */
export const NodeReport = Type.Object(NodeReportFields, { additionalProperties: false });
export type NodeReport = Static<typeof NodeReport>;

export const JoinBody = Type.Object(
  {
    joinToken: Type.String({ minLength: 1, maxLength: 256 }),
    nodeId: NodeId,
    nodeToken: Type.String({ minLength: 16, maxLength: 256, description: 'The bearer token the control plane presents to the agent' }),
    ...NodeReportFields,
  },
  { additionalProperties: false },
);
export type JoinBody = Static<typeof JoinBody>;

export const Joined = Type.Object({
  nodeId: Type.String(),
  credential: Type.String({ description: "The node's own credential for heartbeats: shown this once" }),
  heartbeatMs: Type.Integer(),
});
export type Joined = Static<typeof Joined>;

export const HeartbeatAnswer = Type.Object({
  state: Type.String(),
  cordoned: Type.Boolean({ description: 'The operator drained this node' }),
  heartbeatMs: Type.Integer(),
});
export type HeartbeatAnswer = Static<typeof HeartbeatAnswer>;

/**
 * The statuses the membership calls answer with, and what the agent does on each: a heartbeat
 * refused `unauthorized` (the node was removed) makes it join again when it has a join token; a
 * join refused `memberAlready` means another agent holds the id.
 */
export const MEMBERSHIP_STATUS = {
  joined: 201,
  heartbeat: 200,
  /** A wrong, expired or revoked join token; or a credential that is void (the node was removed). */
  unauthorized: 401,
  /** A join under the id of a node that is a member (not removed). */
  memberAlready: 409,
} as const;

/** An error answer of a membership call (the control plane's error body). */
export interface MembershipFailure {
  code?: number;
  message?: string;
}
