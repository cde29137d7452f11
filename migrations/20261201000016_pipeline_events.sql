-- Events that start pipelines (`POST /sfp/api/pipeline-events`): each one kept with the runs
-- it started, so who started what, and why, can be read back.
CREATE TABLE app.pipeline_event (
    id         uuid PRIMARY KEY,
    key        text NOT NULL,
    payload    jsonb NOT NULL DEFAULT '{}',
    -- [{"pipeline", "project", "runId"}]
    runs       jsonb NOT NULL DEFAULT '[]',
    created_by uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pipeline_event_key ON app.pipeline_event (key, created_at DESC);
GRANT SELECT, INSERT ON app.pipeline_event TO authenticated, service_role;
ALTER TABLE app.pipeline_event ENABLE ROW LEVEL SECURITY;
CREATE POLICY pipeline_event_select ON app.pipeline_event FOR SELECT TO authenticated
  USING ((SELECT private.has_instance_role()));
CREATE POLICY pipeline_event_insert ON app.pipeline_event FOR INSERT TO authenticated
  WITH CHECK ((SELECT private.has_instance_role()) AND created_by = auth.uid());
