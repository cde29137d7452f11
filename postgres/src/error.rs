use std::path::PathBuf;

/// Everything that can go wrong while preparing, starting or migrating the database.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found{0}; install PostgreSQL 15 (Debian: postgresql-15) or set postgres.bin_dir"
    )]
    BinariesNotFound(String),
    #[error(
        "running as root, but the operating-system account {0:?} that should own the cluster does not exist (PostgreSQL refuses to run as root); create it or set postgres.os_user"
    )]
    NoOsUser(String),
    #[error(
        "the account {user:?} cannot reach {path}: make the folder traversable (chmod o+x) or choose a data folder elsewhere"
    )]
    NotTraversable { user: String, path: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {detail}")]
    Command { command: String, detail: String },
    #[error("port {0} on 127.0.0.1 is already in use")]
    PortInUse(u16),
    #[error("{0}")]
    Invalid(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { action, path, source }
    }
}
