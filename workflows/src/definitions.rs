//! The Hatchet workflows behind the task types, as `PutWorkflow` requests. The control
//! plane registers them; the workers register their actions.

use sfp_protocol::pb::v1::{CreateTaskOpts, CreateWorkflowVersionRequest};

use crate::step::MAX_RETRIES;
use crate::task_type::{STEP_NAME, TaskType};

/// Bumped whenever a definition below changes, so engines store a new version.
pub const DEFINITION_VERSION: &str = "1";

/// How long a task may wait in the queue for a worker: batch work queues behind critical
/// work for hours, and a task nobody runs within a day is better failed than forgotten.
pub const SCHEDULE_TIMEOUT: &str = "24h";

/// The engine's execution timeout: the pool's longest step and a margin, so that the
/// worker's own hard timeout (the task's) always fires first and reports what happened.
pub fn execution_timeout(task_type: TaskType) -> String {
    format!("{}s", task_type.pool().max_timeout().as_secs() + 120)
}

pub fn workflow(task_type: TaskType) -> CreateWorkflowVersionRequest {
    CreateWorkflowVersionRequest {
        name: task_type.workflow_name(),
        description: task_type.description().to_string(),
        version: DEFINITION_VERSION.to_string(),
        tasks: vec![CreateTaskOpts {
            readable_id: STEP_NAME.to_string(),
            action: task_type.action(),
            timeout: execution_timeout(task_type),
            inputs: "{}".to_string(),
            parents: Vec::new(),
            retries: MAX_RETRIES as i32,
            backoff_factor: Some(2.0),
            backoff_max_seconds: Some(300),
            schedule_timeout: Some(SCHEDULE_TIMEOUT.to_string()),
            ..Default::default()
        }],
        default_priority: Some(2),
        ..Default::default()
    }
}

/// Every task workflow.
pub fn all() -> Vec<CreateWorkflowVersionRequest> {
    TaskType::ALL.into_iter().map(workflow).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_is_one_step_on_its_action_with_a_timeout_beyond_the_pools_longest() {
        for w in all() {
            let t = TaskType::from_workflow_name(&w.name).unwrap();
            assert_eq!(w.tasks.len(), 1);
            assert_eq!(w.tasks[0].action, t.action());
            let engine = sfp_protocol::duration::parse(&w.tasks[0].timeout).unwrap().unwrap();
            assert!(engine > t.pool().max_timeout());
        }
    }
}
