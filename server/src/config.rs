//! Layered configuration: built-in defaults, then a TOML file, then `SFP_*` environment
//! variables (`__` separates nesting: `SFP_API__PORT=8080`), then command-line flags.
//! The result is passed down explicitly; nothing reads the environment later.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The name of the optional configuration file inside the data folder.
pub const CONFIG_FILE_NAME: &str = "sfp.toml";

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The instance's data folder: the managed PostgreSQL cluster, generated secrets, logs.
    pub data_dir: PathBuf,
    /// An external PostgreSQL (production, Supabase). When set, no local cluster is managed.
    pub database_url: Option<String>,
    pub api: ApiConfig,
    pub postgres: PostgresConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub engine: EngineConfig,
    pub auth: AuthConfig,
    pub workers: WorkersConfig,
    pub tasks: TasksConfig,
    pub registry: RegistryConfig,
    pub vault: VaultConfig,
    pub salesforce: SalesforceConfig,
    pub github: GithubConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("database_url", &self.database_url.as_ref().map(|_| "[redacted]"))
            .field("api", &self.api)
            .field("postgres", &self.postgres)
            .field("log", &self.log)
            .field("admin", &self.admin)
            .field("engine", &self.engine)
            .field("auth", &self.auth)
            .field("workers", &self.workers)
            .field("tasks", &self.tasks)
            .field("registry", &self.registry)
            .field("vault", &self.vault)
            .field("salesforce", &self.salesforce)
            .field("github", &self.github)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    /// Address the API binds to.
    pub host: IpAddr,
    /// Port the API binds to; 0 picks a free one.
    pub port: u16,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// Requests taking longer are answered with 503 `timeout` (a lock request that waits for
    /// its turn is bounded by its own wait instead).
    pub request_timeout_secs: u64,
    /// How often a lock request waiting for its turn (`"wait": true`) looks at its ticket
    /// again without being woken by a change; changes wake it at once (`LISTEN sfp_locks`).
    pub lock_wait_recheck_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PostgresConfig {
    /// Folder of `initdb` and `pg_ctl`; found automatically when unset.
    pub bin_dir: Option<PathBuf>,
    /// Fixed port for the managed cluster; unset keeps the one chosen at first start.
    pub port: Option<u16>,
    /// Name of the application database.
    pub database: String,
    /// The unprivileged account that runs the cluster when sfp-server runs as root.
    pub os_user: String,
    /// Connections in the server's pool (the API, its loops and the embedded engine share
    /// it). More is not faster: on a 2-core machine 8 to 10 served the most requests and 20
    /// was slower (BENCHMARKS.md, data APIs). The data stores' point reads and write batches
    /// have their own connections beside it (`state::READ_CONNECTIONS` and two per kind of
    /// batched write, `api::write_batch::IN_FLIGHT`), opened when first needed.
    pub max_connections: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `sfp_server=debug,info`.
    pub level: String,
    /// Also write the JSON log lines to standard error (containers); otherwise they go to
    /// `<data dir>/logs/sfp-server.log` only.
    pub stderr: bool,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Run the embedded workflow engine in `sfp-server start`.
    pub embedded: bool,
    /// gRPC port of the embedded engine; unset keeps the one chosen at first start.
    pub grpc_port: Option<u16>,
    /// REST port of the embedded engine; unset keeps the one chosen at first start.
    pub api_port: Option<u16>,
    /// Seconds without a heartbeat before the embedded engine gives a worker's steps to
    /// another worker (at least 5: workers heartbeat every 4 s).
    pub heartbeat_timeout_secs: u64,
    /// A Hatchet tenant token of an external engine (a Hatchet cluster); with `embedded =
    /// false` tasks are dispatched there.
    pub token: Option<String>,
    /// `none` (plaintext) or `tls` for the external engine.
    pub tls: String,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("embedded", &self.embedded)
            .field("grpc_port", &self.grpc_port)
            .field("api_port", &self.api_port)
            .field("heartbeat_timeout_secs", &self.heartbeat_timeout_secs)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            embedded: true,
            grpc_port: None,
            api_port: None,
            heartbeat_timeout_secs: 30,
            token: None,
            tls: "tls".into(),
        }
    }
}

/// The workers `sfp-server start` runs in its own process (one per pool by default).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkersConfig {
    /// Standard-pool workers (short steps); 0 for none.
    pub standard: u32,
    /// Long-running-pool workers; 0 for none.
    pub long_running: u32,
    /// Steps a standard worker runs at once.
    pub standard_slots: u32,
    /// Steps a long-running worker runs at once.
    pub long_running_slots: u32,
    /// The sfp CLI; `sfp` on PATH (scripts/setup installs it) when unset.
    pub sfp_bin: Option<PathBuf>,
    /// Where steps get their private folders; `<data dir>/work` when unset.
    pub work_dir: Option<PathBuf>,
    /// Seconds running steps get to finish when the server stops.
    pub drain_timeout_secs: u64,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            standard: 1,
            long_running: 1,
            standard_slots: 4,
            long_running_slots: 2,
            sfp_bin: None,
            work_dir: None,
            drain_timeout_secs: 60,
        }
    }
}

