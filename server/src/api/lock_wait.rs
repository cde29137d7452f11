//! Waiting in a lock queue inside one request (`sfp server environment lock --wait`): the
//! request holds until its ticket is acquired, and answers only then, with the credentials.
//!
//! One listener per server process hears every ticket change on `sfp_locks` (the trigger of
//! `app.lock_ticket`) and wakes the waiting requests, which look at their ticket again. A
//! holder's lease ends without anyone writing, so a waiter also wakes when the lease it waits
//! behind is due; and every few seconds anyway, in case a notification was lost while the
//! listener reconnected.
//!
//! A waiting request that ends without answering (the client hung up, the wait timed out,
//! the server is stopping) withdraws its ticket: nobody would ever use or release it, and
//! it would otherwise hold the environment for a whole lease once its turn came.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::error::{ApiError, ApiResult};
use super::locks::{self, Ticket};
use crate::auth::Caller;
use crate::auth::rls::begin_as;
use crate::notifications::{self, Heard};

const CHANNEL: &str = "sfp_locks";
/// How often a waiter looks again while the listener does not hear changes (connecting, or
/// reconnecting after a lost connection).
const RECHECK_DEAF: Duration = Duration::from_millis(500);

/// Ticket changes of the database, as wake-ups for waiting requests.
pub struct LockEvents {
    changed: Notify,
    listening: AtomicBool,
    shutdown: CancellationToken,
    /// How often a waiter looks again without being woken, while the listener hears changes.
    recheck: Duration,
}

impl LockEvents {
    /// Starts listening (needs a Tokio runtime) until `shutdown`, which also ends every wait.
    /// Waiters look again every `recheck` even when nothing wakes them.
    pub fn start(pool: PgPool, shutdown: CancellationToken, recheck: Duration) -> Arc<LockEvents> {
        let events = Arc::new(LockEvents {
            changed: Notify::new(),
            listening: AtomicBool::new(false),
            shutdown: shutdown.clone(),
            recheck: recheck.max(RECHECK_DEAF),
        });
        tokio::spawn(events.clone().listen(pool));
        events
    }

    /// Whether changes are heard now (waiters then rely less on looking again).
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    async fn listen(self: Arc<Self>, pool: PgPool) {
        let shutdown = self.shutdown.clone();
        notifications::listen(pool, CHANNEL, "lock changes; waiters poll", shutdown, |heard| match heard {
            Heard::Listening => {
                self.listening.store(true, Ordering::Release);
                // Whatever changed while nobody listened: everyone looks again.
                self.changed.notify_waiters();
            }
            Heard::Notification(_) => self.changed.notify_waiters(),
            Heard::Deaf => self.listening.store(false, Ordering::Release),
        })
        .await
    }
}

/// A ticket that its request still owes an answer about: withdrawn (released) if the
/// request ends before [`Pending::answered`].
pub struct Pending {
    pool: PgPool,
    caller: Caller,
    ticket: Option<Ticket>,
}

impl Pending {
    pub fn new(pool: &PgPool, caller: &Caller, ticket: Ticket) -> Pending {
        Pending { pool: pool.clone(), caller: caller.clone(), ticket: Some(ticket) }
    }

    /// The request answers with the ticket: it is the client's now.
    pub fn answered(mut self) {
        self.ticket = None;
    }

    /// Withdraws the ticket now (the request answers with an error instead).
    pub async fn withdraw(mut self) -> ApiResult<()> {
        let ticket = self.ticket.take().expect("a pending ticket");
        withdraw(&self.pool, &self.caller, &ticket).await
    }

    /// Waits until the ticket is acquired (or has ended otherwise) or until `deadline`.
    pub async fn wait(&mut self, events: &LockEvents, deadline: DateTime<Utc>) -> ApiResult<Waited> {
        let ticket = self.ticket.as_mut().expect("a pending ticket");
        loop {
            // Registered before looking, so a change between the look and the sleep still wakes.
            let changed = events.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (now, lease_due) = look(&self.pool, &self.caller, ticket).await?;
            if ticket.status != "queued" {
                return Ok(Waited::Settled);
            }
            if now >= deadline {
                return Ok(Waited::TimedOut);
            }
            let recheck = if events.listening() { events.recheck } else { RECHECK_DEAF };
            let mut sleep = (deadline - now).to_std().unwrap_or_default().min(recheck);
            if let Some(due) = lease_due {
                // A few milliseconds after the lease ends, so that it has ended when we look.
                let until_due = (due - now).to_std().unwrap_or_default() + Duration::from_millis(5);
                sleep = sleep.min(until_due);
            }
            tokio::select! {
                _ = events.shutdown.cancelled() => return Ok(Waited::ShuttingDown),
                _ = &mut changed => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    pub fn ticket(&self) -> &Ticket {
        self.ticket.as_ref().expect("a pending ticket")
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let (pool, caller) = (self.pool.clone(), self.caller.clone());
            // The request's task is being dropped (its client went away): withdraw apart.
            tokio::spawn(async move {
                if let Err(e) = withdraw(&pool, &caller, &ticket).await {
                    tracing::warn!(ticket = %ticket.id, error = ?e, "could not withdraw an abandoned lock ticket");
                }
            });
        }
    }
}

/// How a wait ended.
#[derive(Debug, PartialEq)]
pub enum Waited {
    /// The ticket is no longer queued: acquired, or expired or released meanwhile.
    Settled,
    TimedOut,
    ShuttingDown,
}

/// Settles the ticket's queue and reads the ticket again; returns the database's time and
/// when the current holder's lease ends.
async fn look(
    pool: &PgPool,
    caller: &Caller,
    ticket: &mut Ticket,
) -> ApiResult<(DateTime<Utc>, Option<DateTime<Utc>>)> {
    let mut tx = begin_as(pool, caller).await?;
    locks::settle(&mut tx, &ticket.repository, &ticket.resource).await?;
    *ticket = locks::read_ticket(&mut tx, ticket.id).await?.ok_or_else(|| ApiError::not_found("the ticket is gone"))?;
    let (now, lease_due): (DateTime<Utc>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT now(), (SELECT lease_expires_at FROM app.lock_ticket \
                        WHERE repository = $1 AND resource = $2 AND status = 'acquired')",
    )
    .bind(&ticket.repository)
    .bind(&ticket.resource)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((now, lease_due))
}

async fn withdraw(pool: &PgPool, caller: &Caller, ticket: &Ticket) -> ApiResult<()> {
    // `release` leaves a ticket that has ended meanwhile as it is.
    let mut tx = begin_as(pool, caller).await?;
    locks::release(&mut tx, caller, ticket).await?;
    tx.commit().await?;
    Ok(())
}
