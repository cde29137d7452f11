//! Task types and the workflows behind them, shared by the control plane (which validates
//! task data, registers the workflows and triggers them) and the workers (which register
//! the actions and run the steps with the real sfp CLI).

pub mod allow_list;
pub mod credentials;
pub mod data;
pub mod definitions;
pub mod pipeline;
pub mod plan;
pub mod references;
pub mod step;
pub mod task_type;

pub use data::{DataError, SourcePolicy, TaskData};
pub use plan::{OrgLogin, StepPlan};
pub use step::{Artifact, Progress, StepInput, StepOutput};
pub use task_type::{Credential, Pool, TaskType};
