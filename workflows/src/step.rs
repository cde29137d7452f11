//! What travels between the control plane and a worker through the engine: the step's
//! input (the run input), its progress (stream events) and its output (the step output).
//! None of it ever carries a secret.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::task_type::TaskType;

/// The most retries a task may ask for; the workflows are registered with this many and
/// the worker stops earlier when the task asked for fewer (`should_not_retry`).
pub const MAX_RETRIES: u32 = 5;

/// A step's run input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepInput {
    pub task_id: Uuid,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    pub data: Value,
    /// The hard limit for the whole step; the worker kills it after this.
    pub timeout_seconds: u64,
    /// How many times a failed step is tried again.
    #[serde(default)]
    pub retries: u32,
}

/// One artifact a build produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub name: String,
    pub version: String,
    pub file: String,
    pub size_bytes: u64,
    pub sha256: String,
}

/// A step's output, the task's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepOutput {
    /// The sfp commands run, as argv arrays.
    pub commands: Vec<Vec<String>>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    /// JSON files the command writes (impact analysis, changelogs), by name.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub files: serde_json::Map<String, Value>,
    /// The command's `--json` answer, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// The last lines the command printed.
    pub output_tail: Vec<String>,
}

/// A progress report a worker streams while a step runs (a `PutStreamEvent` chunk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Always `"progress"`, so readers can tell these chunks from others.
    pub kind: String,
    pub percent: u8,
    pub message: String,
}

impl Progress {
    pub const KIND: &'static str = "progress";

    pub fn new(percent: u8, message: impl Into<String>) -> Self {
        Self { kind: Self::KIND.into(), percent: percent.min(100), message: message.into() }
    }

    /// Reads a stream chunk; `None` for chunks that are not progress reports.
    pub fn parse(chunk: &[u8]) -> Option<Progress> {
        serde_json::from_slice::<Progress>(chunk).ok().filter(|p| p.kind == Self::KIND)
    }
}

/// The additional metadata every task run carries, so that runs can be found by task.
pub const TASK_METADATA_KEY: &str = "sfpTaskId";
