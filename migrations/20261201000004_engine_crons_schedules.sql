-- Work that starts on its own: crons (from workflow definitions or created through the API)
-- and one-off scheduled runs. `cron_fire` has one row per cron and tick, written in the same
-- transaction as the run it started: a tick fires once, whatever restarts or however many
-- engine processes race for it.

CREATE TABLE engine.cron (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES engine.tenant (id),
    workflow_id         uuid NOT NULL REFERENCES engine.workflow (id) ON DELETE CASCADE,
    name                text NOT NULL,
    expression          text NOT NULL,
    input               jsonb NOT NULL DEFAULT '{}',
    additional_metadata jsonb NOT NULL DEFAULT '{}',
    priority            int,
    -- DEFAULT: declared in the workflow definition; API: created through REST
    method              text NOT NULL CHECK (method IN ('DEFAULT', 'API')),
    enabled             boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workflow_id, name)
);

CREATE TABLE engine.cron_fire (
    cron_id uuid NOT NULL REFERENCES engine.cron (id) ON DELETE CASCADE,
    tick    timestamptz NOT NULL,
    run_id  uuid NOT NULL,
    PRIMARY KEY (cron_id, tick)
);

CREATE TABLE engine.scheduled_run (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES engine.tenant (id),
    workflow_id         uuid NOT NULL REFERENCES engine.workflow (id) ON DELETE CASCADE,
    trigger_at          timestamptz NOT NULL,
    input               jsonb NOT NULL DEFAULT '{}',
    additional_metadata jsonb NOT NULL DEFAULT '{}',
    priority            int,
    method              text NOT NULL DEFAULT 'API' CHECK (method IN ('DEFAULT', 'API')),
    run_id              uuid,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX scheduled_run_due ON engine.scheduled_run (trigger_at) WHERE run_id IS NULL;
