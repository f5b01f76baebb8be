//! The support library itself: servers come up, keep their data across a crash, and leave
//! nothing behind.

use std::path::PathBuf;

use async_nats::jetstream;
use rollback_tests::{NatsServer, Postgres, find_binary};
use sqlx::Connection;

type TestResult = anyhow::Result<()>;

fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the pid exists.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Pids whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                // The command name in parentheses may contain spaces; ppid is the second field
                // after it.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

#[test]
fn binaries_are_found() -> TestResult {
    for name in ["nats-server", "postgres", "initdb", "pg_dump", "pg_restore"] {
        let path = find_binary(name)?;
        assert!(path.is_file(), "{name} resolved to {}", path.display());
    }
    let err = find_binary("no-such-program-here").unwrap_err();
    assert!(err.to_string().contains("no-such-program-here"), "{err}");
    Ok(())
}

#[tokio::test]
async fn nats_serves_jetstream() -> TestResult {
    let nats = NatsServer::start().await?;
    assert!(nats.url().starts_with("nats://127.0.0.1:"));
    let client = async_nats::connect(nats.url()).await?;
    let account = jetstream::new(client).query_account().await?;
    assert_eq!(account.streams, 0);
    Ok(())
}

#[tokio::test]
async fn nats_restart_keeps_streams() -> TestResult {
    let mut nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    js.create_stream(jetstream::stream::Config {
        name: "KEEP".into(),
        subjects: vec!["keep.>".into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    js.publish("keep.one", "payload".into()).await?.await?;

    let old_pid = nats.pid().expect("running");
    nats.kill();
    assert!(
        !process_exists(old_pid),
        "nats-server {old_pid} survived kill"
    );
    assert!(nats.pid().is_none());
    assert!(nats.store_dir().join("jetstream").is_dir());

    nats.restart().await?;
    assert_ne!(nats.pid(), Some(old_pid));
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let stream = js.get_stream("KEEP").await?;
    assert_eq!(stream.cached_info().state.messages, 1);
    Ok(())
}

#[tokio::test]
async fn nats_config_is_applied() -> TestResult {
    let nats = NatsServer::start_with_config(
        r#"authorization { users = [ { user: "alice", password: "secret" } ] }"#,
    )
    .await?;
    assert!(
        async_nats::connect(nats.url()).await.is_err(),
        "anonymous connect must be refused"
    );
    let client =
        async_nats::ConnectOptions::with_user_and_password("alice".into(), "secret".into())
            .connect(nats.url())
            .await?;
    jetstream::new(client).query_account().await?;
    Ok(())
}

#[tokio::test]
async fn postgres_gives_distinct_fresh_databases() -> TestResult {
    let pg = Postgres::start().await?;
    assert!(pg.bin_dir().join("pg_dump").is_file());
    let a = pg.fresh_database().await?;
    let b = pg.fresh_database().await?;
    assert_ne!(a.name, b.name);
    assert_ne!(a.url, b.url);
    for db in [&a, &b] {
        let mut conn = sqlx::PgConnection::connect(&db.url).await?;
        let (one, name): (i32, String) = sqlx::query_as("SELECT 1, current_database()::text")
            .fetch_one(&mut conn)
            .await?;
        assert_eq!((one, name.as_str()), (1, db.name.as_str()));
    }
    let pool = a.pool().await?;
    sqlx::query("CREATE TABLE only_in_a (id int)")
        .execute(&pool)
        .await?;
    let mut conn = sqlx::PgConnection::connect(&b.url).await?;
    let (found,): (bool,) = sqlx::query_as("SELECT to_regclass('only_in_a') IS NOT NULL")
        .fetch_one(&mut conn)
        .await?;
    assert!(!found, "databases must not share tables");
    Ok(())
}

#[tokio::test]
async fn drop_stops_servers_and_removes_folders() -> TestResult {
    let nats = NatsServer::start().await?;
    let nats_pid = nats.pid().expect("running");
    let nats_dir: PathBuf = nats.store_dir().parent().expect("store in temp dir").into();
    let pg = Postgres::start().await?;
    let pg_pid = pg.pid().expect("running");
    let pg_dir: PathBuf = pg.data_dir().parent().expect("data in temp dir").into();
    let pg_children = children_of(pg_pid);
    assert!(
        !pg_children.is_empty(),
        "postmaster should have started its helpers"
    );
    assert!(nats_dir.is_dir() && pg_dir.is_dir());

    drop(nats);
    drop(pg);

    assert!(
        !process_exists(nats_pid),
        "nats-server {nats_pid} still runs"
    );
    assert!(!process_exists(pg_pid), "postmaster {pg_pid} still runs");
    for child in pg_children {
        assert!(!process_exists(child), "postgres helper {child} still runs");
    }
    assert!(!nats_dir.exists(), "{} left behind", nats_dir.display());
    assert!(!pg_dir.exists(), "{} left behind", pg_dir.display());
    Ok(())
}
