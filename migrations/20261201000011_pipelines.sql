-- Release pipelines (`/sfp/api/pipelines`): versioned YAML definitions per project, each
-- version registered with the engine as a Hatchet workflow, and their runs.
CREATE TABLE app.pipeline (
    id            uuid PRIMARY KEY,
    project       text NOT NULL DEFAULT '' CHECK (char_length(project) <= 200),
    name          text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_-]*$' AND char_length(name) <= 64),
    version       int NOT NULL CHECK (version > 0),
    workflow_name text NOT NULL,
    created_by    uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project, name)
);

CREATE TABLE app.pipeline_version (
    pipeline_id uuid NOT NULL REFERENCES app.pipeline (id) ON DELETE CASCADE,
    version     int NOT NULL,
    source      text NOT NULL,
    definition  jsonb NOT NULL,
    created_by  uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline_id, version)
);

CREATE TABLE app.pipeline_run (
    id          uuid PRIMARY KEY,
    pipeline_id uuid NOT NULL REFERENCES app.pipeline (id) ON DELETE CASCADE,
    version     int NOT NULL,
    run_id      uuid,
    created_by  uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pipeline_run_by_pipeline ON app.pipeline_run (pipeline_id, created_at DESC);

GRANT SELECT, INSERT, UPDATE, DELETE ON app.pipeline, app.pipeline_version, app.pipeline_run TO authenticated, service_role;
ALTER TABLE app.pipeline ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.pipeline_version ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.pipeline_run ENABLE ROW LEVEL SECURITY;
-- Everyone with a role reads pipelines and runs them; owners (and their application
-- tokens) define them.
CREATE POLICY pipeline_select ON app.pipeline FOR SELECT TO authenticated USING ((SELECT private.has_instance_role()));
CREATE POLICY pipeline_write ON app.pipeline FOR ALL TO authenticated
  USING ((SELECT private.is_instance_owner())) WITH CHECK ((SELECT private.is_instance_owner()));
CREATE POLICY pipeline_version_select ON app.pipeline_version FOR SELECT TO authenticated USING ((SELECT private.has_instance_role()));
CREATE POLICY pipeline_version_write ON app.pipeline_version FOR INSERT TO authenticated
  WITH CHECK ((SELECT private.is_instance_owner()));
CREATE POLICY pipeline_run_select ON app.pipeline_run FOR SELECT TO authenticated USING ((SELECT private.has_instance_role()));
CREATE POLICY pipeline_run_insert ON app.pipeline_run FOR INSERT TO authenticated
  WITH CHECK ((SELECT private.has_instance_role()) AND created_by = auth.uid());
CREATE POLICY pipeline_run_update ON app.pipeline_run FOR UPDATE TO authenticated
  USING ((SELECT private.has_instance_role())) WITH CHECK ((SELECT private.has_instance_role()));
