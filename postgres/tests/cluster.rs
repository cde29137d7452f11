//! The managed cluster with the real PostgreSQL binaries: create, start, connect, stop,
//! reopen; refusals with clear messages.

use std::os::unix::fs::PermissionsExt;

use sfp_postgres::{Cluster, ClusterOptions, StartOutcome};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

fn folder() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("sfp-pg-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test]
async fn create_start_stop_and_reopen() {
    let dir = folder();
    let opts = ClusterOptions { database: "app_db".into(), ..ClusterOptions::new(dir.path().join("pg")) };

    assert!(Cluster::find(opts.clone()).await.unwrap().is_none(), "find never creates");
    let mut cluster = Cluster::open(opts.clone()).await.unwrap();
    assert!(cluster.created());
    assert_eq!(cluster.start().await.unwrap(), StartOutcome::Started);
    assert!(cluster.is_running().await.unwrap());
    let port = cluster.port();

    let mut conn = PgConnection::connect(&cluster.url()).await.unwrap();
    let (db, user): (String, String) =
        sqlx::query_as("SELECT current_database(), current_user").fetch_one(&mut conn).await.unwrap();
    assert_eq!((db.as_str(), user.as_str()), ("app_db", "sfp"));
    sqlx::raw_sql("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();

    // The services of this machine connect through the Unix socket (no server address),
    // which only the cluster's account may open.
    let local = cluster.local_url();
    assert!(local.contains("?host=/"), "{local}");
    let mut conn = PgConnection::connect(&local).await.unwrap();
    let addr: Option<String> =
        sqlx::query_scalar("SELECT host(inet_server_addr())").fetch_one(&mut conn).await.unwrap();
    assert_eq!(addr, None, "connected over TCP");
    conn.close().await.unwrap();
    let socket_dir = std::fs::metadata(cluster.socket_dir()).unwrap();
    assert_eq!(socket_dir.permissions().mode() & 0o777, 0o700);
    let mut conn = PgConnection::connect(&cluster.url()).await.unwrap();
    let addr: Option<String> =
        sqlx::query_scalar("SELECT host(inet_server_addr())").fetch_one(&mut conn).await.unwrap();
    assert_eq!(addr.as_deref(), Some("127.0.0.1"));
    conn.close().await.unwrap();

    // A second handle sees it running and reuses it.
    let mut again = Cluster::open(opts.clone()).await.unwrap();
    assert!(!again.created());
    assert_eq!(again.start().await.unwrap(), StartOutcome::AlreadyRunning);

    let pid = cluster.postmaster_pid().unwrap();
    assert!(cluster.stop().await.unwrap());
    assert!(sfp_postgres::wait_for_exit(pid, std::time::Duration::from_secs(10)).await);
    assert!(!cluster.stop().await.unwrap(), "stopping a stopped cluster is a no-op");

    // Reopened later: same port, same data, password not required again from the caller.
    let mut reopened = Cluster::find(opts).await.unwrap().expect("exists");
    assert!(!reopened.created());
    assert_eq!(reopened.start().await.unwrap(), StartOutcome::Started);
    assert_eq!(reopened.port(), port);
    let mut conn = PgConnection::connect(&reopened.url()).await.unwrap();
    let v: i32 = sqlx::query_scalar("SELECT v FROM kept").fetch_one(&mut conn).await.unwrap();
    assert_eq!(v, 42);
    conn.close().await.unwrap();
    reopened.stop().await.unwrap();

    let secret = std::fs::metadata(dir.path().join("pg/cluster.json")).unwrap();
    assert_eq!(secret.permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn a_fixed_port_in_use_is_refused_by_name() {
    let dir = folder();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let opts = ClusterOptions { port: Some(port), ..ClusterOptions::new(dir.path().join("pg")) };
    let mut cluster = Cluster::open(opts).await.unwrap();
    let err = cluster.start().await.unwrap_err().to_string();
    assert!(err.contains(&port.to_string()) && err.contains("in use"), "{err}");
}

#[tokio::test]
async fn a_folder_that_is_not_a_cluster_is_left_alone() {
    let dir = folder();
    let data = dir.path().join("pg/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("precious.txt"), "do not delete").unwrap();
    let err = Cluster::open(ClusterOptions::new(dir.path().join("pg"))).await.unwrap_err().to_string();
    assert!(err.contains("not a PostgreSQL data directory"), "{err}");
    assert!(data.join("precious.txt").exists());
}

#[tokio::test]
async fn bad_database_names_are_refused() {
    let dir = folder();
    let opts = ClusterOptions { database: "x\"; DROP".into(), ..ClusterOptions::new(dir.path().join("pg")) };
    let err = Cluster::open(opts).await.unwrap_err().to_string();
    assert!(err.contains("database name"), "{err}");
}

#[tokio::test]
async fn a_socket_in_a_folder_with_a_space_and_tcp_once_stopped() {
    let dir = folder();
    let mut cluster = Cluster::open(ClusterOptions::new(dir.path().join("my pg"))).await.unwrap();
    cluster.start().await.unwrap();
    let local = cluster.local_url();
    assert!(local.contains("my%20pg/run"), "{local}");
    let mut conn = PgConnection::connect(&local).await.unwrap();
    let addr: Option<String> =
        sqlx::query_scalar("SELECT host(inet_server_addr())").fetch_one(&mut conn).await.unwrap();
    assert_eq!(addr, None, "connected over TCP");
    conn.close().await.unwrap();
    cluster.stop().await.unwrap();
    // The server removes its socket when it stops: nothing names a socket that is not there.
    assert_eq!(cluster.local_url(), cluster.url());
}

#[tokio::test]
async fn a_socket_path_too_long_for_the_kernel_leaves_tcp_only() {
    let dir = folder();
    let mut cluster = Cluster::open(ClusterOptions::new(dir.path().join("p".repeat(110)))).await.unwrap();
    cluster.start().await.unwrap();
    assert_eq!(cluster.local_url(), cluster.url(), "no socket can exist at that path");
    let mut conn = PgConnection::connect(&cluster.local_url()).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.unwrap();
    assert_eq!(one, 1);
    conn.close().await.unwrap();
    cluster.stop().await.unwrap();
}
