-- Nestbox schema v4: a fleet. Nodes join with a join token and get a credential of their own;
-- they report capacity and templates in heartbeats; the operator drains and removes them.

ALTER TABLE nodes ADD COLUMN credential_hash text UNIQUE;           -- sha256 of the node's credential (heartbeats); null: none
ALTER TABLE nodes ADD COLUMN cpu_count       integer NOT NULL DEFAULT 0;  -- capacity; 0: unknown (no limit applied)
ALTER TABLE nodes ADD COLUMN memory_mb       integer NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN disk_mb         integer NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN max_sandboxes   integer NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN templates       jsonb NOT NULL DEFAULT '[]';  -- names; [] with a static node: unknown
ALTER TABLE nodes ADD COLUMN version         text NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN cordoned        boolean NOT NULL DEFAULT false;  -- the operator's drain (nestbox nodes drain)
ALTER TABLE nodes ADD COLUMN removed_at      timestamptz;                 -- removed: its credential is void

CREATE TABLE node_join_tokens (
  id          text PRIMARY KEY,
  token_hash  text NOT NULL UNIQUE,       -- sha256 hex; the token is shown once
  created_at  timestamptz NOT NULL DEFAULT now(),
  seq         bigserial,
  expires_at  timestamptz NOT NULL,
  revoked_at  timestamptz,
  last_used_at timestamptz
);
