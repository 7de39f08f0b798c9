-- Nestbox schema v3: operator (admin) keys, apart from the teams' API keys. An admin key manages
-- teams and belongs to none: it never acts on sandboxes, and a team key never manages teams.

CREATE TABLE admin_keys (
  id           text PRIMARY KEY,
  key_hash     text NOT NULL UNIQUE,              -- sha256 hex of the whole key; the key is shown once
  key_mask     text NOT NULL,                     -- nestbox_admin_ab…cdef, for listings
  name         text NOT NULL DEFAULT '',
  created_at   timestamptz NOT NULL DEFAULT now(),
  seq          bigserial,                         -- creation order; PGlite's clock has ms ties
  last_used_at timestamptz,
  revoked_at   timestamptz
);

-- Team names are unique (case-insensitively) among teams the admin API creates; it looks them up.
CREATE INDEX teams_lower_name ON teams (lower(name));
CREATE INDEX api_keys_team ON api_keys (team_id, seq);
