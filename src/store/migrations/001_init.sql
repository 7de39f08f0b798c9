-- Nestbox schema v1. One dialect: Postgres (PGlite embedded, a Postgres server in production).

CREATE TABLE teams (
  id            text PRIMARY KEY,
  name          text NOT NULL,
  max_running   integer NOT NULL DEFAULT 20,      -- concurrent running sandboxes (429 past it)
  max_timeout_s integer NOT NULL DEFAULT 86400,   -- longest timeout a sandbox may ask for
  created_at    timestamptz NOT NULL DEFAULT now(),
  seq           bigserial                         -- creation order; PGlite's clock has ms ties
);

CREATE TABLE api_keys (
  id           text PRIMARY KEY,
  team_id      text NOT NULL REFERENCES teams(id),
  key_hash     text NOT NULL UNIQUE,              -- sha256 hex of the whole key; the key is shown once
  key_mask     text NOT NULL,                     -- e2b_ab…cdef, for listings
  name         text NOT NULL DEFAULT '',
  created_at   timestamptz NOT NULL DEFAULT now(),
  seq          bigserial,                         -- creation order; PGlite's clock has ms ties
  last_used_at timestamptz,
  revoked_at   timestamptz
);

CREATE TABLE nodes (
  id           text PRIMARY KEY,
  url          text NOT NULL,
  token        text NOT NULL,
  state        text NOT NULL DEFAULT 'ready',     -- ready | draining | down
  last_seen_at timestamptz,
  created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sandboxes (
  id                  text PRIMARY KEY,
  team_id             text NOT NULL REFERENCES teams(id),
  template_id         text NOT NULL,
  node_id             text REFERENCES nodes(id),
  state               text NOT NULL,
  generation          bigint NOT NULL DEFAULT 1,  -- bumped by every transition; fences stale writers
  cpu_count           integer NOT NULL,
  memory_mb           integer NOT NULL,
  disk_mb             integer NOT NULL,
  metadata            jsonb NOT NULL DEFAULT '{}',
  env_vars            jsonb NOT NULL DEFAULT '{}',
  envd_access_token   text NOT NULL,
  allow_internet      boolean NOT NULL DEFAULT true,
  secure              boolean NOT NULL DEFAULT true,
  auto_pause          boolean NOT NULL DEFAULT false,  -- on timeout: pause instead of kill
  auto_pause_memory   boolean NOT NULL DEFAULT true,
  auto_resume         boolean NOT NULL DEFAULT false,
  timeout_ms          bigint NOT NULL,                 -- the last timeout asked for
  end_at              timestamptz,                     -- set while running; null otherwise
  remaining_ms        bigint,                          -- time left, kept while paused
  started_at          timestamptz NOT NULL,
  state_changed_at    timestamptz NOT NULL,
  last_reason         text NOT NULL,
  created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandboxes_team_state ON sandboxes (team_id, state);
CREATE INDEX sandboxes_end_at ON sandboxes (end_at) WHERE state = 'running';
CREATE INDEX sandboxes_node ON sandboxes (node_id) WHERE state NOT IN ('killed', 'failed');

-- The outbox: every state change appends exactly one event in the same transaction.
CREATE TABLE lifecycle_events (
  seq         bigserial PRIMARY KEY,
  id          uuid NOT NULL UNIQUE,
  sandbox_id  text NOT NULL,
  team_id     text NOT NULL,
  from_state  text,
  to_state    text NOT NULL,
  reason      text NOT NULL,
  generation  bigint NOT NULL,
  at          timestamptz NOT NULL
);
CREATE INDEX lifecycle_events_sandbox ON lifecycle_events (sandbox_id, seq);

-- Where each outbox consumer (webhooks, event stream) has read up to.
CREATE TABLE outbox_cursors (
  consumer text PRIMARY KEY,
  last_seq bigint NOT NULL DEFAULT 0
);

-- The usage ledger: intervals in which a sandbox was running, opened and closed only by events.
CREATE TABLE usage_intervals (
  sandbox_id       text NOT NULL,
  team_id          text NOT NULL,
  opened_event_id  uuid PRIMARY KEY,
  opened_at        timestamptz NOT NULL,
  closed_event_id  uuid UNIQUE,
  closed_at        timestamptz,
  cpu_count        integer NOT NULL,
  memory_mb        integer NOT NULL
);
-- At most one open interval per sandbox.
CREATE UNIQUE INDEX usage_one_open ON usage_intervals (sandbox_id) WHERE closed_at IS NULL;
CREATE INDEX usage_team ON usage_intervals (team_id, opened_at);
CREATE INDEX usage_sandbox ON usage_intervals (sandbox_id, opened_at);
