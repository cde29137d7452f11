-- Locks (`/sfp/api/locks`): a request is a ticket, queued first in, first out per resource,
-- acquired when it reaches the head, and leased: an acquired ticket expires on its own.
-- The partial unique index makes "one holder per resource" a fact of the database, so two
-- server processes can never grant one resource twice.
CREATE TABLE app.lock_ticket (
    id                     uuid PRIMARY KEY,
    repository             text NOT NULL CHECK (char_length(repository) BETWEEN 1 AND 200),
    resource               text NOT NULL CHECK (char_length(resource) BETWEEN 1 AND 200),
    status                 text NOT NULL CHECK (status IN ('queued', 'acquired', 'released', 'expired')),
    lease_duration_seconds int NOT NULL CHECK (lease_duration_seconds BETWEEN 1 AND 604800),
    lease_start            timestamptz,
    lease_expires_at       timestamptz,
    -- A queued ticket nobody collects gives up its place after this.
    wait_expires_at        timestamptz NOT NULL,
    reason                 text,
    requested_by           uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    requested_by_token     uuid,
    released_by            uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX lock_ticket_one_holder ON app.lock_ticket (repository, resource) WHERE status = 'acquired';
CREATE INDEX lock_ticket_queue ON app.lock_ticket (repository, resource, created_at, id) WHERE status = 'queued';

-- Subscribers (and, later, realtime) hear of every change of a ticket.
CREATE FUNCTION app.lock_ticket_notify() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
  PERFORM pg_notify('sfp_locks', json_build_object(
    'repository', NEW.repository, 'resource', NEW.resource, 'ticketId', NEW.id, 'status', NEW.status)::text);
  RETURN NEW;
END $$;
CREATE TRIGGER lock_ticket_changed AFTER INSERT OR UPDATE OF status ON app.lock_ticket
  FOR EACH ROW EXECUTE FUNCTION app.lock_ticket_notify();

-- Salesforce environments that CI jobs lease one at a time.
CREATE TABLE app.environment (
    id                  uuid PRIMARY KEY,
    repository          text NOT NULL CHECK (char_length(repository) BETWEEN 1 AND 200),
    name                text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]*$' AND char_length(name) <= 100),
    description         text,
    category            text NOT NULL CHECK (category IN ('dev', 'test', 'snapshot', 'release')),
    salesforce_username text,
    dev_hub_username    text,
    is_active           boolean NOT NULL DEFAULT true,
    is_default          boolean NOT NULL DEFAULT false,
    branch              text,
    tags                text[] NOT NULL DEFAULT '{}',
    metadata            jsonb NOT NULL DEFAULT '{}',
    orchestration_order int NOT NULL DEFAULT 0,
    created_by          uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (repository, name)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON app.lock_ticket, app.environment TO authenticated, service_role;
ALTER TABLE app.lock_ticket ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.environment ENABLE ROW LEVEL SECURITY;
-- Locks: everyone with a role takes and reads tickets; queue upkeep (promotion, expiry)
-- runs for whoever asks; releasing someone else's ticket is checked by the server (holder,
-- or an owner or application).
CREATE POLICY lock_ticket_all ON app.lock_ticket FOR ALL TO authenticated
  USING ((SELECT private.has_instance_role())) WITH CHECK ((SELECT private.has_instance_role()));
CREATE POLICY environment_select ON app.environment FOR SELECT TO authenticated USING ((SELECT private.has_instance_role()));
CREATE POLICY environment_write ON app.environment FOR ALL TO authenticated
  USING ((SELECT private.is_instance_owner())) WITH CHECK ((SELECT private.is_instance_owner()));
