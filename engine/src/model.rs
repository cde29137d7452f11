//! The engine's domain: workflow definitions (validated from `PutWorkflow`), statuses,
//! priorities and retry backoff.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sfp_protocol::duration;
use sfp_protocol::pb::v1 as pbv1;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_SCHEDULE_TIMEOUT: Duration = Duration::from_secs(300);
/// Hatchet priorities: 1 low (batch), 2 medium (normal), 3 high (critical).
pub const MIN_PRIORITY: i32 = 1;
pub const MAX_PRIORITY: i32 = 3;

/// A workflow as registered: what the checksum covers and what runs are built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowDefinition {
    pub name: String,
    pub description: String,
    pub version: String,
    pub event_triggers: Vec<String>,
    pub cron_triggers: Vec<String>,
    pub cron_input: Option<serde_json::Value>,
    pub default_priority: i32,
    pub tasks: Vec<TaskDefinition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDefinition {
    pub readable_id: String,
    pub action: String,
    pub timeout_ms: u64,
    pub schedule_timeout_ms: u64,
    pub retries: i32,
    pub backoff_factor: Option<f64>,
    pub backoff_max_seconds: Option<i32>,
    pub parents: Vec<String>,
    pub slot_units: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidDefinition(pub String);

fn invalid(msg: impl Into<String>) -> InvalidDefinition {
    InvalidDefinition(msg.into())
}

impl WorkflowDefinition {
    pub fn from_proto(req: &pbv1::CreateWorkflowVersionRequest) -> Result<Self, InvalidDefinition> {
        let name = req.name.trim();
        if name.is_empty() {
            return Err(invalid("the workflow needs a name"));
        }
        if req.tasks.is_empty() {
            return Err(invalid(format!("workflow {name:?} has no tasks")));
        }
        let mut tasks = Vec::with_capacity(req.tasks.len());
        let mut seen = HashSet::new();
        for t in &req.tasks {
            let id = t.readable_id.trim();
            if id.is_empty() {
                return Err(invalid(format!("a task of workflow {name:?} has no readable_id")));
            }
            if !seen.insert(id.to_owned()) {
                return Err(invalid(format!("task {id:?} appears twice in workflow {name:?}")));
            }
            if t.action.trim().is_empty() {
                return Err(invalid(format!("task {id:?} has no action")));
            }
            if t.retries < 0 {
                return Err(invalid(format!("task {id:?}: retries must not be negative")));
            }
            let parse = |text: &str, default: Duration, what: &str| -> Result<u64, InvalidDefinition> {
                let d = duration::parse(text).map_err(|e| invalid(format!("task {id:?} {what}: {e}")))?;
                Ok(d.unwrap_or(default).as_millis() as u64)
            };
            let slot_units = t.slot_requests.values().copied().sum::<i32>().max(1);
            tasks.push(TaskDefinition {
                readable_id: id.to_owned(),
                action: t.action.clone(),
                timeout_ms: parse(&t.timeout, DEFAULT_TIMEOUT, "timeout")?,
                schedule_timeout_ms: parse(
                    t.schedule_timeout.as_deref().unwrap_or(""),
                    DEFAULT_SCHEDULE_TIMEOUT,
                    "schedule_timeout",
                )?,
                retries: t.retries,
                backoff_factor: t.backoff_factor.map(f64::from),
                backoff_max_seconds: t.backoff_max_seconds,
                parents: t.parents.clone(),
                slot_units,
            });
        }
        check_dag(name, &tasks)?;
        let cron_input = match req.cron_input.as_deref() {
            None | Some("") => None,
            Some(text) => {
                Some(serde_json::from_str(text).map_err(|e| invalid(format!("cron_input is not valid JSON: {e}")))?)
            }
        };
        let default_priority = req.default_priority.unwrap_or(MIN_PRIORITY);
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&default_priority) {
            return Err(invalid(format!("default_priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}")));
        }
        Ok(WorkflowDefinition {
            name: name.to_owned(),
            description: req.description.clone(),
            version: req.version.clone(),
            event_triggers: req.event_triggers.clone(),
            cron_triggers: req
                .cron_triggers
                .iter()
                .map(|c| crate::crons::parse(c).map(|_| c.trim().to_owned()).map_err(invalid))
                .collect::<Result<Vec<_>, _>>()?,
            cron_input,
            default_priority,
            tasks,
        })
    }

    /// A stable fingerprint: the same definition always gives the same checksum.
    pub fn checksum(&self) -> String {
        use sha2::Digest;
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let digest = sha2::Sha256::digest(&bytes);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Parents must exist and the graph must have no cycle.
fn check_dag(workflow: &str, tasks: &[TaskDefinition]) -> Result<(), InvalidDefinition> {
    let index: HashMap<&str, &TaskDefinition> = tasks.iter().map(|t| (t.readable_id.as_str(), t)).collect();
    for t in tasks {
        for p in &t.parents {
            if !index.contains_key(p.as_str()) {
                return Err(invalid(format!("task {:?} of {workflow:?} names an unknown parent {p:?}", t.readable_id)));
            }
            if p == &t.readable_id {
                return Err(invalid(format!("task {:?} is its own parent", t.readable_id)));
            }
        }
    }
    // Kahn's algorithm: what cannot be ordered is on a cycle.
    let mut remaining: HashMap<&str, usize> = tasks.iter().map(|t| (t.readable_id.as_str(), t.parents.len())).collect();
    let mut ready: Vec<&str> = remaining.iter().filter(|(_, n)| **n == 0).map(|(k, _)| *k).collect();
    let mut ordered = 0;
    while let Some(done) = ready.pop() {
        ordered += 1;
        for t in tasks.iter().filter(|t| t.parents.iter().any(|p| p == done)) {
            let n = remaining.get_mut(t.readable_id.as_str()).expect("known task");
            *n -= 1;
            if *n == 0 {
                ready.push(&t.readable_id);
            }
        }
    }
    if ordered != tasks.len() {
        return Err(invalid(format!("the tasks of {workflow:?} depend on each other in a cycle")));
    }
    Ok(())
}

/// The delay before retry number `attempt` (1-based): `min(max, factor^attempt)` seconds when
/// both are set, otherwise none.
pub fn retry_backoff(factor: Option<f64>, max_seconds: Option<i32>, attempt: i32) -> Option<Duration> {
    let (factor, max) = (factor?, max_seconds?);
    if factor <= 0.0 || max <= 0 {
        return None;
    }
    let secs = factor.powi(attempt).min(f64::from(max));
    Some(Duration::from_secs_f64(secs.max(0.0)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn parse(s: &str) -> RunStatus {
        match s {
            "RUNNING" => RunStatus::Running,
            "COMPLETED" => RunStatus::Completed,
            "FAILED" => RunStatus::Failed,
            "CANCELLED" => RunStatus::Cancelled,
            _ => RunStatus::Queued,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "QUEUED",
            RunStatus::Running => "RUNNING",
            RunStatus::Completed => "COMPLETED",
            RunStatus::Failed => "FAILED",
            RunStatus::Cancelled => "CANCELLED",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled)
    }

    pub fn to_proto(self) -> pbv1::RunStatus {
        match self {
            RunStatus::Queued => pbv1::RunStatus::Queued,
            RunStatus::Running => pbv1::RunStatus::Running,
            RunStatus::Completed => pbv1::RunStatus::Completed,
            RunStatus::Failed => pbv1::RunStatus::Failed,
            RunStatus::Cancelled => pbv1::RunStatus::Cancelled,
        }
    }
}

impl From<String> for RunStatus {
    /// Task statuses map onto run statuses too (PENDING tasks show as QUEUED).
    fn from(s: String) -> Self {
        RunStatus::parse(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, parents: &[&str]) -> pbv1::CreateTaskOpts {
        pbv1::CreateTaskOpts {
            readable_id: id.into(),
            action: format!("wf:{id}"),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
    }

    fn request(tasks: Vec<pbv1::CreateTaskOpts>) -> pbv1::CreateWorkflowVersionRequest {
        pbv1::CreateWorkflowVersionRequest { name: "wf".into(), tasks, ..Default::default() }
    }

    #[test]
    fn defaults_and_checksum() {
        let def = WorkflowDefinition::from_proto(&request(vec![task("a", &[]), task("b", &["a"])])).unwrap();
        assert_eq!(def.tasks[0].timeout_ms, 60_000);
        assert_eq!(def.tasks[0].schedule_timeout_ms, 300_000);
        assert_eq!(def.default_priority, 1);
        let again = WorkflowDefinition::from_proto(&request(vec![task("a", &[]), task("b", &["a"])])).unwrap();
        assert_eq!(def.checksum(), again.checksum());
        let other = WorkflowDefinition::from_proto(&request(vec![task("a", &[])])).unwrap();
        assert_ne!(def.checksum(), other.checksum());
    }

    #[test]
    fn bad_graphs_are_refused_by_name() {
        let err = WorkflowDefinition::from_proto(&request(vec![task("a", &["zz"])])).unwrap_err();
        assert!(err.0.contains("unknown parent \"zz\""), "{err}");
        let err = WorkflowDefinition::from_proto(&request(vec![task("a", &["b"]), task("b", &["a"])])).unwrap_err();
        assert!(err.0.contains("cycle"), "{err}");
        let err = WorkflowDefinition::from_proto(&request(vec![task("a", &[]), task("a", &[])])).unwrap_err();
        assert!(err.0.contains("twice"), "{err}");
        let mut t = task("a", &[]);
        t.timeout = "soon".into();
        assert!(WorkflowDefinition::from_proto(&request(vec![t])).unwrap_err().0.contains("timeout"));
        assert!(WorkflowDefinition::from_proto(&request(vec![])).is_err());
    }

    #[test]
    fn backoff_is_min_of_max_and_factor_power() {
        assert_eq!(retry_backoff(Some(2.0), Some(10), 1), Some(Duration::from_secs(2)));
        assert_eq!(retry_backoff(Some(2.0), Some(10), 3), Some(Duration::from_secs(8)));
        assert_eq!(retry_backoff(Some(2.0), Some(10), 5), Some(Duration::from_secs(10)));
        assert_eq!(retry_backoff(None, Some(10), 1), None);
        assert_eq!(retry_backoff(Some(2.0), None, 1), None);
    }
}
