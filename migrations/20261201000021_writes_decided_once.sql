-- The two hottest writes make the data stores' write decision once, in the statement,
-- instead of under row-level security. Under the policies a document write evaluated the
-- owner check about ten times (the collection's insert and its select, the document's
-- select, update and insert checks, the history's select and insert), each a SECURITY
-- DEFINER call with its own settings to save and restore, and parsed the JSON claims again
-- for every `auth.uid()`: half of PostgreSQL's time under the API's write load.
--
-- The decision is the policies' own (`kv_write`, `doc_write`, `doc_collection_write`,
-- `doc_version_insert`: owners write, and application tokens act for their user), made
-- from the user id the server authenticated; a test holds the two paths to the same answer
-- for owners, members and users without a role. The policies stay and still guard every
-- other way in (the transaction path of the other writes, database clients with claims).
--
-- Whoever may call these can claim to be anyone: they are revoked from everybody; only the
-- server's own role (the owner of the schema and the tables) executes them.

DROP FUNCTION private.kv_upsert_as(text, text, jsonb, text[], float8);
-- The point reads' decision is now a condition in the statement (`paging::CALLER_MAY_READ`).
DROP FUNCTION private.user_has_instance_role(uuid);
DROP FUNCTION private.doc_write_as(text, text, text, jsonb, bigint);

-- A key-value upsert without an expected version; an expired row starts anew. Refused
-- (42501, as the policy would) unless `uid` may write.
CREATE FUNCTION private.kv_upsert_for(uid uuid, k text, v jsonb, t text[], ttl float8)
  RETURNS SETOF app.kv_entry LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM app.user_role r WHERE r.user_id = uid AND r.role = 'owner') THEN
    RAISE EXCEPTION 'only owners and their applications write the key-value store' USING ERRCODE = '42501';
  END IF;
  RETURN QUERY
    INSERT INTO app.kv_entry AS e (key, value, tags, expires_at, created_by, updated_by)
    VALUES (k, v, coalesce(t, '{}'), now() + make_interval(secs => ttl), uid, uid)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value,
      tags = CASE WHEN e.expires_at <= now() THEN EXCLUDED.tags ELSE coalesce(t, e.tags) END,
      expires_at = EXCLUDED.expires_at,
      version = CASE WHEN e.expires_at <= now() THEN 1 ELSE e.version + 1 END,
      created_at = CASE WHEN e.expires_at <= now() THEN now() ELSE e.created_at END,
      created_by = CASE WHEN e.expires_at <= now() THEN uid ELSE e.created_by END,
      updated_by = uid, updated_at = now()
    RETURNING e.*;
END
$$;
REVOKE ALL ON FUNCTION private.kv_upsert_for(uuid, text, jsonb, text[], float8) FROM public;

-- A document write, as plain statements (one CTE doing it all cost a tenth more to start
-- at every call): with an expected version other than 0 (or none), an update at that
-- version, which locks the row so the check and the write are one decision; else the
-- document's current version, which makes it a conflict if the document exists or a version
-- was expected; else an insert, creating the collection from its first document (after a
-- deletion the versions go on from the last one in the history). Every write adds its new
-- version to the history. A conflict returns only `current` (null: no document). Refused
-- (42501) unless `uid` may write.
CREATE FUNCTION private.doc_write_for(uid uuid, k text, coll text, v jsonb, expected bigint)
  RETURNS TABLE (current bigint, created boolean, key text, collection text, value jsonb, version bigint,
                 created_at timestamptz, updated_at timestamptz)
  LANGUAGE plpgsql SET search_path = '' AS $$
#variable_conflict use_column
DECLARE
  d app.doc;
  found_version bigint;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM app.user_role r WHERE r.user_id = uid AND r.role = 'owner') THEN
    RAISE EXCEPTION 'only owners and their applications write the document store' USING ERRCODE = '42501';
  END IF;
  IF coalesce(expected, 1) <> 0 THEN
    UPDATE app.doc x SET value = v, version = x.version + 1, updated_by = uid, updated_at = now()
      WHERE x.key = k AND (expected IS NULL OR x.version = expected) RETURNING x.* INTO d;
    IF FOUND THEN
      INSERT INTO app.doc_version (key, version, value, written_by) VALUES (d.key, d.version, d.value, uid);
      RETURN QUERY SELECT d.version - 1, false, d.key, d.collection, d.value, d.version, d.created_at, d.updated_at;
      RETURN;
    END IF;
  END IF;
  SELECT x.version INTO found_version FROM app.doc x WHERE x.key = k;
  IF FOUND OR coalesce(expected, 0) <> 0 THEN
    RETURN QUERY SELECT found_version, NULL::boolean, NULL::text, NULL::text, NULL::jsonb, NULL::bigint,
                        NULL::timestamptz, NULL::timestamptz;
    RETURN;
  END IF;
  INSERT INTO app.doc_collection (name, created_by) VALUES (coll, uid) ON CONFLICT DO NOTHING;
  INSERT INTO app.doc AS x (key, collection, value, version, created_by, updated_by)
    VALUES (k, coll, v, coalesce((SELECT max(h.version) FROM app.doc_version h WHERE h.key = k), 0) + 1, uid, uid)
    RETURNING x.* INTO d;
  INSERT INTO app.doc_version (key, version, value, written_by) VALUES (d.key, d.version, d.value, uid);
  RETURN QUERY SELECT NULL::bigint, true, d.key, d.collection, d.value, d.version, d.created_at, d.updated_at;
END
$$;
REVOKE ALL ON FUNCTION private.doc_write_for(uuid, text, text, jsonb, bigint) FROM public;
