//! The pool lends a connection in steady use without pinging it first, yet replaces one that
//! died while it sat idle instead of handing out a broken connection.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// A pool of one connection that is checked after `idle`, and that connection's backend,
/// ended by another session.
async fn pool_whose_connection_was_ended(connect: PgConnectOptions, idle: Duration) -> (PgPool, i32) {
    let pool = sfp_postgres::pool_options_checking_after(1, idle).connect_with(connect.clone()).await.unwrap();
    let first: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.unwrap();
    let killer = sfp_postgres::pool_options(1).connect_with(connect).await.unwrap();
    let ended: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(first).fetch_one(&killer).await.unwrap();
    assert!(ended);
    (pool, first)
}

#[sqlx::test]
async fn a_connection_that_died_while_idle_is_replaced(_: PgPoolOptions, connect: PgConnectOptions) {
    let (pool, first) = pool_whose_connection_was_ended(connect, Duration::from_millis(200)).await;
    // Past the idle time the pool checks the connection, finds it gone and opens another.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.unwrap();
    assert_ne!(first, second);
}

#[sqlx::test]
async fn a_connection_in_steady_use_is_not_pinged(_: PgPoolOptions, connect: PgConnectOptions) {
    // With the check after a long idle time, a dead connection is lent as it is: the first
    // statement fails. (This is what makes the pool skip a round trip per statement.)
    let (pool, first) = pool_whose_connection_was_ended(connect, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sqlx::query("SELECT 1").execute(&pool).await.is_err());
    // The broken connection is dropped with the error; the next statement gets a new one.
    let second: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.unwrap();
    assert_ne!(first, second);
}
