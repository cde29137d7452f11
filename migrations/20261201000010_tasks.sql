-- Tasks (`/sfp/api/tasks`): what users submitted, and what became of it. Each task is a
-- Hatchet workflow run (or a schedule, or a cron of runs) on the engine; the control plane
-- keeps the task's own record here and follows its runs through the Hatchet protocol.
CREATE TABLE app.task (
    id               uuid PRIMARY KEY,
    type             text NOT NULL CHECK (char_length(type) BETWEEN 1 AND 50),
    data             jsonb NOT NULL,
    priority         text NOT NULL CHECK (priority IN ('critical', 'normal', 'batch')),
    schedule_type    text NOT NULL CHECK (schedule_type IN ('immediate', 'scheduled', 'recurring')),
    scheduled_for    timestamptz,
    cron             text,
    timeout_seconds  int NOT NULL CHECK (timeout_seconds > 0),
    retries          int NOT NULL CHECK (retries >= 0),
    status           text NOT NULL CHECK (status IN ('pending', 'active', 'completed', 'failed', 'cancelled')),
    progress         int NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    progress_message text,
    error            jsonb,
    result           jsonb,
    -- The engine run of this task (for a recurring task, its latest instance).
    run_id           uuid,
    -- The engine's scheduled run or cron behind a scheduled or recurring task.
    engine_schedule  text,
    recurring        boolean NOT NULL DEFAULT false,
    -- When the engine accepted the run, schedule or cron; unset tasks are dispatched again
    -- by the server's outbox loop (the engine was unreachable when they were submitted).
    dispatched_at    timestamptz,
    dispatch_error   text,
    created_by       uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_by_token uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_run ON app.task (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX task_undispatched ON app.task (created_at) WHERE dispatched_at IS NULL;
CREATE INDEX task_unfinished ON app.task (updated_at) WHERE status IN ('pending', 'active');
CREATE INDEX task_list ON app.task (created_at DESC, id DESC);
CREATE INDEX task_type_status ON app.task (type, status, created_at DESC);

-- The runs of a recurring task, one row per instance the engine started.
CREATE TABLE app.task_instance (
    task_id     uuid NOT NULL REFERENCES app.task (id) ON DELETE CASCADE,
    run_id      uuid NOT NULL,
    status      text NOT NULL CHECK (status IN ('pending', 'active', 'completed', 'failed', 'cancelled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (task_id, run_id)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON app.task, app.task_instance TO authenticated, service_role;
ALTER TABLE app.task ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.task_instance ENABLE ROW LEVEL SECURITY;
-- Everyone with a role submits and reads tasks; a task's creator and owners cancel it (the
-- server checks who cancels; the follower writes states as service_role).
CREATE POLICY task_select ON app.task FOR SELECT TO authenticated USING ((SELECT private.has_instance_role()));
CREATE POLICY task_insert ON app.task FOR INSERT TO authenticated
  WITH CHECK ((SELECT private.has_instance_role()) AND created_by = auth.uid());
CREATE POLICY task_update ON app.task FOR UPDATE TO authenticated
  USING ((SELECT private.is_instance_owner()) OR created_by = auth.uid())
  WITH CHECK ((SELECT private.is_instance_owner()) OR created_by = auth.uid());
CREATE POLICY task_instance_select ON app.task_instance FOR SELECT TO authenticated
  USING ((SELECT private.has_instance_role()));

-- Watchers (and, later, realtime) hear of every change of a task's state or progress.
CREATE FUNCTION app.task_notify() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
  PERFORM pg_notify('sfp_tasks', json_build_object(
    'taskId', NEW.id, 'status', NEW.status, 'progress', NEW.progress)::text);
  RETURN NEW;
END $$;
CREATE TRIGGER task_changed AFTER INSERT OR UPDATE OF status, progress ON app.task
  FOR EACH ROW EXECUTE FUNCTION app.task_notify();
