//! The engine's identity: its tenant and the key its tokens are signed with, created on
//! first start and shared by every engine process on the database.

use rand::RngCore;
use sqlx::PgPool;
use uuid::Uuid;

pub struct Identity {
    pub tenant_id: Uuid,
    pub secret: Vec<u8>,
}

/// Loads the identity, creating tenant and key on first use (safe against concurrent starts).
pub async fn load_or_create(pool: &PgPool) -> Result<Identity, sqlx::Error> {
    if let Some((tenant_id, secret)) =
        sqlx::query_as::<_, (Uuid, Vec<u8>)>("SELECT tenant_id, secret FROM engine.signing_key")
            .fetch_optional(pool)
            .await?
    {
        return Ok(Identity { tenant_id, secret });
    }
    let tenant_id = Uuid::new_v4();
    let mut secret = vec![0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE engine.signing_key IN EXCLUSIVE MODE").execute(&mut *tx).await?;
    let existing: Option<(Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT tenant_id, secret FROM engine.signing_key").fetch_optional(&mut *tx).await?;
    if let Some((tenant_id, secret)) = existing {
        tx.commit().await?;
        return Ok(Identity { tenant_id, secret });
    }
    sqlx::query("INSERT INTO engine.tenant (id, name) VALUES ($1, 'default')")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO engine.signing_key (tenant_id, secret) VALUES ($1, $2)")
        .bind(tenant_id)
        .bind(&secret)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Identity { tenant_id, secret })
}
