-- Operations views: runs and tasks listed newest first by time, child runs of a task.
CREATE INDEX task_tenant_created ON engine.task (tenant_id, created_at DESC);
CREATE INDEX workflow_run_parent_task ON engine.workflow_run (parent_task_id) WHERE parent_task_id IS NOT NULL;
