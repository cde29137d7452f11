-- The document store (`/sfp/api/doc-store`): release definitions, build metadata. A key is
-- a path (`releases/2026/r1`); its first segment is the document's collection. Every write
-- is a new version and every version is kept in `doc_version` (deletions too), so history
-- is readable and clients can compare-and-set on `version`.
CREATE TABLE app.doc_collection (
    name       text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]*$' AND char_length(name) <= 128),
    created_by uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE app.doc (
    key        text PRIMARY KEY
               CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$' AND char_length(key) <= 512),
    collection text NOT NULL REFERENCES app.doc_collection (name) ON DELETE CASCADE,
    value      jsonb NOT NULL,
    version    bigint NOT NULL DEFAULT 1,
    created_by uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    updated_by uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (collection = split_part(key, '/', 1))
);
CREATE INDEX doc_collection_key ON app.doc (collection, key);
CREATE INDEX doc_key_prefix ON app.doc (key text_pattern_ops);
-- Containment filters (`value @> {...}`) on any path use this.
CREATE INDEX doc_value ON app.doc USING gin (value jsonb_path_ops);

-- Every version ever written; `value` is NULL for a deletion.
CREATE TABLE app.doc_version (
    key        text NOT NULL,
    version    bigint NOT NULL,
    value      jsonb,
    written_by uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key, version)
);

-- High-volume append-only records of a collection (`?store=changelog`).
CREATE TABLE app.doc_changelog (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection text NOT NULL REFERENCES app.doc_collection (name) ON DELETE CASCADE,
    key        text,
    value      jsonb NOT NULL,
    created_by uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX doc_changelog_collection ON app.doc_changelog (collection, id);

GRANT SELECT, INSERT, UPDATE, DELETE ON app.doc_collection, app.doc, app.doc_version, app.doc_changelog
  TO authenticated, service_role;
ALTER TABLE app.doc_collection ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.doc ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.doc_version ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.doc_changelog ENABLE ROW LEVEL SECURITY;
-- Everyone with a role reads; owners (and their application tokens) write.
CREATE POLICY doc_collection_select ON app.doc_collection FOR SELECT TO authenticated USING ((SELECT private.has_instance_role()));
CREATE POLICY doc_collection_write ON app.doc_collection FOR ALL TO authenticated
  USING ((SELECT private.is_instance_owner())) WITH CHECK ((SELECT private.is_instance_owner()));
CREATE POLICY doc_select ON app.doc FOR SELECT TO authenticated USING ((SELECT private.has_instance_role()));
CREATE POLICY doc_write ON app.doc FOR ALL TO authenticated
  USING ((SELECT private.is_instance_owner())) WITH CHECK ((SELECT private.is_instance_owner()));
CREATE POLICY doc_version_select ON app.doc_version FOR SELECT TO authenticated USING ((SELECT private.has_instance_role()));
CREATE POLICY doc_version_insert ON app.doc_version FOR INSERT TO authenticated WITH CHECK ((SELECT private.is_instance_owner()));
CREATE POLICY doc_changelog_select ON app.doc_changelog FOR SELECT TO authenticated USING ((SELECT private.has_instance_role()));
CREATE POLICY doc_changelog_insert ON app.doc_changelog FOR INSERT TO authenticated WITH CHECK ((SELECT private.is_instance_owner()));
-- Deleting a collection takes its documents' history with it.
CREATE POLICY doc_version_delete ON app.doc_version FOR DELETE TO authenticated USING ((SELECT private.is_instance_owner()));
