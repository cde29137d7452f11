-- Stream chunks (PutStreamEvent) live in the task event log beside the lifecycle events, so
-- one id order serves both and a subscriber that arrives late still gets every chunk.
ALTER TABLE engine.task_event ADD COLUMN payload bytea, ADD COLUMN event_index bigint;

-- Engine processes on this database, so that each knows whether others exist to be woken
-- by NOTIFY (a lone engine sends none). Rows of processes gone for good just age out.
CREATE TABLE engine.process (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now()
);