/// The instance's npm registry for sfp artifacts (Verdaccio).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryConfig {
    /// Run Verdaccio in `sfp-server start` (when it is installed).
    pub embedded: bool,
    /// Its port; unset keeps the one chosen at first start.
    pub port: Option<u16>,
    /// The `verdaccio` executable; the one scripts/setup installs when unset.
    pub verdaccio_bin: Option<PathBuf>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig { embedded: true, port: None, verdaccio_bin: None }
    }
}

/// Credentials at rest and on their way to workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct VaultConfig {
    /// The key-encryption keys (0600 JSON); `<data dir>/vault-keys.json` when unset. Keep a
    /// copy elsewhere: without it the stored credentials cannot be read.
    pub keys_file: Option<PathBuf>,
    /// Seconds a step token lives before its worker must have exchanged it.
    pub step_token_ttl_secs: u64,
    /// Days the token of the embedded workers lives (a new one is made at every start).
    pub worker_token_days: u32,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig { keys_file: None, step_token_ttl_secs: 60, worker_token_days: 30 }
    }
}

/// How the server reaches Salesforce.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SalesforceConfig {
    /// Send every Salesforce call to this base URL instead of the org's own hosts (a proxy,
    /// or a local stand-in in tests). Unset in production.
    pub base_url: Option<String>,
    /// The REST API version of queries (`vXX.X`).
    pub api_version: String,
    /// The OAuth callback URL registered on the connected app, for sandbox sign-ups by name.
    pub callback_url: String,
    /// Seconds to wait for Salesforce.
    pub timeout_secs: u64,
}

impl Default for SalesforceConfig {
    fn default() -> Self {
        SalesforceConfig {
            base_url: None,
            api_version: "60.0".into(),
            callback_url: "http://localhost:1717/OauthRedirect".into(),
            timeout_secs: 30,
        }
    }
}

/// How the server reaches GitHub (for GitHub App installation tokens).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GithubConfig {
    /// The REST API (GitHub Enterprise Server: `https://<host>/api/v3`).
    pub api_url: String,
}

impl Default for GithubConfig {
    fn default() -> Self {
        GithubConfig { api_url: "https://api.github.com".into() }
    }
}

/// Task submission.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TasksConfig {
    /// Accept `file://` repositories (single-machine use, tests): they let a task read any
    /// git repository on the workers' machine.
    pub allow_local_repositories: bool,
}

/// Sign-in and tokens.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// The HS256 secret of user JWTs, shared with a Supabase GoTrue that issues tokens for the
    /// same users. Unset: one is generated at first start and kept in the data folder.
    pub jwt_secret: Option<String>,
    /// The `iss` claim of issued tokens.
    pub issuer: String,
    /// Lifetime of access tokens, in seconds.
    pub access_token_ttl_secs: u64,
    /// Failed sign-ins from one client address within `login_window_secs` before it gets 429.
    pub login_max_failures: u32,
    pub login_window_secs: u64,
    /// Longest lifetime of an application token, in days.
    pub max_application_token_days: u32,
    /// How long a request's identity (user, role, session; or application token) is reused
    /// without asking the database; changes end it at once. 0: never reused.
    pub identity_cache_secs: u64,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "[redacted]"))
            .field("issuer", &self.issuer)
            .field("access_token_ttl_secs", &self.access_token_ttl_secs)
            .field("login_max_failures", &self.login_max_failures)
            .field("login_window_secs", &self.login_window_secs)
            .field("max_application_token_days", &self.max_application_token_days)
            .field("identity_cache_secs", &self.identity_cache_secs)
            .finish()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: None,
            issuer: "sfp-server".into(),
            access_token_ttl_secs: 3600,
            login_max_failures: 5,
            login_window_secs: 300,
            max_application_token_days: 365,
            identity_cache_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// The e-mail address of the administrator created at first start.
    pub email: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(".sfp"),
            database_url: None,
            api: ApiConfig::default(),
            postgres: PostgresConfig::default(),
            log: LogConfig::default(),
            admin: AdminConfig::default(),
            engine: EngineConfig::default(),
            auth: AuthConfig::default(),
            workers: WorkersConfig::default(),
            tasks: TasksConfig::default(),
            registry: RegistryConfig::default(),
            vault: VaultConfig::default(),
            salesforce: SalesforceConfig::default(),
            github: GithubConfig::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 3478,
            body_limit_bytes: 2 * 1024 * 1024,
            request_timeout_secs: 30,
            lock_wait_recheck_secs: 5,
        }
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            bin_dir: None,
            port: None,
            database: "sfp".into(),
            os_user: "postgres".into(),
            max_connections: 10,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), stderr: false }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { email: "admin@sfp.local".into() }
    }
}

