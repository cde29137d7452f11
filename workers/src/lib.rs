//! The worker runtime behind `sfp-worker`: it speaks the Hatchet worker protocol to the
//! embedded engine or a real Hatchet cluster, and runs each task step with the real sfp CLI
//! in a private folder, with a minimal environment and a hard timeout.

pub mod credentials;
pub mod process;
pub mod progress;
pub mod reporter;
pub mod runtime;
pub mod step;
pub mod tools;
pub mod workdir;

pub use runtime::{WorkerConfig, run};
pub use step::Toolbox;
