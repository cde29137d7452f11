-- The schemas of an sfp-server database. One ordered set of migrations serves them all:
--   auth   - users, sessions and tokens, shaped like Supabase GoTrue's
--   app    - the control plane's own tables (projects, tasks, documents, key-values, locks, ...)
--   engine - the embedded Hatchet-protocol workflow engine (workflows, runs, queues, workers)
--   vault  - encrypted credentials and their data keys
CREATE SCHEMA IF NOT EXISTS auth;
CREATE SCHEMA IF NOT EXISTS app;
CREATE SCHEMA IF NOT EXISTS engine;
CREATE SCHEMA IF NOT EXISTS vault;

-- Facts about this instance, one row, written at first start.
CREATE TABLE app.instance (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    instance_id uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO app.instance DEFAULT VALUES;
