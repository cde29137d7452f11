-- The policy helpers in PL/pgSQL instead of SQL. A SQL function that is SECURITY DEFINER
-- (or has a SET clause) is never inlined, and its body is parsed and planned again at every
-- statement that calls it: under load that was a third of PostgreSQL's CPU (every policy
-- check is one such call). A PL/pgSQL function keeps its plan for the whole session.
-- Same names, arguments, results and privileges.
CREATE OR REPLACE FUNCTION private.is_instance_owner() RETURNS boolean
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = '' AS $$
BEGIN
  RETURN EXISTS (SELECT 1 FROM app.user_role r WHERE r.user_id = auth.uid() AND r.role = 'owner');
END
$$;

CREATE OR REPLACE FUNCTION private.has_instance_role() RETURNS boolean
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = '' AS $$
BEGIN
  RETURN EXISTS (SELECT 1 FROM app.user_role r WHERE r.user_id = auth.uid());
END
$$;

CREATE OR REPLACE FUNCTION private.is_team_member(team uuid, min_role text DEFAULT 'member') RETURNS boolean
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = '' AS $$
BEGIN
  RETURN EXISTS (SELECT 1 FROM app.team_member m
                 WHERE m.team_id = team AND m.user_id = auth.uid()
                   AND (min_role = 'member' OR m.role = 'owner'));
END
$$;

-- The read policy of the data stores for a given user, for point reads that make the
-- policy's decision in the statement itself instead of in a transaction with the claims set
-- (one round trip instead of three; the decision is the same function's).
CREATE FUNCTION private.user_has_instance_role(uid uuid) RETURNS boolean
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = '' AS $$
BEGIN
  RETURN EXISTS (SELECT 1 FROM app.user_role r WHERE r.user_id = uid);
END
$$;
REVOKE ALL ON FUNCTION private.user_has_instance_role(uuid) FROM public;
