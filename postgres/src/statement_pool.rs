//! Connections for the hottest single statements (point reads, batched writes), lent and
//! taken back without a round trip.
//!
//! sqlx's pool sends a `Sync` to PostgreSQL every time a connection comes back (to find one
//! left in a bad state by a cancelled statement), and waits for the answer: a second wake-up
//! of a PostgreSQL backend for each statement, which sqlx 0.9 offers no way to skip. Here a
//! connection knows instead whether it is in a known state: any mutable use marks it
//! unsettled, [`Lent::settle`] after a statement marks it settled again unless the statement
//! failed in a way that leaves the protocol state unknown, and an unsettled connection (a
//! statement cancelled half-way, a broken link) is closed instead of reused. A connection
//! that sat idle for a while is pinged before it is lent again, as the main pool does.
//!
//! Measured with the data benchmark in one sitting (2026-12-02, `BENCHMARKS.md`): the server
//! and PostgreSQL together about a tenth less CPU at 2,000 requests/s; taking the `Sync` out
//! of every statement (sqlx patched, an experiment) gave the closed loop about a quarter more.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long [`StatementPool::acquire`] waits for a connection, as the main pool does.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a statement of this pool waits for a row lock (PostgreSQL's `lock_timeout`):
/// its statements take milliseconds, so a longer wait means a lock held elsewhere (an
/// operator's open transaction, say), and the statement gives up (`55P03`) instead of
/// keeping its connection, and the callers queued behind it, waiting.
pub const LOCK_TIMEOUT: &str = "5s";
/// The longest any statement of this pool runs (`statement_timeout`, then `57014`).
pub const STATEMENT_TIMEOUT: &str = "30s";

/// At most `size` connections, opened when first needed.
#[derive(Clone)]
pub struct StatementPool {
    inner: Arc<Inner>,
}

struct Inner {
    options: PgConnectOptions,
    idle: Mutex<Vec<(PgConnection, Instant)>>,
    permits: Arc<Semaphore>,
    check_after_idle: Duration,
    opened: AtomicU64,
}

impl StatementPool {
    /// A pool connecting with `options`; a connection idle for longer than `check_after_idle`
    /// is pinged before it is lent ([`crate::CHECK_AFTER_IDLE`] in the product).
    pub fn new(options: PgConnectOptions, size: usize, check_after_idle: Duration) -> Self {
        StatementPool {
            inner: Arc::new(Inner {
                options,
                idle: Mutex::new(Vec::with_capacity(size)),
                permits: Arc::new(Semaphore::new(size.max(1))),
                check_after_idle,
                opened: AtomicU64::new(0),
            }),
        }
    }

    /// A pool of `size` reaching the database `pool` reaches, the same way, its statements
    /// bounded by [`LOCK_TIMEOUT`] and [`STATEMENT_TIMEOUT`].
    pub fn beside(pool: &PgPool, size: usize) -> Self {
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .options([("lock_timeout", LOCK_TIMEOUT), ("statement_timeout", STATEMENT_TIMEOUT)]);
        StatementPool::new(options, size, crate::CHECK_AFTER_IDLE)
    }

    /// How many connections the pool has opened so far.
    pub fn opened(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }

    /// How many connections wait idle for the next statement.
    pub fn idle(&self) -> usize {
        self.inner.idle_list().len()
    }

    /// A connection: an idle one (pinged first if it sat idle long), else a new one. Waits
    /// while `size` are lent, for at most [`ACQUIRE_TIMEOUT`] in all (then `PoolTimedOut`).
    pub async fn acquire(&self) -> sqlx::Result<Lent> {
        tokio::time::timeout(ACQUIRE_TIMEOUT, self.lend()).await.unwrap_or(Err(sqlx::Error::PoolTimedOut))
    }

    async fn lend(&self) -> sqlx::Result<Lent> {
        let permit = self.inner.permits.clone().acquire_owned().await.map_err(|_| sqlx::Error::PoolClosed)?;
        loop {
            let next = self.inner.idle_list().pop();
            let Some((mut conn, since)) = next else { break };
            if since.elapsed() > self.inner.check_after_idle && conn.ping().await.is_err() {
                // Gone while idle (a restart, a dropped link): try the next one.
                continue;
            }
            return Ok(self.lent(conn, permit));
        }
        let conn = PgConnection::connect_with(&self.inner.options).await?;
        self.inner.opened.fetch_add(1, Ordering::Relaxed);
        Ok(self.lent(conn, permit))
    }

    fn lent(&self, conn: PgConnection, permit: OwnedSemaphorePermit) -> Lent {
        Lent { conn: Some(conn), settled: true, pool: self.inner.clone(), _permit: permit }
    }
}

impl Inner {
    fn idle_list(&self) -> std::sync::MutexGuard<'_, Vec<(PgConnection, Instant)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A lent connection; it goes back to the pool when dropped, if settled.
pub struct Lent {
    conn: Option<PgConnection>,
    settled: bool,
    pool: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl Lent {
    /// Records how the last statement ended: the connection stays fit for reuse if it
    /// succeeded or PostgreSQL answered with an error (the exchange is then complete); any
    /// other failure (I/O, protocol, a decoding error half-way) leaves it unsettled.
    pub fn settle<T>(&mut self, result: &Result<T, sqlx::Error>) {
        self.settled = matches!(result, Ok(_) | Err(sqlx::Error::Database(_) | sqlx::Error::RowNotFound));
    }

    /// Whether the connection is in a known state (see [`Lent::settle`]).
    pub fn is_settled(&self) -> bool {
        self.settled
    }
}

impl Deref for Lent {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("a lent connection")
    }
}

impl DerefMut for Lent {
    /// Using the connection unsettles it until [`Lent::settle`] says how the use ended.
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.settled = false;
        self.conn.as_mut().expect("a lent connection")
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.settled
        {
            self.pool.idle_list().push((conn, Instant::now()));
        }
        // Else the connection closes here (its socket with it); PostgreSQL ends the backend.
    }
}
