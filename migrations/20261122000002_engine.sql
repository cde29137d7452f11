-- The embedded Hatchet-protocol engine. One tenant per engine database is the normal case,
-- but every row carries its tenant so tokens of other tenants can never reach it.

CREATE TABLE engine.tenant (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE engine.workflow (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES engine.tenant (id),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

-- A new version only when the definition's checksum changes.
CREATE TABLE engine.workflow_version (
    id               uuid PRIMARY KEY,
    workflow_id      uuid NOT NULL REFERENCES engine.workflow (id) ON DELETE CASCADE,
    version_order    bigint NOT NULL,
    checksum         text NOT NULL,
    version          text NOT NULL DEFAULT '',
    definition       jsonb NOT NULL,
    event_triggers   text[] NOT NULL DEFAULT '{}',
    cron_triggers    text[] NOT NULL DEFAULT '{}',
    cron_input       jsonb,
    default_priority int NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workflow_id, checksum),
    UNIQUE (workflow_id, version_order)
);

CREATE TABLE engine.step (
    id                  uuid PRIMARY KEY,
    workflow_version_id uuid NOT NULL REFERENCES engine.workflow_version (id) ON DELETE CASCADE,
    readable_id         text NOT NULL,
    action              text NOT NULL,
    timeout_ms          bigint NOT NULL,
    schedule_timeout_ms bigint NOT NULL,
    retries             int NOT NULL DEFAULT 0,
    backoff_factor      double precision,
    backoff_max_seconds int,
    parents             text[] NOT NULL DEFAULT '{}',
    slot_units          int NOT NULL DEFAULT 1,
    UNIQUE (workflow_version_id, readable_id)
);

CREATE TABLE engine.workflow_run (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES engine.tenant (id),
    workflow_id         uuid NOT NULL REFERENCES engine.workflow (id) ON DELETE CASCADE,
    workflow_version_id uuid NOT NULL REFERENCES engine.workflow_version (id) ON DELETE CASCADE,
    status              text NOT NULL DEFAULT 'QUEUED'
        CHECK (status IN ('QUEUED', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    input               jsonb NOT NULL DEFAULT '{}',
    additional_metadata jsonb NOT NULL DEFAULT '{}',
    priority            int NOT NULL DEFAULT 1,
    parent_task_id      uuid,
    child_index         int,
    child_key           text,
    triggered_by        text NOT NULL DEFAULT 'manual',
    event_id            uuid,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz
);
CREATE INDEX workflow_run_tenant_created ON engine.workflow_run (tenant_id, created_at DESC);
CREATE INDEX workflow_run_unfinished ON engine.workflow_run (tenant_id) WHERE finished_at IS NULL;

-- One row per task of a run; `retry_count` is the current attempt (0 = first).
CREATE TABLE engine.task (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL,
    run_id          uuid NOT NULL REFERENCES engine.workflow_run (id) ON DELETE CASCADE,
    step_id         uuid NOT NULL REFERENCES engine.step (id) ON DELETE CASCADE,
    task_number     bigint GENERATED ALWAYS AS IDENTITY,
    readable_id     text NOT NULL,
    action          text NOT NULL,
    status          text NOT NULL
        CHECK (status IN ('PENDING', 'QUEUED', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    retry_count     int NOT NULL DEFAULT 0,
    -- retries spent on failures the task reported (worker loss does not spend them)
    app_retries     int NOT NULL DEFAULT 0,
    pending_parents int NOT NULL DEFAULT 0,
    priority        int NOT NULL DEFAULT 1,
    output          jsonb,
    error           text,
    worker_id       uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    queued_at       timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    UNIQUE (run_id, readable_id)
);
CREATE INDEX task_run ON engine.task (run_id);

-- Work waiting for a worker: highest priority first, then first in, first out.
CREATE TABLE engine.queue_item (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           uuid NOT NULL,
    task_id             uuid NOT NULL REFERENCES engine.task (id) ON DELETE CASCADE,
    retry_count         int NOT NULL,
    action              text NOT NULL,
    priority            int NOT NULL,
    schedule_timeout_at timestamptz NOT NULL,
    UNIQUE (task_id, retry_count)
);
CREATE INDEX queue_item_pick ON engine.queue_item (action, priority DESC, id);

-- An attempt that a worker holds. Events for attempts without a row here are stale.
CREATE TABLE engine.task_runtime (
    task_id     uuid NOT NULL REFERENCES engine.task (id) ON DELETE CASCADE,
    retry_count int NOT NULL,
    worker_id   uuid NOT NULL,
    slot_units  int NOT NULL DEFAULT 1,
    timeout_at  timestamptz NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, retry_count)
);
CREATE INDEX task_runtime_worker ON engine.task_runtime (worker_id);
CREATE INDEX task_runtime_timeout ON engine.task_runtime (timeout_at);

-- Retries waiting for their backoff to pass.
CREATE TABLE engine.retry_queue_item (
    task_id     uuid NOT NULL REFERENCES engine.task (id) ON DELETE CASCADE,
    retry_count int NOT NULL,
    retry_after timestamptz NOT NULL,
    PRIMARY KEY (task_id, retry_count)
);
CREATE INDEX retry_queue_item_due ON engine.retry_queue_item (retry_after);

CREATE TABLE engine.worker (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES engine.tenant (id),
    name              text NOT NULL,
    actions           text[] NOT NULL,
    slots             int NOT NULL,
    labels            jsonb NOT NULL DEFAULT '{}',
    runtime_info      jsonb,
    is_active         boolean NOT NULL DEFAULT false,
    is_paused         boolean NOT NULL DEFAULT false,
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    last_listener_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- What happened to each task attempt (monitoring; the REST run view reads it).
CREATE TABLE engine.task_event (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id     uuid NOT NULL REFERENCES engine.task (id) ON DELETE CASCADE,
    retry_count int NOT NULL,
    event_type  text NOT NULL,
    worker_id   uuid,
    message     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_event_task ON engine.task_event (task_id, id);
-- STARTED is recorded once per attempt, however often (and however concurrently) it is sent.
CREATE UNIQUE INDEX task_event_started_once ON engine.task_event (task_id, retry_count) WHERE event_type = 'STARTED';

CREATE TABLE engine.log_line (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id     uuid NOT NULL REFERENCES engine.task (id) ON DELETE CASCADE,
    retry_count int NOT NULL DEFAULT 0,
    level       text NOT NULL DEFAULT 'INFO',
    message     text NOT NULL,
    metadata    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX log_line_task ON engine.log_line (task_id, id);

CREATE TABLE engine.event (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES engine.tenant (id),
    key                 text NOT NULL,
    payload             jsonb NOT NULL DEFAULT '{}',
    additional_metadata jsonb NOT NULL DEFAULT '{}',
    scope               text,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_tenant_created ON engine.event (tenant_id, created_at DESC);

-- The key tenant tokens are signed with. Kept here so every engine process on the database
-- signs and checks with the same key.
CREATE TABLE engine.signing_key (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    tenant_id  uuid NOT NULL REFERENCES engine.tenant (id),
    secret     bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
