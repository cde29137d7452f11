-- Stream chunks (PutStreamEvent) live in the task event log beside the lifecycle events, so
-- one id order serves both and a subscriber that arrives late still gets every chunk.
ALTER TABLE engine.task_event ADD COLUMN payload bytea, ADD COLUMN event_index bigint;
