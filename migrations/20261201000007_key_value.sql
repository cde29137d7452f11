-- The key-value store (`/sfp/api/key-value`): quick flags and counters for pipelines.
-- Every write bumps `version`, so clients can compare-and-set; `expires_at` makes a key
-- vanish for reads at once, and the server's sweep deletes it later.
CREATE TABLE app.kv_entry (
    key        text PRIMARY KEY CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9._:/@-]*$' AND char_length(key) <= 512),
    value      jsonb NOT NULL,
    version    bigint NOT NULL DEFAULT 1,
    tags       text[] NOT NULL DEFAULT '{}',
    expires_at timestamptz,
    created_by uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    updated_by uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kv_entry_key_prefix ON app.kv_entry (key text_pattern_ops);
CREATE INDEX kv_entry_tags ON app.kv_entry USING gin (tags);
CREATE INDEX kv_entry_expiry ON app.kv_entry (expires_at) WHERE expires_at IS NOT NULL;

-- Whether the caller has a role on this instance (owner or member; an application token
-- acts as its creator).
CREATE FUNCTION private.has_instance_role() RETURNS boolean
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
  SELECT EXISTS (SELECT 1 FROM app.user_role r WHERE r.user_id = auth.uid())
$$;
REVOKE ALL ON FUNCTION private.has_instance_role() FROM public;
GRANT EXECUTE ON FUNCTION private.has_instance_role() TO authenticated;

GRANT SELECT, INSERT, UPDATE, DELETE ON app.kv_entry TO authenticated, service_role;
ALTER TABLE app.kv_entry ENABLE ROW LEVEL SECURITY;
-- Everyone with a role reads; owners (and application tokens of owners) write.
CREATE POLICY kv_select ON app.kv_entry FOR SELECT TO authenticated USING ((SELECT private.has_instance_role()));
CREATE POLICY kv_write ON app.kv_entry FOR ALL TO authenticated
  USING ((SELECT private.is_instance_owner())) WITH CHECK ((SELECT private.is_instance_owner()));
