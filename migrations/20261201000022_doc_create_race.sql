-- Two first writes of one new document at the same time (no expected version): both found
-- no document and both inserted; the second insert waited for the first and then failed on
-- the key (23505), a 409 "retry" to a caller who had asked for no version check at all.
-- Now the insert does nothing on a key that exists by then (it still waits for the other
-- transaction) and the write starts over: an update of the document just created, so both
-- writes count, as two updates would. A write that expected a version (or no document)
-- gets its conflict as before. Everything else is as in 20261201000021.
CREATE OR REPLACE FUNCTION private.doc_write_for(uid uuid, k text, coll text, v jsonb, expected bigint)
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
  LOOP
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
      ON CONFLICT (key) DO NOTHING
      RETURNING x.* INTO d;
    IF FOUND THEN
      INSERT INTO app.doc_version (key, version, value, written_by) VALUES (d.key, d.version, d.value, uid);
      RETURN QUERY SELECT NULL::bigint, true, d.key, d.collection, d.value, d.version, d.created_at, d.updated_at;
      RETURN;
    END IF;
    -- Created meanwhile by a transaction that has committed: write again, as an update.
  END LOOP;
END
$$;
REVOKE ALL ON FUNCTION private.doc_write_for(uuid, text, text, jsonb, bigint) FROM public;
