//! The schema migrations, applied once each, in order.

use sqlx::PgPool;

use crate::Error;

/// Every migration in `migrations/` (auth, app, engine and vault schemas), embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MigrationReport {
    /// Migrations this call applied.
    pub applied_now: usize,
    /// Migrations recorded in the database afterwards.
    pub total: usize,
}

/// Applies the migrations that are not applied yet (sqlx serialises concurrent callers with an
/// advisory lock), and says how many it applied.
pub async fn migrate(pool: &PgPool) -> Result<MigrationReport, Error> {
    let before = applied_migrations(pool).await?;
    MIGRATOR.run(pool).await?;
    let total = applied_migrations(pool).await?;
    Ok(MigrationReport { applied_now: total - before, total })
}

/// How many migrations the database records as applied successfully (0 on a new database).
pub async fn applied_migrations(pool: &PgPool) -> Result<usize, Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(0);
    }
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public._sqlx_migrations WHERE success").fetch_one(pool).await?;
    Ok(usize::try_from(n).unwrap_or(0))
}
