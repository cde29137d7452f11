-- Teams, their members and projects, protected by row-level security the way Supabase does
-- it: the server runs each request's queries as the `authenticated` role with the caller's
-- claims in `request.jwt.claims`, and the policies below decide what rows exist for it. A
-- handler that forgets a check still cannot see another team's rows.

-- Supabase's API roles (they already exist on a Supabase Postgres). Roles are global to the
-- cluster, so another database may have made them first.
DO $$
BEGIN
  CREATE ROLE anon NOLOGIN NOINHERIT;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
DO $$
BEGIN
  CREATE ROLE authenticated NOLOGIN NOINHERIT;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
DO $$
BEGIN
  CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

CREATE TABLE app.team (
    id         uuid PRIMARY KEY,
    slug       text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name       text NOT NULL,
    created_by uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE app.team_member (
    team_id  uuid NOT NULL REFERENCES app.team (id) ON DELETE CASCADE,
    user_id  uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    role     text NOT NULL CHECK (role IN ('owner', 'member')),
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_member_user ON app.team_member (user_id, team_id);

CREATE TABLE app.project (
    id            uuid PRIMARY KEY,
    identifier    text NOT NULL UNIQUE,
    remote_url    text NOT NULL,
    platform      text NOT NULL,
    team_id       uuid REFERENCES app.team (id) ON DELETE SET NULL,
    configuration jsonb NOT NULL DEFAULT '{}',
    version       int NOT NULL DEFAULT 1,
    created_by    uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX project_team ON app.project (team_id);

-- Policy helpers: SECURITY DEFINER so policies can read membership without being subject
-- to the policies of the membership tables themselves.
CREATE SCHEMA IF NOT EXISTS private;

CREATE FUNCTION private.is_instance_owner() RETURNS boolean
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
  SELECT EXISTS (SELECT 1 FROM app.user_role r WHERE r.user_id = auth.uid() AND r.role = 'owner')
$$;

CREATE FUNCTION private.is_team_member(team uuid, min_role text DEFAULT 'member') RETURNS boolean
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
  SELECT EXISTS (SELECT 1 FROM app.team_member m
                 WHERE m.team_id = team AND m.user_id = auth.uid()
                   AND (min_role = 'member' OR m.role = 'owner'))
$$;

REVOKE ALL ON FUNCTION private.is_instance_owner() FROM public;
REVOKE ALL ON FUNCTION private.is_team_member(uuid, text) FROM public;
GRANT USAGE ON SCHEMA private, app, auth TO authenticated, service_role;
GRANT EXECUTE ON FUNCTION private.is_instance_owner() TO authenticated;
GRANT EXECUTE ON FUNCTION private.is_team_member(uuid, text) TO authenticated;
GRANT EXECUTE ON FUNCTION auth.uid(), auth.role(), auth.jwt(), auth.email() TO authenticated, anon, service_role;

GRANT SELECT, INSERT, UPDATE, DELETE ON app.team, app.team_member, app.project TO authenticated, service_role;

ALTER TABLE app.team ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.team_member ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.project ENABLE ROW LEVEL SECURITY;

-- Teams: members see their teams; instance owners see and manage all of them.
CREATE POLICY team_select ON app.team FOR SELECT TO authenticated
  USING ((SELECT private.is_instance_owner()) OR (SELECT private.is_team_member(id)));
CREATE POLICY team_write ON app.team FOR ALL TO authenticated
  USING ((SELECT private.is_instance_owner())) WITH CHECK ((SELECT private.is_instance_owner()));

-- Members: visible to the team's members; managed by instance owners and team owners.
CREATE POLICY team_member_select ON app.team_member FOR SELECT TO authenticated
  USING ((SELECT private.is_instance_owner()) OR (SELECT private.is_team_member(team_id)));
CREATE POLICY team_member_write ON app.team_member FOR ALL TO authenticated
  USING ((SELECT private.is_instance_owner()) OR (SELECT private.is_team_member(team_id, 'owner')))
  WITH CHECK ((SELECT private.is_instance_owner()) OR (SELECT private.is_team_member(team_id, 'owner')));

-- Projects: a team's projects are its members'; projects without a team are the owners'.
CREATE POLICY project_select ON app.project FOR SELECT TO authenticated
  USING ((SELECT private.is_instance_owner()) OR (team_id IS NOT NULL AND (SELECT private.is_team_member(team_id))));
CREATE POLICY project_write ON app.project FOR ALL TO authenticated
  USING ((SELECT private.is_instance_owner()) OR (team_id IS NOT NULL AND (SELECT private.is_team_member(team_id, 'owner'))))
  WITH CHECK ((SELECT private.is_instance_owner()) OR (team_id IS NOT NULL AND (SELECT private.is_team_member(team_id, 'owner'))));
