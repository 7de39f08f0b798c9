-- Nestbox schema v6: named snapshots. A snapshot of a running sandbox (its memory and files;
-- the sandbox went on running) that new sandboxes are created from, like a template. Its files
-- are in the snapshot store under its id; this row is what makes it the team's. The row comes
-- first: a stored snapshot that no row names is an orphan, and the reconciler removes it.

CREATE TABLE snapshots (
  id            text PRIMARY KEY,                 -- snap-<20 alphanumerics>: the store key
  team_id       text NOT NULL REFERENCES teams(id),
  name          text,                             -- optional; unique in the team
  sandbox_id    text NOT NULL,                    -- the sandbox it was taken of
  template_id   text NOT NULL,                    -- that sandbox's template (the snapshot's lower layer)
  cpu_count     integer NOT NULL,
  memory_mb     integer NOT NULL,
  disk_size_mb  integer NOT NULL,
  kind          text NOT NULL DEFAULT 'named',    -- named | fork (a fork's source, removed when the fork is done)
  ready         boolean NOT NULL DEFAULT false,   -- the store holds it complete (the row is written before the node dumps)
  created_at    timestamptz NOT NULL DEFAULT now(),
  seq           bigserial
);
CREATE UNIQUE INDEX snapshots_team_name ON snapshots (team_id, name) WHERE name IS NOT NULL;
CREATE INDEX snapshots_team_sandbox ON snapshots (team_id, sandbox_id);
