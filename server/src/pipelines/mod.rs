//! Pipeline machinery that runs inside the control plane.

pub mod approvals;

/// The run metadata key naming the pipeline run an engine run belongs to.
pub const RUN_METADATA_KEY: &str = "sfpPipelineRun";

pub mod schedules;
