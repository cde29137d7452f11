//! Test support shared by the crates' integration tests and the cross-crate tests here:
//! throwaway data folders, and the real `sfp-server` binary run as a child process.

pub mod doubles;
pub mod engine;
mod process;
pub mod sdk;
pub mod tasks;

pub use process::{RunningStack, StackOutput, process_alive, processes_mentioning};

use std::os::unix::fs::PermissionsExt;

/// A throwaway folder that the PostgreSQL account can enter (tests run as root and the managed
/// cluster runs as `postgres`), removed when dropped.
pub fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("sfp-test-").tempdir().expect("temporary folder");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}
