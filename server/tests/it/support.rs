//! The real API on port 0 against a fresh database, with the administrator of a first start.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sfp_server::api::error::ErrorBody;
use sfp_server::api::metrics::Metrics;
use sfp_server::api::write_batch::WriteBatches;
use sfp_server::auth::AuthState;
use sfp_server::auth::audit::AuditLog;
use sfp_server::config::{ApiConfig, AuthConfig};
use sfp_server::health::{DatabaseCheck, HealthChecks};
use sfp_server::{AppState, Services, api, stack};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub const ADMIN_EMAIL: &str = "admin@example.test";
pub const ADMIN_PASSWORD: &str = "the admin's long password";
pub const JWT_SECRET: &str = "a jwt secret for tests, long enough for HS256";

pub struct TestApi {
    pub url: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub shutdown: CancellationToken,
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApi {
    pub async fn spawn(pool: PgPool) -> TestApi {
        Self::spawn_with(pool, ApiConfig::default()).await
    }

    pub async fn spawn_with(pool: PgPool, config: ApiConfig) -> TestApi {
        Self::spawn_configured(pool, config, AuthConfig::default()).await
    }

    pub async fn spawn_configured(pool: PgPool, config: ApiConfig, auth: AuthConfig) -> TestApi {
        let full = sfp_server::config::Config { api: config, auth, ..Default::default() };
        Self::spawn_full(pool, full).await
    }

    /// The API with a whole configuration (Salesforce and GitHub base URLs, vault settings).
    pub async fn spawn_full(pool: PgPool, full: sfp_server::config::Config) -> TestApi {
        // Server logs go where scripts/test searches the whole run for leaked secrets, or else
        // show in a failing test's output.
        match std::env::var("SFP_TEST_LOG_DIR") {
            Ok(dir) if std::fs::create_dir_all(&dir).is_ok() => {
                let path = std::path::Path::new(&dir).join(format!("server-it-{}.log", std::process::id()));
                if let Ok(file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                    let writer = std::sync::Mutex::new(file);
                    let _ = tracing_subscriber::fmt().json().with_writer(writer).with_env_filter("info").try_init();
                }
            }
            _ => {
                let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
            }
        }
        // Servers of one database share its key file, as a real deployment does (a file
        // left by an earlier run's database of the same name is harmless: the database is new).
        let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&pool).await.unwrap();
        let keys_file = std::env::temp_dir().join(format!("sfp-test-vault-{database}.json"));
        let vault = sfp_server::vault::Vault::open(&keys_file, &pool).await.unwrap();
        let credentials = Arc::new(sfp_server::credentials::Credentials::new(pool.clone(), Arc::new(vault), &full));
        let (config, auth) = (full.api.clone(), full.auth.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = stack::base_url(listener.local_addr().unwrap());
        let mut health = HealthChecks::default();
        health.add(Arc::new(DatabaseCheck::new(pool.clone(), true)));
        let shutdown = CancellationToken::new();
        let (audit, _) = AuditLog::start(pool.clone(), shutdown.clone());
        let auth = Arc::new(AuthState::new(JWT_SECRET.as_bytes(), auth, audit));
        sfp_server::auth::bootstrap_admin(&pool, ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
        let tasks = sfp_server::tasks::Tasks::new(pool.clone(), None, sfp_workflows::SourcePolicy::default());
        let state = AppState::new(Services {
            pool: pool.clone(),
            metrics: Metrics::new(),
            health,
            auth,
            tasks,
            credentials,
            writes: WriteBatches::start(&pool),
            reads: sfp_postgres::StatementPool::beside(&pool, sfp_server::state::READ_CONNECTIONS),
            lock_events: sfp_server::api::lock_wait::LockEvents::start(
                pool.clone(),
                shutdown.clone(),
                Duration::from_secs(full.api.lock_wait_recheck_secs),
            ),
        });
        tokio::spawn(api::run(config, listener, state, shutdown.clone()));
        TestApi { url, client: reqwest::Client::new(), pool, shutdown }
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.url))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.url))
    }

    pub fn request(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method.parse().unwrap(), format!("{}{path}", self.url))
    }

    pub async fn error_of(response: reqwest::Response) -> ErrorBody {
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("application/json"), "error content type {content_type}");
        response.json().await.expect("stable error body")
    }

    /// Signs in through `/sfp/api/auth/admin/login`; returns the whole answer.
    pub async fn login(&self, email: &str, password: &str) -> Value {
        let response = self
            .post("/sfp/api/auth/admin/login")
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "sign-in of {email}");
        response.json().await.unwrap()
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await["access_token"].as_str().unwrap().to_owned()
    }

    /// Creates a user with a password and a role, as an owner will through the users API.
    pub async fn user(&self, email: &str, password: &str, role: sfp_server::auth::Role) -> String {
        let hash = sfp_server::auth::password::hash(password);
        sfp_server::auth::sessions::create_user(&self.pool, email, &hash, role).await.unwrap().expect("new user");
        self.login(email, password).await["access_token"].as_str().unwrap().to_owned()
    }

    /// An application token made by the administrator.
    pub async fn application_token(&self, owner_token: &str, days: u32) -> Value {
        let response = self
            .post("/sfp/api/application-tokens")
            .bearer_auth(owner_token)
            .json(&json!({"name": "ci", "expiresIn": days}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }
}
