-- Server processes remember who a credential belongs to for a few seconds
-- (`[auth] identity_cache_secs`). Every change that could alter that answer notifies
-- `sfp_identity` with the user's id, so each process forgets the user at once.
CREATE FUNCTION private.notify_identity_change() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
  who text := coalesce(to_jsonb(NEW) ->> TG_ARGV[0], to_jsonb(OLD) ->> TG_ARGV[0]);
BEGIN
  PERFORM pg_notify('sfp_identity', coalesce(who, ''));
  RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION private.notify_identity_change() FROM public;

CREATE TRIGGER identity_change AFTER INSERT OR UPDATE OR DELETE ON auth.users
  FOR EACH ROW EXECUTE FUNCTION private.notify_identity_change('id');
CREATE TRIGGER identity_change AFTER UPDATE OR DELETE ON auth.sessions
  FOR EACH ROW EXECUTE FUNCTION private.notify_identity_change('user_id');
CREATE TRIGGER identity_change AFTER INSERT OR UPDATE OR DELETE ON app.user_role
  FOR EACH ROW EXECUTE FUNCTION private.notify_identity_change('user_id');
CREATE TRIGGER identity_change AFTER UPDATE OR DELETE ON app.application_token
  FOR EACH ROW EXECUTE FUNCTION private.notify_identity_change('created_by');
