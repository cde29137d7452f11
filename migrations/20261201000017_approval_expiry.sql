-- A gate that got no decision before its deadline is 'expired'. The deadline is the one set
-- when the gate first started waiting: a gate handed to another server process (restart,
-- lost heartbeat) keeps it, instead of the engine's timeout starting over.
ALTER TABLE app.pipeline_approval DROP CONSTRAINT pipeline_approval_status_check;
ALTER TABLE app.pipeline_approval ADD CONSTRAINT pipeline_approval_status_check
  CHECK (status IN ('waiting', 'approved', 'rejected', 'expired'));
