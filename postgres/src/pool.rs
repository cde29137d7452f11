//! How the services connect: a pool that checks a connection before lending it only when it
//! has been idle for a while.
//!
//! sqlx pings every connection it lends by default (`test_before_acquire`), a round trip to
//! PostgreSQL before each statement: for a point read through the API, half of its database
//! round trips and of the kernel's loopback work. A connection in steady use has just proved
//! itself; one that sat idle (where a restart or a dropped link shows up) is still checked.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgPoolOptions;

/// A connection idle for longer than this is pinged before it is lent.
pub const CHECK_AFTER_IDLE: Duration = Duration::from_secs(5);

/// Pool options with at most `max_connections` and the idle check above.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    pool_options_checking_after(max_connections, CHECK_AFTER_IDLE)
}

/// The same with the idle time given (tests use a short one).
pub fn pool_options_checking_after(max_connections: u32, idle: Duration) -> PgPoolOptions {
    PgPoolOptions::new().max_connections(max_connections).test_before_acquire(false).before_acquire(
        move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for > idle {
                    conn.ping().await?;
                }
                Ok(true)
            })
        },
    )
}
