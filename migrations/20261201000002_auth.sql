-- Identity: users, identities, sessions and refresh tokens with the column names of Supabase
-- GoTrue's `auth` schema (written here from its documented shape), so a real GoTrue on the
-- same database and our /auth/v1 subset read and write the same rows. Plus the control
-- plane's own access data: instance roles, application tokens, the audit log.

CREATE TABLE auth.users (
    instance_id          uuid,
    id                   uuid PRIMARY KEY,
    aud                  varchar(255),
    role                 varchar(255),
    email                varchar(255),
    encrypted_password   varchar(255),
    email_confirmed_at   timestamptz,
    invited_at           timestamptz,
    confirmation_token   varchar(255),
    confirmation_sent_at timestamptz,
    recovery_token       varchar(255),
    recovery_sent_at     timestamptz,
    last_sign_in_at      timestamptz,
    raw_app_meta_data    jsonb,
    raw_user_meta_data   jsonb,
    is_super_admin       boolean,
    created_at           timestamptz,
    updated_at           timestamptz,
    phone                text UNIQUE DEFAULT NULL,
    phone_confirmed_at   timestamptz,
    banned_until         timestamptz,
    is_sso_user          boolean NOT NULL DEFAULT false,
    deleted_at           timestamptz,
    is_anonymous         boolean NOT NULL DEFAULT false
);
-- One account per address, whatever its case (GoTrue's partial unique index).
CREATE UNIQUE INDEX users_email_partial_key ON auth.users (lower(email)) WHERE is_sso_user = false;

CREATE TABLE auth.identities (
    provider_id     text NOT NULL,
    user_id         uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    identity_data   jsonb NOT NULL,
    provider        text NOT NULL,
    last_sign_in_at timestamptz,
    created_at      timestamptz,
    updated_at      timestamptz,
    email           text GENERATED ALWAYS AS (lower(identity_data ->> 'email')) STORED,
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    UNIQUE (provider_id, provider)
);
CREATE INDEX identities_user_id_idx ON auth.identities (user_id);

CREATE TYPE auth.aal_level AS ENUM ('aal1', 'aal2', 'aal3');

CREATE TABLE auth.sessions (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    created_at   timestamptz,
    updated_at   timestamptz,
    factor_id    uuid,
    aal          auth.aal_level,
    not_after    timestamptz,
    refreshed_at timestamp,
    user_agent   text,
    ip           inet,
    tag          text
);
CREATE INDEX sessions_user_id_idx ON auth.sessions (user_id);

CREATE TABLE auth.refresh_tokens (
    instance_id uuid,
    id          bigserial PRIMARY KEY,
    token       varchar(255) UNIQUE,
    user_id     varchar(255),
    revoked     boolean,
    created_at  timestamptz,
    updated_at  timestamptz,
    parent      varchar(255),
    session_id  uuid REFERENCES auth.sessions (id) ON DELETE CASCADE
);
CREATE INDEX refresh_tokens_session_id_revoked_idx ON auth.refresh_tokens (session_id, revoked);

-- What request is being served, for row-level security policies: read the claim GUC first,
-- then the JSON one (PostgREST sets `request.jwt.claims`). `nullif(.., '')` because a custom
-- GUC reads as '' once the transaction that set it is over.
CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                  nullif(current_setting('request.jwt.claims', true), ''))::jsonb
$$;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
  SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid
$$;
CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $$
  SELECT coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'))::text
$$;
CREATE FUNCTION auth.email() RETURNS text LANGUAGE sql STABLE AS $$
  SELECT coalesce(nullif(current_setting('request.jwt.claim.email', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email'))::text
$$;

-- The control plane's role of each user on this instance (owner or member). Application
-- tokens carry the role `application` and act for the user who made them.
CREATE TABLE app.user_role (
    user_id    uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('owner', 'member')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Application tokens: only the SHA-256 of the token is kept; it is shown once.
CREATE TABLE app.application_token (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    token_hash   bytea NOT NULL UNIQUE,
    prefix       text NOT NULL,
    created_by   uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    CHECK (expires_at > created_at)
);
CREATE INDEX application_token_created_by ON app.application_token (created_by);

-- Every authenticated request: who, as what, did what, to what, with which outcome.
-- Append-only: the server's role can insert and read, never change or delete.
CREATE TABLE app.audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    request_id  text,
    actor_id    uuid,
    actor_email text,
    actor_kind  text NOT NULL CHECK (actor_kind IN ('user', 'application', 'anonymous')),
    role        text,
    token_id    uuid,
    method      text NOT NULL,
    route       text NOT NULL,
    path        text NOT NULL,
    target      text,
    status      int NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('allowed', 'denied', 'failed')),
    client_ip   inet
);
CREATE INDEX audit_log_at ON app.audit_log (at DESC);
CREATE INDEX audit_log_actor ON app.audit_log (actor_id, at DESC);

CREATE FUNCTION app.audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON app.audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION app.audit_log_is_append_only();

-- Single sign-on providers (SAML), as GoTrue keeps them; the SSO flows come later and read
-- these rows.
CREATE TABLE auth.sso_providers (
    id          uuid PRIMARY KEY,
    resource_id text CHECK (resource_id IS NULL OR char_length(resource_id) > 0),
    created_at  timestamptz,
    updated_at  timestamptz,
    disabled    boolean
);
CREATE UNIQUE INDEX sso_providers_resource_id_idx ON auth.sso_providers (lower(resource_id));

CREATE TABLE auth.sso_domains (
    id              uuid PRIMARY KEY,
    sso_provider_id uuid NOT NULL REFERENCES auth.sso_providers (id) ON DELETE CASCADE,
    domain          text NOT NULL CHECK (char_length(domain) > 0),
    created_at      timestamptz,
    updated_at      timestamptz
);
CREATE UNIQUE INDEX sso_domains_domain_idx ON auth.sso_domains (lower(domain));

CREATE TABLE auth.saml_providers (
    id                uuid PRIMARY KEY,
    sso_provider_id   uuid NOT NULL REFERENCES auth.sso_providers (id) ON DELETE CASCADE,
    entity_id         text NOT NULL UNIQUE CHECK (char_length(entity_id) > 0),
    metadata_xml      text NOT NULL CHECK (char_length(metadata_xml) > 0),
    metadata_url      text CHECK (metadata_url IS NULL OR char_length(metadata_url) > 0),
    attribute_mapping jsonb,
    name_id_format    text,
    created_at        timestamptz,
    updated_at        timestamptz
);

-- GoTrue keeps its tables closed to the API roles: row-level security on, no policies.
ALTER TABLE auth.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth.identities ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth.sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth.refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth.sso_providers ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth.sso_domains ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth.saml_providers ENABLE ROW LEVEL SECURITY;
