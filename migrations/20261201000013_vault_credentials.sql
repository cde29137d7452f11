-- Credentials: Salesforce orgs, integrations (GitHub, Azure DevOps, npm, ...), and what
-- workers may fetch for the step they run.
--
-- Every secret value lives in vault.secret, encrypted by the server before it gets here
-- (XChaCha20-Poly1305 with a data key of its own, wrapped by a key-encryption key that is
-- never in the database; the row id is bound into both ciphertexts). Only the server's
-- privileged connection reads the vault schema: no grants to authenticated or anon.

CREATE TABLE vault.secret (
    id          uuid PRIMARY KEY,
    -- What the secret is for (salesforce_org, integration); informational.
    kind        text NOT NULL,
    -- The key-encryption key that wraps the data key (its id, never the key).
    kek_id      text NOT NULL,
    -- nonce || XChaCha20-Poly1305(kek, data key, aad = id, kek id)
    wrapped_key bytea NOT NULL,
    -- nonce || XChaCha20-Poly1305(data key, value, aad = id)
    ciphertext  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    rewrapped_at timestamptz
);
CREATE INDEX secret_kek ON vault.secret (kek_id);

-- The key every new secret is wrapped with (its id only). `sfp-server secrets rotate`
-- changes it; a server that does not know the id reloads its key file.
CREATE TABLE vault.active_key (
    id     boolean PRIMARY KEY DEFAULT true CHECK (id),
    kek_id text NOT NULL,
    since  timestamptz NOT NULL DEFAULT now()
);

-- Every read of a decrypted credential: by whom, for what, and whether it was given.
CREATE TABLE vault.access_log (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    -- user, application, worker
    actor_kind text NOT NULL,
    actor_id   uuid,
    -- salesforce_org:<username>, integration:<id>, github_app:<repository>
    subject    text NOT NULL,
    -- register, test-connection, frontdoor, auth-url, step:<task>/<step>, credentials
    purpose    text NOT NULL,
    task_id    uuid,
    outcome    text NOT NULL CHECK (outcome IN ('granted', 'refused', 'failed')),
    detail     text
);
CREATE INDEX access_log_at ON vault.access_log (at DESC);
CREATE INDEX access_log_subject ON vault.access_log (subject, at DESC);

CREATE TABLE app.salesforce_org (
    id                         uuid PRIMARY KEY,
    username                   text NOT NULL UNIQUE,
    instance_url               text NOT NULL,
    login_url                  text NOT NULL,
    org_id                     text NOT NULL,
    -- production, sandbox or scratch
    org_type                   text NOT NULL CHECK (org_type IN ('production', 'sandbox', 'scratch')),
    organization_type          text,
    instance_name              text,
    org_name                   text,
    is_devhub                  boolean NOT NULL DEFAULT false,
    is_default                 boolean NOT NULL DEFAULT false,
    parent_production_username text,
    is_jit_registration        boolean NOT NULL DEFAULT false,
    metadata                   jsonb NOT NULL DEFAULT '{}',
    secret_id                  uuid NOT NULL REFERENCES vault.secret (id),
    created_by                 uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    last_connected_at          timestamptz
);
-- One default DevHub at most.
CREATE UNIQUE INDEX salesforce_org_default_devhub ON app.salesforce_org ((true)) WHERE is_default AND is_devhub;

CREATE TABLE app.integration (
    id         uuid PRIMARY KEY,
    provider   text NOT NULL,
    auth_type  text NOT NULL,
    is_global  boolean NOT NULL,
    projects   text[] NOT NULL DEFAULT '{}',
    config     jsonb NOT NULL DEFAULT '{}',
    -- The names of the credential fields (their values are in the vault).
    fields     text[] NOT NULL,
    secret_id  uuid NOT NULL REFERENCES vault.secret (id),
    created_by uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (is_global OR cardinality(projects) > 0)
);
CREATE INDEX integration_provider ON app.integration (provider);

-- The credentials of workers (sfp-worker processes) towards the server.
CREATE TABLE vault.worker_token (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    token_hash bytea NOT NULL UNIQUE,
    embedded   boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    last_used_at timestamptz
);

-- One short-lived token per step attempt: a worker running the step gets it, exchanges it
-- once for the credentials the step's task declares, and it is dead afterwards.
CREATE TABLE vault.step_token (
    id              uuid PRIMARY KEY,
    token_hash      bytea NOT NULL UNIQUE,
    task_id         uuid NOT NULL,
    run_id          uuid NOT NULL,
    step_run_id     uuid NOT NULL,
    attempt         int NOT NULL,
    worker_token_id uuid REFERENCES vault.worker_token (id) ON DELETE SET NULL,
    -- [{"alias", "username"}]: what the exchange hands out.
    credentials     jsonb NOT NULL,
    issued_at       timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    exchanged_at    timestamptz,
    released_at     timestamptz,
    -- Access tokens given out, so the release can revoke them at Salesforce; encrypted.
    issued_secret   uuid REFERENCES vault.secret (id) ON DELETE SET NULL,
    UNIQUE (step_run_id, attempt)
);

-- Members see the orgs (not their credentials, which are elsewhere); owners and
-- application tokens manage them through the server.
GRANT SELECT ON app.salesforce_org TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON app.salesforce_org, app.integration TO service_role;
ALTER TABLE app.salesforce_org ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.integration ENABLE ROW LEVEL SECURITY;
CREATE POLICY salesforce_org_select ON app.salesforce_org FOR SELECT TO authenticated
  USING ((SELECT private.has_instance_role()));

-- Workers and step tokens call the API too; the audit log names them.
ALTER TABLE app.audit_log DROP CONSTRAINT audit_log_actor_kind_check;
ALTER TABLE app.audit_log ADD CONSTRAINT audit_log_actor_kind_check
  CHECK (actor_kind IN ('user', 'application', 'anonymous', 'worker', 'step'));
