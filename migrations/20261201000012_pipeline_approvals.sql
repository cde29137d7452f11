-- Approval gates of pipeline runs. The engine holds the waiting step (assigned to the
-- control plane's approval worker, never to a worker pool); the decision lives here, so it
-- survives restarts of either and reaches whichever server process holds the step.
CREATE TABLE app.pipeline_approval (
    task_run_id  uuid PRIMARY KEY,
    pipeline_run uuid NOT NULL REFERENCES app.pipeline_run (id) ON DELETE CASCADE,
    step         text NOT NULL,
    message      text,
    status       text NOT NULL CHECK (status IN ('waiting', 'approved', 'rejected')),
    comment      text,
    decided_by   uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    decided_at   timestamptz,
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pipeline_approval_by_run ON app.pipeline_approval (pipeline_run, status);

GRANT SELECT, INSERT, UPDATE ON app.pipeline_approval TO authenticated, service_role;
ALTER TABLE app.pipeline_approval ENABLE ROW LEVEL SECURITY;
CREATE POLICY pipeline_approval_select ON app.pipeline_approval FOR SELECT TO authenticated
  USING ((SELECT private.has_instance_role()));
-- Only owners decide.
CREATE POLICY pipeline_approval_decide ON app.pipeline_approval FOR UPDATE TO authenticated
  USING ((SELECT private.is_instance_owner())) WITH CHECK ((SELECT private.is_instance_owner()));
