//! A task's row and the vocabulary of its columns.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

/// sfp server's priority classes and the Hatchet priorities they map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Critical,
    Normal,
    Batch,
}

impl Priority {
    /// Also takes the names sfp server's docs use elsewhere (high/medium/low).
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "critical" | "high" => Some(Priority::Critical),
            "normal" | "medium" => Some(Priority::Normal),
            "batch" | "low" => Some(Priority::Batch),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Batch => "batch",
        }
    }

    pub fn engine_priority(self) -> i32 {
        match self {
            Priority::Critical => 3,
            Priority::Normal => 2,
            Priority::Batch => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleType {
    Immediate,
    Scheduled,
    Recurring,
}

impl ScheduleType {
    pub fn parse(s: &str) -> Option<ScheduleType> {
        match s {
            "immediate" => Some(ScheduleType::Immediate),
            "scheduled" | "delayed" => Some(ScheduleType::Scheduled),
            "recurring" => Some(ScheduleType::Recurring),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleType::Immediate => "immediate",
            ScheduleType::Scheduled => "scheduled",
            ScheduleType::Recurring => "recurring",
        }
    }
}

/// A task's status for an engine run status.
pub fn status_of_run(run_status: &str) -> &'static str {
    match run_status {
        "RUNNING" => "active",
        "COMPLETED" => "completed",
        "FAILED" => "failed",
        "CANCELLED" => "cancelled",
        _ => "pending",
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRow {
    pub id: Uuid,
    #[sqlx(rename = "type")]
    pub task_type: String,
    pub data: Value,
    pub priority: String,
    pub schedule_type: String,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub cron: Option<String>,
    pub timeout_seconds: i32,
    pub retries: i32,
    pub status: String,
    pub progress: i32,
    pub progress_message: Option<String>,
    pub error: Option<Value>,
    pub result: Option<Value>,
    pub run_id: Option<Uuid>,
    pub engine_schedule: Option<String>,
    pub recurring: bool,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub dispatch_error: Option<String>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

pub const COLUMNS: &str = "id, type, data, priority, schedule_type, scheduled_for, cron, timeout_seconds, retries, \
    status, progress, progress_message, error, result, run_id, engine_schedule, recurring, dispatched_at, dispatch_error, \
    created_by, created_at, started_at, finished_at, updated_at";
