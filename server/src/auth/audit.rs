//! The audit log: one row per authenticated request (and per refused attempt), appended in
//! batches by a writer task so a request never waits for it. On shutdown the writer empties
//! its queue before it stops.

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const BATCH: usize = 500;
const LINGER: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub at: chrono::DateTime<chrono::Utc>,
    pub request_id: Option<String>,
    pub actor_id: Option<Uuid>,
    pub actor_email: Option<String>,
    /// `user`, `application` or `anonymous`.
    pub actor_kind: String,
    pub role: Option<String>,
    pub token_id: Option<Uuid>,
    pub method: String,
    pub route: String,
    pub path: String,
    pub target: Option<String>,
    pub status: i32,
    /// `allowed`, `denied` (401/403/429) or `failed` (other errors).
    pub outcome: String,
    #[serde(skip)]
    #[sqlx(skip)]
    pub client_ip: Option<IpAddr>,
}

#[derive(Clone)]
pub struct AuditLog {
    sender: mpsc::UnboundedSender<AuditEntry>,
}

impl AuditLog {
    /// Starts the writer; it stops once `shutdown` fires and the queue is written.
    pub fn start(pool: PgPool, shutdown: CancellationToken) -> (AuditLog, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(write(pool, receiver, shutdown));
        (AuditLog { sender }, task)
    }

    pub fn record(&self, entry: AuditEntry) {
        if self.sender.send(entry).is_err() {
            tracing::error!("the audit log writer has stopped; an entry was not written");
        }
    }
}

async fn write(pool: PgPool, mut queue: mpsc::UnboundedReceiver<AuditEntry>, shutdown: CancellationToken) {
    let mut closing = false;
    loop {
        let first = if closing {
            match queue.try_recv() {
                Ok(e) => Some(e),
                Err(_) => return,
            }
        } else {
            tokio::select! {
                e = queue.recv() => e,
                _ = shutdown.cancelled() => { closing = true; continue; }
            }
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        // Under load, entries arrive one by one: waiting a moment for more makes one insert
        // of many rows instead of many inserts of a few.
        let linger = tokio::time::sleep(if closing { Duration::ZERO } else { LINGER });
        tokio::pin!(linger);
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) if closing => break,
                Err(_) => tokio::select! {
                    e = queue.recv() => match e {
                        Some(e) => batch.push(e),
                        None => break,
                    },
                    _ = &mut linger => break,
                },
            }
        }
        let mut attempt = 0;
        while let Err(e) = insert(&pool, &batch).await {
            attempt += 1;
            if attempt >= 5 {
                tracing::error!(error = %e, entries = batch.len(), "audit entries could not be written");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
        }
    }
}

async fn insert(pool: &PgPool, batch: &[AuditEntry]) -> sqlx::Result<()> {
    let col = |f: fn(&AuditEntry) -> Option<String>| batch.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO app.audit_log (at, request_id, actor_id, actor_email, actor_kind, role, token_id, method, route, \
           path, target, status, outcome, client_ip) \
         SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[], \
           $7::uuid[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int[], $13::text[], $14::inet[])",
    )
    .bind(batch.iter().map(|e| e.at).collect::<Vec<_>>())
    .bind(col(|e| e.request_id.clone()))
    .bind(batch.iter().map(|e| e.actor_id).collect::<Vec<_>>())
    .bind(col(|e| e.actor_email.clone()))
    .bind(batch.iter().map(|e| e.actor_kind.clone()).collect::<Vec<_>>())
    .bind(col(|e| e.role.clone()))
    .bind(batch.iter().map(|e| e.token_id).collect::<Vec<_>>())
    .bind(batch.iter().map(|e| e.method.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|e| e.route.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|e| e.path.clone()).collect::<Vec<_>>())
    .bind(col(|e| e.target.clone()))
    .bind(batch.iter().map(|e| e.status).collect::<Vec<_>>())
    .bind(batch.iter().map(|e| e.outcome.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|e| e.client_ip.map(|i| i.to_string())).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}
