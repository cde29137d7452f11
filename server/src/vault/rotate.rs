//! `sfp-server secrets rotate`: a new key-encryption key becomes active and every data key is
//! re-wrapped under it, in small transactions while the server keeps running (a server meets
//! the new key id and reloads the key file). Values are never decrypted here.

use std::path::Path;
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::VaultError;
use super::cipher;
use super::keyring::Keyring;

const BATCH: i64 = 200;

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RotateReport {
    pub previous_key: String,
    pub active_key: String,
    pub rewrapped: u64,
    pub retired_keys: Vec<String>,
}

/// Rotates the keys of `keys_file` for the database of `pool`. With `retire`, keys no
/// secret uses any more are removed from the file afterwards.
pub async fn rotate(keys_file: &Path, pool: &PgPool, retire: bool) -> Result<RotateReport, VaultError> {
    let mut ring = Keyring::open(keys_file)?;
    let previous: String = sqlx::query_scalar("SELECT kek_id FROM vault.active_key")
        .fetch_optional(pool)
        .await?
        .unwrap_or_else(|| ring.active.clone());
    let new_id = ring.add_active();
    // The file first: a server that sees the new id in the database must find it there.
    ring.save()?;
    sqlx::query(
        "INSERT INTO vault.active_key (kek_id) VALUES ($1) \
         ON CONFLICT (id) DO UPDATE SET kek_id = excluded.kek_id, since = now()",
    )
    .bind(&new_id)
    .execute(pool)
    .await?;
    let mut rewrapped = 0u64;
    loop {
        let mut tx = pool.begin().await?;
        let rows: Vec<(Uuid, String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, kek_id, wrapped_key FROM vault.secret WHERE kek_id <> $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(&new_id)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM vault.secret WHERE kek_id <> $1")
                .bind(&new_id)
                .fetch_one(pool)
                .await?;
            if left == 0 {
                break;
            }
            // Rows locked by a writer that began before the switch: wait for it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let new = ring.active_key();
        for (id, kek_id, wrapped) in &rows {
            let old = ring.get(kek_id).ok_or_else(|| {
                VaultError::Keys(format!("secret {id} uses key {kek_id}, which is not in {}", keys_file.display()))
            })?;
            let wrapped = cipher::rewrap(old, new, *id, wrapped)?;
            sqlx::query("UPDATE vault.secret SET kek_id = $2, wrapped_key = $3, rewrapped_at = now() WHERE id = $1")
                .bind(id)
                .bind(&new_id)
                .bind(&wrapped)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        rewrapped += rows.len() as u64;
    }
    let mut retired = Vec::new();
    if retire {
        let used: Vec<String> = sqlx::query_scalar("SELECT DISTINCT kek_id FROM vault.secret").fetch_all(pool).await?;
        retired = ring.ids().into_iter().filter(|id| *id != new_id && !used.contains(id)).collect();
        ring.retire(&retired);
        ring.save()?;
    }
    Ok(RotateReport { previous_key: previous, active_key: new_id, rewrapped, retired_keys: retired })
}
