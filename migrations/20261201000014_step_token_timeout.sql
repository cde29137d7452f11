-- How long the step behind a step token may run: a token whose worker never released it is
-- released (its access tokens revoked) once its step is past this, whether the step belongs
-- to a task or to a pipeline run.
ALTER TABLE vault.step_token ADD COLUMN step_timeout_seconds int NOT NULL DEFAULT 3600;
