//! A real PostgreSQL server on loopback, its cluster in a temporary folder.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use tempfile::TempDir;

use crate::binaries::postgres_bin_dir;
use crate::process::{START_ATTEMPTS, free_port, spawn_tied, stop, wait_ready};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Immediate shutdown is enough: the cluster is thrown away right after.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running PostgreSQL cluster with a passwordless `postgres` superuser; dropping it shuts the
/// server down and removes its folder.
pub struct Postgres {
    child: Option<Child>,
    port: u16,
    bin_dir: PathBuf,
    dir: TempDir,
}

/// A database of its own for one test, on a shared [`Postgres`].
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub name: String,
    /// `postgres://postgres@127.0.0.1:<port>/<name>`
    pub url: String,
}

impl TestDatabase {
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        PgPool::connect(&self.url)
            .await
            .with_context(|| format!("connecting to {}", self.url))
    }
}

impl Postgres {
    /// A client program (`psql`, `pg_dump`, …) of the server's own version, connected as its
    /// superuser, standard input closed.
    pub fn client(&self, program: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.bin_dir().join(program));
        command
            .args(["--host=127.0.0.1", &format!("--port={}", self.port())])
            .args(["--username=postgres", "--no-password"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs a [`Self::client`] command to success; panics with its standard error otherwise.
    pub async fn run_client(mut command: tokio::process::Command) {
        let output = command.output().await.expect("start a client program");
        assert!(
            output.status.success(),
            "{command:?}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs initdb into a temporary folder, starts the server on a free loopback port, and waits
    /// until it accepts connections. Durability is off: the data dies with the test.
    pub async fn start() -> anyhow::Result<Self> {
        let bin_dir = postgres_bin_dir()?;
        let owner = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("rollback-pg-")
            .tempdir()
            .context("creating a temporary folder for PostgreSQL")?;
        // The server user must be able to enter the folder and create the cluster inside it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .with_context(|| format!("chown {} to postgres", dir.path().display()))?;
        }
        let mut server = Postgres {
            child: None,
            port: 0,
            bin_dir,
            dir,
        };
        std::fs::create_dir(server.socket_dir())?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(server.socket_dir(), Some(uid), Some(gid))?;
        }
        server.initdb(owner).await?;

        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            server.port = free_port()?;
            match server.spawn_and_wait(owner).await {
                Ok(()) => return Ok(server),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.expect("at least one attempt").context(format!(
            "PostgreSQL did not come up in {START_ATTEMPTS} attempts"
        )))
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`, a superuser without password.
    pub fn admin_url(&self) -> String {
        self.url_for("postgres")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder of the server's version of `pg_dump`, `pg_restore`, `psql`, ...
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where the Unix socket lives (`psql -h <socket_dir>` works too).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The postmaster's process id while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// CPU seconds the server has used so far (user and system): the postmaster's own, its
    /// exited children's (backends, autovacuum workers) and its running children's. A
    /// benchmark on a shared machine compares this as well as wall time: it does not grow
    /// while the server waits for the CPU.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.pid()?;
        // Fields after the command name (which is in parentheses and may hold spaces):
        // state is field 3, ppid 4, utime 14, stime 15, cutime 16, cstime 17.
        let fields = |stat: &str| -> Option<Vec<String>> {
            let rest = &stat[stat.rfind(')')? + 2..];
            Some(rest.split_whitespace().map(str::to_owned).collect())
        };
        let ticks = |f: &[String], from: usize, to: usize| -> f64 {
            f[from - 3..=to - 3]
                .iter()
                .filter_map(|v| v.parse::<f64>().ok())
                .sum()
        };
        let own = fields(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
        let mut total = ticks(&own, 14, 17);
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some(f) = fields(&stat)
                && f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
            {
                total += ticks(&f, 14, 15);
            }
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Some(total / hz)
    }

    /// Creates an empty database with a unique name (`t_<uuid>`), so tests can share one server.
    pub async fn fresh_database(&self) -> anyhow::Result<TestDatabase> {
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&self.admin_url())
            .await
            .with_context(|| format!("connecting to {}", self.admin_url()))?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        admin.close().await.ok();
        Ok(TestDatabase {
            url: self.url_for(&name),
            name,
        })
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    async fn initdb(&self, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
        let mut command = tokio::process::Command::new(self.bin_dir.join("initdb"));
        command
            .args([
                "-N",
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "-D",
            ])
            .arg(self.data_dir())
            .current_dir(self.dir.path())
            .kill_on_drop(true);
        if let Some((uid, gid)) = owner {
            command.uid(uid).gid(gid);
        }
        let output = command.output().await.context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb -D {} failed with {}:\n{}{}",
                self.data_dir().display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            );
        }
        Ok(())
    }

    async fn spawn_and_wait(&mut self, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
        let mut command = Command::new(self.bin_dir.join("postgres"));
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.socket_dir())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ])
            // postgres resolves its own path relative to the cwd, which must be readable by it.
            .current_dir(self.dir.path());
        if let Some((uid, gid)) = owner {
            command.uid(uid).gid(gid);
        }
        let log = self.log_path();
        self.child = Some(spawn_tied(command, &log)?);

        let url = self.admin_url();
        let what = format!("postgres on port {}", self.port);
        let waited = wait_ready(
            &mut self.child,
            &what,
            &log,
            READY_TIMEOUT,
            Duration::from_millis(50),
            || {
                let url = url.clone();
                async move {
                    let probe = tokio::time::timeout(PROBE_TIMEOUT, PgConnection::connect(&url));
                    match probe.await {
                        Ok(Ok(conn)) => {
                            conn.close().await.ok();
                            true
                        }
                        _ => false,
                    }
                }
            },
        )
        .await;
        if waited.is_err() {
            self.stop();
        }
        waited
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, libc::SIGQUIT, STOP_GRACE);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.admin_url())
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// PostgreSQL refuses to run as root: then the cluster belongs to the `postgres` user that the
/// Debian package creates. Otherwise it runs as whoever runs the tests.
fn server_user() -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").expect("no NUL byte");
    // SAFETY: passwd is plain data; getpwnam_r (unlike getpwnam) writes only into our buffers,
    // so parallel tests cannot clobber each other's result.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        bail!(
            "running as root, PostgreSQL needs a `postgres` user to run as; it comes with the \
             package: deploy/local/install-deps.sh (or: apt-get update && apt-get install -y postgresql)"
        );
    }
    Ok(Some((entry.pw_uid, entry.pw_gid)))
}
