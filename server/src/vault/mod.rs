//! Secrets at rest: values are encrypted in the application before they reach the database
//! ([`cipher`]), under key-encryption keys from a file the database never sees
//! ([`keyring`]). Reads of decrypted credentials are audited in `vault.access_log`.

pub mod cipher;
pub mod keyring;
pub mod rotate;
pub mod secret;

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;
use zeroize::Zeroize;

use cipher::{CipherError, Sealed};
use keyring::Keyring;
pub use secret::{Secret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("vault keys: {0}")]
    Keys(String),
    #[error("{0}")]
    Cipher(#[from] CipherError),
    #[error("the secret {0} does not exist")]
    NotFound(Uuid),
    #[error("the secret's content is not what was stored: {0}")]
    Content(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The instance's vault: the key ring and the secret rows.
pub struct Vault {
    path: PathBuf,
    ring: RwLock<Keyring>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("keys_file", &self.path).finish_non_exhaustive()
    }
}

/// One audited access to a credential.
#[derive(Debug, Clone)]
pub struct Access<'a> {
    pub actor_kind: &'a str,
    pub actor_id: Option<Uuid>,
    pub subject: String,
    pub purpose: String,
    pub task_id: Option<Uuid>,
    pub outcome: &'a str,
    pub detail: Option<String>,
}

