-- The two hottest writes as one statement each, still under row-level security: each
-- function sets `role` and `request.jwt.claims` for the transaction (as PostgREST and the
-- server's `begin_as` do) and then runs the write, which PL/pgSQL plans as `authenticated`,
-- so every policy applies. Called in autocommit, the settings end with the statement.
--
-- Whoever may call these can claim to be anyone: they are revoked from everybody; only the
-- server's own role (the owner of the schema) executes them.

-- A key-value upsert without an expected version; an expired row starts anew.
CREATE FUNCTION private.kv_upsert_as(claims text, k text, v jsonb, t text[], ttl float8)
  RETURNS SETOF app.kv_entry LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_catalog.set_config('role', 'authenticated', true);
  PERFORM pg_catalog.set_config('request.jwt.claims', claims, true);
  RETURN QUERY
    INSERT INTO app.kv_entry AS e (key, value, tags, expires_at, created_by, updated_by)
    VALUES (k, v, coalesce(t, '{}'), now() + make_interval(secs => ttl), auth.uid(), auth.uid())
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value,
      tags = CASE WHEN e.expires_at <= now() THEN EXCLUDED.tags ELSE coalesce(t, e.tags) END,
      expires_at = EXCLUDED.expires_at,
      version = CASE WHEN e.expires_at <= now() THEN 1 ELSE e.version + 1 END,
      created_at = CASE WHEN e.expires_at <= now() THEN now() ELSE e.created_at END,
      created_by = CASE WHEN e.expires_at <= now() THEN auth.uid() ELSE e.created_by END,
      updated_by = auth.uid(), updated_at = now()
    RETURNING e.*;
END
$$;
REVOKE ALL ON FUNCTION private.kv_upsert_as(text, text, jsonb, text[], float8) FROM public;

-- A document write: the collection exists from its first document; the row (if any) is
-- locked so the version check and the write are one decision; an update or an insert (after
-- a deletion the versions go on from the last one); the new version in the history. No row
-- written (all but `current` null): the document is not at `expected`.
CREATE FUNCTION private.doc_write_as(claims text, k text, coll text, v jsonb, expected bigint)
  RETURNS TABLE (current bigint, created boolean, key text, collection text, value jsonb, version bigint,
                 created_at timestamptz, updated_at timestamptz)
  LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
  PERFORM pg_catalog.set_config('role', 'authenticated', true);
  PERFORM pg_catalog.set_config('request.jwt.claims', claims, true);
  RETURN QUERY
    WITH new_collection AS (
      INSERT INTO app.doc_collection (name, created_by) SELECT coll, auth.uid()
      WHERE NOT EXISTS (SELECT 1 FROM app.doc_collection c WHERE c.name = coll) ON CONFLICT DO NOTHING),
    found AS (SELECT d.version FROM app.doc d WHERE d.key = k FOR UPDATE),
    updated AS (
      UPDATE app.doc d SET value = v, version = d.version + 1, updated_by = auth.uid(), updated_at = now()
      FROM found f WHERE d.key = k AND (expected IS NULL OR f.version = expected) RETURNING d.*),
    inserted AS (
      INSERT INTO app.doc AS d (key, collection, value, version, created_by, updated_by)
      SELECT k, coll, v, coalesce((SELECT max(h.version) FROM app.doc_version h WHERE h.key = k), 0) + 1,
             auth.uid(), auth.uid()
      WHERE NOT EXISTS (SELECT 1 FROM found) AND coalesce(expected, 0) = 0 RETURNING d.*),
    written AS (SELECT u.*, false AS is_new FROM updated u UNION ALL SELECT i.*, true FROM inserted i),
    history AS (
      INSERT INTO app.doc_version (key, version, value, written_by)
      SELECT w.key, w.version, w.value, auth.uid() FROM written w)
    SELECT (SELECT f.version FROM found f), w.is_new, w.key, w.collection, w.value, w.version, w.created_at,
           w.updated_at
    FROM (SELECT 1) one LEFT JOIN written w ON true;
END
$$;
REVOKE ALL ON FUNCTION private.doc_write_as(text, text, text, jsonb, bigint) FROM public;
