//! The database side of an sfp-server instance.
//!
//! * [`Cluster`]: a private PostgreSQL cluster in the instance's data folder, created with the
//!   system's `initdb` and run with `pg_ctl` on a private loopback port. When the product runs
//!   as root (as it does on CI machines), the cluster's processes run as an unprivileged
//!   operating-system account, because PostgreSQL refuses to run as root.
//! * [`MIGRATOR`] / [`migrate`]: the one ordered set of schema migrations (auth, app, engine,
//!   vault) shared by the server, the engine and the tests.
//! * [`pool_options`]: the main pool; [`StatementPool`]: connections for the hottest single
//!   statements, taken back without a round trip.

mod binaries;
mod cluster;
mod error;
mod migrate;
mod os_user;
mod pool;
mod statement_pool;

pub use cluster::{Cluster, ClusterOptions, StartOutcome, pid_running, wait_for_exit, write_private};
pub use error::Error;
pub use migrate::{MIGRATOR, MigrationReport, applied_migrations, migrate};
pub use pool::{CHECK_AFTER_IDLE, pool_options, pool_options_checking_after};
pub use statement_pool::{ACQUIRE_TIMEOUT, LOCK_TIMEOUT, Lent, STATEMENT_TIMEOUT, StatementPool};
