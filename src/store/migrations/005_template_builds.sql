-- Nestbox schema v5: template builds (E2B's Template builder). A build is asked for (waiting:
-- files may be uploaded), started with its steps (building), and ends ready or error. Its log
-- lines are kept in order; the runner's heartbeat tells a live build from one whose control
-- plane stopped.

CREATE TABLE template_builds (
  id            text PRIMARY KEY,                 -- the build id (uuid), E2B's buildID
  team_id       text NOT NULL REFERENCES teams(id),
  template_name text NOT NULL,                    -- the template it makes: E2B's templateID and name
  status        text NOT NULL,                    -- waiting | building | ready | error
  cpu_count     integer,                          -- as asked by the build request (kept, not applied)
  memory_mb     integer,
  spec          jsonb,                            -- the started build: base, steps, start and ready commands
  sandbox_id    text,                             -- the sandbox the steps run in, while it runs
  reason        text,                             -- why it failed
  reason_step   text,                             -- the step that failed (E2B's step names: base, 1.., finalize)
  heartbeat_at  timestamptz,                      -- the runner's last sign of life while building
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  finished_at   timestamptz,
  seq           bigserial
);
CREATE INDEX template_builds_team_name ON template_builds (team_id, template_name);
-- At most one unfinished build makes a given template.
CREATE UNIQUE INDEX template_builds_one_unfinished ON template_builds (template_name) WHERE status IN ('waiting', 'building');

CREATE TABLE template_build_logs (
  build_id  text NOT NULL REFERENCES template_builds(id) ON DELETE CASCADE,
  n         integer NOT NULL,                     -- 0, 1, 2, ...: E2B's logsOffset counts these
  at        timestamptz NOT NULL DEFAULT now(),
  level     text NOT NULL,                        -- debug | info | warn | error
  step      text,
  message   text NOT NULL,
  PRIMARY KEY (build_id, n)
);
