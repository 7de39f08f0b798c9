-- Nestbox schema v2: per-team webhooks for lifecycle events, fed from the outbox.

CREATE TABLE webhooks (
  id              text PRIMARY KEY,
  team_id         text NOT NULL REFERENCES teams(id),
  url             text NOT NULL,
  secret          text NOT NULL,                -- the HMAC key: kept in clear, signing needs it
  created_at      timestamptz NOT NULL DEFAULT now(),
  seq             bigserial,                    -- creation order; PGlite's clock has ms ties
  deleted_at      timestamptz,                  -- soft delete: the delivery log outlives the webhook
  last_seq        bigint NOT NULL,              -- outbox cursor: every event up to here is handled
  attempts        integer NOT NULL DEFAULT 0,   -- failed attempts of the event after last_seq
  next_attempt_at timestamptz,                  -- backoff; null: due now
  lease_owner     text,                         -- the dispatcher delivering it right now, if any
  lease_until     timestamptz                   -- a lease not renewed by then may be taken over
);
CREATE INDEX webhooks_team ON webhooks (team_id, seq) WHERE deleted_at IS NULL;
CREATE INDEX webhooks_due ON webhooks (next_attempt_at) WHERE deleted_at IS NULL;

-- One row per delivery attempt.
CREATE TABLE webhook_deliveries (
  id          bigserial PRIMARY KEY,
  webhook_id  text NOT NULL REFERENCES webhooks(id),
  event_id    uuid NOT NULL,
  event_seq   bigint NOT NULL,
  sandbox_id  text NOT NULL,
  attempt     integer NOT NULL,
  outcome     text NOT NULL CHECK (outcome IN ('delivered', 'failed', 'gave_up')),
  http_status integer,                          -- null when no response came (timeout, refused)
  error       text,
  duration_ms integer NOT NULL,
  at          timestamptz NOT NULL
);
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id);