impl Vault {
    /// Opens (or creates) the key file and makes sure the database knows the active key.
    /// A database whose active key is not in the file is refused: its secrets would be
    /// unreadable.
    pub async fn open(path: &Path, pool: &PgPool) -> Result<Vault, VaultError> {
        let ring = Keyring::open_or_create(path)?;
        sqlx::query("INSERT INTO vault.active_key (kek_id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
            .bind(&ring.active)
            .execute(pool)
            .await?;
        let active: String = sqlx::query_scalar("SELECT kek_id FROM vault.active_key").fetch_one(pool).await?;
        if ring.get(&active).is_none() {
            return Err(VaultError::Keys(format!(
                "the database's secrets are wrapped with key {active}, which is not in {}; \
                 restore that key file or set vault.keys_file",
                path.display()
            )));
        }
        let used: Vec<String> = sqlx::query_scalar("SELECT DISTINCT kek_id FROM vault.secret").fetch_all(pool).await?;
        if let Some(missing) = used.iter().find(|id| ring.get(id).is_none()) {
            return Err(VaultError::Keys(format!(
                "secrets in the database use key {missing}, which is not in {}",
                path.display()
            )));
        }
        Ok(Vault { path: path.to_path_buf(), ring: RwLock::new(ring) })
    }

    pub fn keys_file(&self) -> &Path {
        &self.path
    }

    /// Re-reads the key file (after a rotation by `sfp-server secrets rotate`).
    fn reload(&self) -> Result<(), VaultError> {
        let fresh = Keyring::open(&self.path)?;
        *self.ring.write().expect("vault key lock") = fresh;
        tracing::info!(keys_file = %self.path.display(), "vault keys reloaded");
        Ok(())
    }

    fn with_key<R>(&self, id: &str, f: impl Fn(&keyring::Kek) -> R) -> Result<R, VaultError> {
        if let Some(r) = self.ring.read().expect("vault key lock").get(id).map(&f) {
            return Ok(r);
        }
        self.reload()?;
        let ring = self.ring.read().expect("vault key lock");
        ring.get(id).map(f).ok_or_else(|| VaultError::Keys(format!("key {id} is not in {}", self.path.display())))
    }

    async fn seal(&self, conn: &mut PgConnection, id: Uuid, plaintext: &[u8]) -> Result<Sealed, VaultError> {
        let active: String = sqlx::query_scalar("SELECT kek_id FROM vault.active_key").fetch_one(&mut *conn).await?;
        self.with_key(&active, |kek| cipher::seal(kek, id, plaintext))
    }

    /// Encrypts and stores a new secret; returns its id.
    pub async fn store(&self, conn: &mut PgConnection, kind: &str, plaintext: &[u8]) -> Result<Uuid, VaultError> {
        let id = Uuid::new_v4();
        let sealed = self.seal(conn, id, plaintext).await?;
        sqlx::query("INSERT INTO vault.secret (id, kind, kek_id, wrapped_key, ciphertext) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(kind)
            .bind(&sealed.kek_id)
            .bind(&sealed.wrapped_key)
            .bind(&sealed.ciphertext)
            .execute(&mut *conn)
            .await?;
        Ok(id)
    }

    /// Stores a value serialised as JSON (the serialised bytes are wiped afterwards).
    pub async fn store_json<T: Serialize>(
        &self,
        conn: &mut PgConnection,
        kind: &str,
        value: &T,
    ) -> Result<Uuid, VaultError> {
        let mut bytes = serde_json::to_vec(value).map_err(|e| VaultError::Content(e.to_string()))?;
        let stored = self.store(conn, kind, &bytes).await;
        bytes.zeroize();
        stored
    }

    /// Replaces a secret's value (new data key, same id).
    pub async fn replace_json<T: Serialize>(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        value: &T,
    ) -> Result<(), VaultError> {
        let mut bytes = serde_json::to_vec(value).map_err(|e| VaultError::Content(e.to_string()))?;
        let sealed = self.seal(conn, id, &bytes).await;
        bytes.zeroize();
        let sealed = sealed?;
        let done = sqlx::query("UPDATE vault.secret SET kek_id = $2, wrapped_key = $3, ciphertext = $4 WHERE id = $1")
            .bind(id)
            .bind(&sealed.kek_id)
            .bind(&sealed.wrapped_key)
            .bind(&sealed.ciphertext)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() == 0 {
            return Err(VaultError::NotFound(id));
        }
        Ok(())
    }

    /// Decrypts a secret.
    pub async fn read(&self, conn: &mut PgConnection, id: Uuid) -> Result<Secret<Vec<u8>>, VaultError> {
        let row: Option<(String, Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT kek_id, wrapped_key, ciphertext FROM vault.secret WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
        let (kek_id, wrapped_key, ciphertext) = row.ok_or(VaultError::NotFound(id))?;
        let sealed = Sealed { kek_id, wrapped_key, ciphertext };
        Ok(Secret::new(self.with_key(&sealed.kek_id, |kek| cipher::unseal(kek, id, &sealed))??))
    }

    pub async fn read_json<T: DeserializeOwned>(&self, conn: &mut PgConnection, id: Uuid) -> Result<T, VaultError> {
        let bytes = self.read(conn, id).await?;
        // The error names the position only; serde_json messages never quote the input.
        serde_json::from_slice(bytes.expose()).map_err(|e| VaultError::Content(format!("line {}", e.line())))
    }

    pub async fn delete(&self, conn: &mut PgConnection, id: Uuid) -> Result<(), VaultError> {
        sqlx::query("DELETE FROM vault.secret WHERE id = $1").bind(id).execute(&mut *conn).await?;
        Ok(())
    }

    /// Appends to the credential access log outside any transaction of the caller's; a failure
    /// is logged, not returned (the access it records has been decided already).
    pub async fn audit_detached(&self, pool: &PgPool, access: Access<'_>) {
        let written = match pool.acquire().await {
            Ok(mut conn) => self.audit(&mut conn, access).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = written {
            tracing::error!(error = %e, "a credential access was not written to the access log");
        }
    }

    /// Appends to the credential access log.
    pub async fn audit(&self, conn: &mut PgConnection, access: Access<'_>) -> Result<(), VaultError> {
        sqlx::query(
            "INSERT INTO vault.access_log (actor_kind, actor_id, subject, purpose, task_id, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(access.actor_kind)
        .bind(access.actor_id)
        .bind(&access.subject)
        .bind(&access.purpose)
        .bind(access.task_id)
        .bind(access.outcome)
        .bind(&access.detail)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
