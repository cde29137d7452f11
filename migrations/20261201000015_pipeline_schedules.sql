-- Pipelines on a schedule: a cron expression (UTC) per row; the control plane starts a run of
-- the pipeline's latest version when one is due (any server of the database, once).
CREATE TABLE app.pipeline_schedule (
    id          uuid PRIMARY KEY,
    pipeline_id uuid NOT NULL REFERENCES app.pipeline (id) ON DELETE CASCADE,
    cron        text NOT NULL CHECK (char_length(cron) BETWEEN 1 AND 200),
    next_run_at timestamptz NOT NULL,
    last_run_id uuid,
    last_run_at timestamptz,
    runs        int NOT NULL DEFAULT 0,
    last_error  text,
    created_by  uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pipeline_schedule_due ON app.pipeline_schedule (next_run_at);

GRANT SELECT, INSERT, UPDATE, DELETE ON app.pipeline_schedule TO authenticated, service_role;
ALTER TABLE app.pipeline_schedule ENABLE ROW LEVEL SECURITY;
CREATE POLICY pipeline_schedule_select ON app.pipeline_schedule FOR SELECT TO authenticated
  USING ((SELECT private.has_instance_role()));
CREATE POLICY pipeline_schedule_write ON app.pipeline_schedule FOR ALL TO authenticated
  USING ((SELECT private.is_instance_owner())) WITH CHECK ((SELECT private.is_instance_owner()));