/// Values given on the command line; they win over every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    pub port: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the layers from the process environment.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_from(overrides, Env::prefixed("SFP_").split("__"))
    }

    /// Loads the layers with a given environment provider (tests pass their own).
    pub fn load_from(overrides: &Overrides, env: Env) -> Result<Config, ConfigError> {
        // The data folder decides where the default file is, so resolve it first.
        let early: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(env.clone())
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let data_dir = overrides.data_dir.clone().unwrap_or(early.data_dir);
        let file = match &overrides.config_file {
            Some(path) if !path.is_file() => return Err(ConfigError::MissingFile(path.clone())),
            Some(path) => Some(path.clone()),
            None => Some(data_dir.join(CONFIG_FILE_NAME)).filter(|p| p.is_file()),
        };

        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = &file {
            figment = figment.merge(Toml::file(file));
        }
        let mut config: Config = figment.merge(env).extract().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.data_dir = data_dir;
        if let Some(port) = overrides.port {
            config.api.port = port;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("data_dir must not be empty".into()));
        }
        if self.postgres.max_connections == 0 {
            return Err(ConfigError::Invalid("postgres.max_connections must be at least 1".into()));
        }
        if self.api.body_limit_bytes == 0 {
            return Err(ConfigError::Invalid("api.body_limit_bytes must be at least 1".into()));
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid("database_url must start with postgres:// or postgresql://".into()));
        }
        Ok(())
    }

    /// The vault's key file.
    pub fn vault_keys_file(&self) -> PathBuf {
        self.vault.keys_file.clone().unwrap_or_else(|| self.data_dir.join("vault-keys.json"))
    }

    /// The managed cluster's folder.
    pub fn postgres_dir(&self) -> PathBuf {
        self.data_dir.join("postgres")
    }

    /// Where a file of the data folder lives.
    pub fn data_file(&self, name: impl AsRef<Path>) -> PathBuf {
        self.data_dir.join(name)
    }
}

#[cfg(test)]
// figment::Jail's closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    /// An environment provider that sees no variables.
    fn no_env() -> Env {
        Env::prefixed("SFP_TEST_UNUSED_PREFIX_").split("__")
    }

    #[test]
    fn defaults_apply_without_file_or_env() {
        let dir = tempfile::tempdir().unwrap();
        let overrides = Overrides { data_dir: Some(dir.path().into()), ..Default::default() };
        let config = Config::load_from(&overrides, no_env()).unwrap();
        assert_eq!(config.api.port, 3478);
        assert_eq!(config.postgres.database, "sfp");
        assert!(config.database_url.is_none());
    }

    #[test]
    fn file_then_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_dir("data")?;
            jail.create_file(
                "data/sfp.toml",
                "[api]\nport = 4000\nrequest_timeout_secs = 5\n[log]\nlevel = \"debug\"\n",
            )?;
            jail.set_env("SFP_API__PORT", "4100");
            jail.set_env("SFP_DATABASE_URL", "postgres://u:p@db/x");
            let overrides = Overrides { data_dir: Some("data".into()), ..Default::default() };
            let config = Config::load(&overrides).map_err(|e| e.to_string())?;
            assert_eq!(config.api.port, 4100, "env wins over file");
            assert_eq!(config.api.request_timeout_secs, 5, "file wins over defaults");
            assert_eq!(config.log.level, "debug");
            assert_eq!(config.database_url.as_deref(), Some("postgres://u:p@db/x"));
            let flagged = Overrides { port: Some(0), ..overrides };
            assert_eq!(Config::load(&flagged).map_err(|e| e.to_string())?.api.port, 0, "flags win");
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_rejected_with_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SFP_API__PORT", "not-a-number");
            let err = Config::load(&Overrides::default()).unwrap_err().to_string().to_lowercase();
            assert!(err.contains("api.port"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("SFP_DATABASE_URL", "mysql://x");
            let err = Config::load(&Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("database_url"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let overrides = Overrides { config_file: Some("/nonexistent/sfp.toml".into()), ..Default::default() };
        assert!(matches!(Config::load_from(&overrides, no_env()), Err(ConfigError::MissingFile(_))));
    }

    #[test]
    fn debug_output_hides_the_database_url_and_the_jwt_secret() {
        let auth = AuthConfig { jwt_secret: Some("hs256-key-value".into()), ..AuthConfig::default() };
        let config = Config { database_url: Some("postgres://u:pw-value@h/d".into()), auth, ..Config::default() };
        let printed = format!("{config:?}");
        assert!(!printed.contains("pw-value"), "{printed}");
        assert!(!printed.contains("hs256-key-value"), "{printed}");
    }
}
