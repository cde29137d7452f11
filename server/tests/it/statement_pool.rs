//! The statement pool takes a connection back without a round trip, reuses it while it is in
//! a known state, and closes it instead when a statement ended half-way.

use std::time::{Duration, Instant};

use sfp_postgres::{Lent, StatementPool};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

async fn backend_pid(lent: &mut Lent) -> i32 {
    let pid = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut **lent).await;
    lent.settle(&pid);
    pid.unwrap()
}

/// Whether a backend with this pid still runs, asked from another connection.
async fn backend_alive(connect: &PgConnectOptions, pid: i32) -> bool {
    let mut other = <sqlx::PgConnection as sqlx::Connection>::connect_with(connect).await.unwrap();
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
        .bind(pid)
        .fetch_one(&mut other)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_settled_connection_is_lent_again_and_an_error_from_postgres_keeps_it(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = StatementPool::new(connect, 2, Duration::from_secs(60));
    let mut lent = pool.acquire().await.unwrap();
    let first = backend_pid(&mut lent).await;
    drop(lent);
    assert_eq!(pool.idle(), 1);
    let mut lent = pool.acquire().await.unwrap();
    assert_eq!(backend_pid(&mut lent).await, first, "the idle connection is lent again");
    // PostgreSQL refusing a statement ends the exchange cleanly: the connection stays.
    let failed = sqlx::query_scalar::<_, i32>("SELECT 1 / 0").fetch_one(&mut *lent).await;
    lent.settle(&failed);
    assert!(matches!(failed, Err(sqlx::Error::Database(_))));
    assert!(lent.is_settled());
    drop(lent);
    let mut lent = pool.acquire().await.unwrap();
    assert_eq!(backend_pid(&mut lent).await, first);
    assert_eq!(pool.opened(), 1);
}

#[sqlx::test]
async fn a_statement_cancelled_half_way_closes_its_connection(_: PgPoolOptions, connect: PgConnectOptions) {
    let pool = StatementPool::new(connect.clone(), 1, Duration::from_secs(60));
    let mut lent = pool.acquire().await.unwrap();
    let first = backend_pid(&mut lent).await;
    // The caller gives up while PostgreSQL is still working (a client that hung up).
    let sleep = sqlx::query("SELECT pg_sleep(3)").execute(&mut *lent);
    assert!(tokio::time::timeout(Duration::from_millis(200), sleep).await.is_err());
    assert!(!lent.is_settled());
    drop(lent);
    assert_eq!(pool.idle(), 0, "an unsettled connection is not taken back");
    let mut lent = pool.acquire().await.unwrap();
    let second = backend_pid(&mut lent).await;
    assert_ne!(first, second, "the next caller gets a new connection, not one mid-statement");
    assert_eq!(pool.opened(), 2);
    // The abandoned backend ends once it notices its client left (at the latest when its
    // sleep ends).
    let deadline = Instant::now() + Duration::from_secs(15);
    while backend_alive(&connect, first).await {
        assert!(Instant::now() < deadline, "backend {first} still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test]
async fn a_connection_that_died_while_idle_is_replaced(_: PgPoolOptions, connect: PgConnectOptions) {
    let pool = StatementPool::new(connect.clone(), 1, Duration::from_millis(200));
    let mut lent = pool.acquire().await.unwrap();
    let first = backend_pid(&mut lent).await;
    drop(lent);
    let mut killer = <sqlx::PgConnection as sqlx::Connection>::connect_with(&connect).await.unwrap();
    let ended: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(first).fetch_one(&mut killer).await.unwrap();
    assert!(ended);
    // Past the idle time the connection is pinged, found gone, and another opened.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut lent = pool.acquire().await.unwrap();
    assert_ne!(backend_pid(&mut lent).await, first);
    assert_eq!(pool.opened(), 2);
}

#[sqlx::test]
async fn callers_beyond_the_size_wait_for_a_connection_to_come_back(_: PgPoolOptions, connect: PgConnectOptions) {
    let pool = StatementPool::new(connect, 1, Duration::from_secs(60));
    let mut lent = pool.acquire().await.unwrap();
    let first = backend_pid(&mut lent).await;
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut lent = pool.acquire().await.unwrap();
            backend_pid(&mut lent).await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the second caller waits while the only connection is lent");
    drop(lent);
    assert_eq!(waiting.await.unwrap(), first, "and then gets that same connection");
    assert_eq!(pool.opened(), 1);
}
