//! The PostgreSQL client programs (`pg_dump`, `pg_restore`): where they are, how they reach
//! the database, and how one runs as a child of a step.
//!
//! The connection travels in libpq's environment variables (`PGHOST`, `PGPORT`, `PGUSER`,
//! `PGPASSWORD`, `PGDATABASE`, …), never on the command line, where `ps` shows it to every user
//! of the machine; a process's environment is readable only by its owner. The child leads a
//! process group of its own (`pg_dump -j` forks workers), and cancellation kills the group.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::str::FromStr;

use percent_encoding::percent_decode_str;
use rollback_proto::OutputStream;
use sqlx::postgres::PgConnectOptions;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::db::DatabaseTargets;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::ArchiveError;
use crate::output::OutputSink;
use crate::process::ProcessGroup;
use crate::secret::Secret;

/// Where Debian's packages put each major version's programs.
const DEBIAN_LIB_DIR: &str = "/usr/lib/postgresql";
/// Lines of a program's stderr kept for the error message when it fails.
const STDERR_TAIL_LINES: usize = 20;

/// The client programs, by full path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgPrograms {
    /// `pg_dump`.
    pub pg_dump: PathBuf,
    /// `pg_restore`.
    pub pg_restore: PathBuf,
}

impl PgPrograms {
    /// Finds each program: in `$PG_BIN_DIR` when it is set (and only there: an override that
    /// points nowhere is a mistake to report, not to paper over), else on `PATH`, else in the
    /// newest `/usr/lib/postgresql/<N>/bin`.
    pub fn locate() -> Result<Self, ArchiveError> {
        let bin_dir = std::env::var_os("PG_BIN_DIR").filter(|dir| !dir.is_empty());
        let path = std::env::var_os("PATH");
        let find = |name| {
            find_program(
                name,
                bin_dir.as_deref(),
                path.as_deref(),
                Path::new(DEBIAN_LIB_DIR),
            )
        };
        Ok(Self {
            pg_dump: find("pg_dump")?,
            pg_restore: find("pg_restore")?,
        })
    }

    /// The programs of one folder (such as a test server's own `bin`).
    pub fn in_dir(dir: &Path) -> Result<Self, ArchiveError> {
        let find =
            |name| find_program(name, Some(dir.as_os_str()), None, Path::new(DEBIAN_LIB_DIR));
        Ok(Self {
            pg_dump: find("pg_dump")?,
            pg_restore: find("pg_restore")?,
        })
    }
}

fn find_program(
    name: &'static str,
    bin_dir: Option<&std::ffi::OsStr>,
    path: Option<&std::ffi::OsStr>,
    debian_lib: &Path,
) -> Result<PathBuf, ArchiveError> {
    if let Some(dir) = bin_dir {
        let candidate = Path::new(dir).join(name);
        return if is_executable(&candidate) {
            Ok(candidate)
        } else {
            Err(ArchiveError::ProgramMissing {
                program: name,
                looked: format!("PG_BIN_DIR={}", Path::new(dir).display()),
            })
        };
    }
    if let Some(found) = path
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
    {
        return Ok(found);
    }
    if let Some(found) = newest_version_dir(debian_lib)
        .map(|dir| dir.join(name))
        .filter(|candidate| is_executable(candidate))
    {
        return Ok(found);
    }
    Err(ArchiveError::ProgramMissing {
        program: name,
        looked: format!("PATH and {}/<version>/bin", debian_lib.display()),
    })
}

/// `<lib>/<N>/bin` for the highest numeric `N`.
fn newest_version_dir(lib: &Path) -> Option<PathBuf> {
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.is_dir())
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// How the client programs reach one database: libpq parameters taken from a `postgres://` URL.
///
/// Holds the password; it is handed to children only in `PGPASSWORD`, and neither `Debug` nor
/// any description shows it.
#[derive(Clone)]
pub struct ConnectionParams {
    /// libpq variables other than the password and the database.
    env: Vec<(&'static str, String)>,
    password: Option<Secret<String>>,
    database: String,
    /// The same connection for sqlx (creating, checking and renaming databases).
    connect: PgConnectOptions,
}

impl ConnectionParams {
    /// How the client programs reach database target `name`; the error names the target and
    /// never the URL.
    pub fn of_target(targets: &DatabaseTargets, name: &str) -> Result<Self, String> {
        let url = targets.url(name).map_err(|err| err.to_string())?;
        Self::from_url(url).map_err(|err| format!("database target `{name}`: {err}"))
    }

    /// Reads a `postgres://user:password@host:port/database?sslmode=…` URL (percent-encoded
    /// parts decoded, a socket folder as the host or in `?host=`). Errors never quote the URL.
    pub fn from_url(raw: &str) -> Result<Self, ArchiveError> {
        let invalid = |reason: String| ArchiveError::InvalidConnection {
            reason: reason.replace(raw, "<url>"),
        };
        let url = url::Url::parse(raw).map_err(|err| invalid(err.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(invalid(format!(
                "the scheme is `{}`; expected postgres://",
                url.scheme()
            )));
        }
        let decode = |text: &str, what: &str| {
            percent_decode_str(text)
                .decode_utf8()
                .map(|decoded| decoded.into_owned())
                .map_err(|_| invalid(format!("the {what} is not valid UTF-8 once decoded")))
        };
        let mut env: Vec<(&'static str, String)> = Vec::new();
        let mut set = |key: &'static str, value: String| {
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        };
        if let Some(host) = url.host_str().filter(|h| !h.is_empty()) {
            let host = decode(host, "host")?;
            // libpq wants an IPv6 address without the URL's brackets.
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .map(str::to_owned)
                .unwrap_or(host);
            set("PGHOST", host);
        }
        if let Some(port) = url.port() {
            set("PGPORT", port.to_string());
        }
        if !url.username().is_empty() {
            set("PGUSER", decode(url.username(), "user name")?);
        }
        let mut password = url.password().map(|p| decode(p, "password")).transpose()?;
        let mut database = Some(decode(url.path().trim_start_matches('/'), "database name")?)
            .filter(|d| !d.is_empty());
        for (key, value) in url.query_pairs() {
            let value = value.into_owned();
            match key.as_ref() {
                "sslmode" | "ssl-mode" => set("PGSSLMODE", value),
                "sslrootcert" | "ssl-root-cert" | "ssl-ca" => set("PGSSLROOTCERT", value),
                "sslcert" | "ssl-cert" => set("PGSSLCERT", value),
                "sslkey" | "ssl-key" => set("PGSSLKEY", value),
                "host" => set("PGHOST", value),
                "hostaddr" => set("PGHOSTADDR", value),
                "port" => set("PGPORT", value),
                "user" => set("PGUSER", value),
                "password" => password = Some(value),
                "dbname" => database = Some(value),
                "application_name" => set("PGAPPNAME", value),
                "options" => set("PGOPTIONS", value),
                "connect_timeout" => set("PGCONNECT_TIMEOUT", value),
                // sqlx's own settings (statement cache) mean nothing to libpq.
                _ => {}
            }
        }
        let Some(database) = database else {
            return Err(invalid(
                "it names no database (postgres://…/<database>)".to_owned(),
            ));
        };
        let connect = PgConnectOptions::from_str(raw).map_err(|err| invalid(err.to_string()))?;
        Ok(Self {
            env,
            password: password.map(Secret::new),
            connect: connect.database(&database),
            database,
        })
    }

    /// The database the URL names.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The same server and login, another database.
    pub fn with_database(&self, database: &str) -> Self {
        let mut other = self.clone();
        other.database = database.to_owned();
        other.connect = other.connect.database(database);
        other
    }

    /// `database \`app\` on db.internal:5432 as rollback`: where, without the password.
    pub fn describe(&self) -> String {
        let get = |key| {
            self.env
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
        };
        let mut text = format!(
            "database `{}` on {}",
            self.database,
            get("PGHOST").unwrap_or("the local socket")
        );
        if let Some(port) = get("PGPORT") {
            text.push_str(&format!(":{port}"));
        }
        if let Some(user) = get("PGUSER") {
            text.push_str(&format!(" as {user}"));
        }
        if self.password.is_some() {
            text.push_str(" (password passed in PGPASSWORD, not shown)");
        }
        text
    }

    /// Options for sqlx, to connect to this database.
    pub(crate) fn connect_options(&self) -> PgConnectOptions {
        self.connect.clone()
    }

    /// The libpq environment a child gets: whatever `PG*` variables the agent itself has are
    /// removed first, so that only this connection's settings apply.
    fn apply(&self, command: &mut Command) {
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("PG")) {
                command.env_remove(name);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        command.env("PGDATABASE", &self.database);
        if let Some(password) = &self.password {
            command.env("PGPASSWORD", password.expose());
        }
        if !self.env.iter().any(|(k, _)| *k == "PGCONNECT_TIMEOUT") {
            command.env("PGCONNECT_TIMEOUT", "30");
        }
    }

    #[cfg(test)]
    fn env_for_test(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        env.push(("PGDATABASE".into(), self.database.clone()));
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD".into(), p.expose().clone()));
        }
        env.sort();
        env
    }
}

/// Names only: the password stays out of logs.
impl fmt::Debug for ConnectionParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Where a client program's stderr goes, and what stops it.
#[derive(Debug, Clone)]
pub struct ClientIo {
    /// The step's output: every stderr line is written here as it comes.
    pub output: OutputSink,
    /// Fires on abort or shutdown: the program's whole process group is killed.
    pub cancel: CancellationToken,
}

impl ClientIo {
    /// Output goes nowhere and nothing cancels: for tools and tests.
    pub fn discard() -> Self {
        let (output, _) = OutputSink::channel(1);
        Self {
            output,
            cancel: CancellationToken::new(),
        }
    }
}

/// What gets each line of a program's stdout.
pub(crate) type LineSink<'a> = dyn FnMut(&[u8]) + Send + 'a;

/// Runs `program args…` on `conn`, its stderr streamed to the step's output; `on_line` gets
/// each line of stdout (without the newline) when given, otherwise stdout is discarded.
pub(crate) async fn run_program(
    program: &Path,
    args: &[OsString],
    conn: &ConnectionParams,
    io: &ClientIo,
    on_line: Option<&mut LineSink<'_>>,
) -> Result<(), ArchiveError> {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.display().to_string());
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(if on_line.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    conn.apply(&mut command);
    // The program dies with the agent rather than writing on unseen.
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|err| ArchiveError::Io {
        action: format!("starting {}", program.display()),
        source: err,
    })?;
    let Some(pid) = child.id() else {
        return Err(ArchiveError::ProgramFailed {
            program: name,
            status: "exited before it could be watched".into(),
            stderr: String::new(),
        });
    };
    let group = ProcessGroup::new(pid);
    let stderr = child.stderr.take().expect("stderr is piped");
    let stdout = child.stdout.take();

    let mut tail: Vec<String> = Vec::new();
    let work = async {
        let status = async {
            let status = child.wait().await;
            // Workers a parallel dump left behind go with it.
            group.kill();
            status
        };
        let (status, (), ()) = tokio::join!(
            status,
            pump_stderr(stderr, &io.output, &mut tail),
            pump_stdout(stdout, on_line),
        );
        status
    };
    let ended = tokio::select! {
        status = work => Some(status),
        () = io.cancel.cancelled() => None,
    };
    let Some(status) = ended else {
        group.kill();
        // Reap it so it does not linger as a zombie; SIGKILL cannot be ignored.
        let _ = child.wait().await;
        group.disarm();
        return Err(ArchiveError::Cancelled { program: name });
    };
    group.disarm();
    let status = status.map_err(|err| ArchiveError::Io {
        action: format!("waiting for {name}"),
        source: err,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(ArchiveError::ProgramFailed {
            program: name,
            status: describe_status(status),
            stderr: tail.join("\n"),
        })
    }
}

async fn pump_stderr(stderr: impl AsyncRead + Unpin, output: &OutputSink, tail: &mut Vec<String>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        output
            .write(OutputStream::Stderr, &format!("{line}\n"))
            .await;
        if tail.len() == STDERR_TAIL_LINES {
            tail.remove(0);
        }
        tail.push(line);
    }
}

async fn pump_stdout(stdout: Option<impl AsyncRead + Unpin>, on_line: Option<&mut LineSink<'_>>) {
    let (Some(stdout), Some(on_line)) = (stdout, on_line) else {
        return;
    };
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                on_line(&line);
            }
        }
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executable(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn programs_are_found_in_order_of_precedence() {
        let root = tempfile::tempdir().unwrap();
        let override_dir = root.path().join("override");
        let on_path = root.path().join("path");
        let lib = root.path().join("lib");
        for dir in [
            &override_dir,
            &on_path,
            &lib.join("9/bin"),
            &lib.join("16/bin"),
            &lib.join("100/bin"),
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        executable(&lib.join("9/bin"), "pg_dump");
        let newest = executable(&lib.join("16/bin"), "pg_dump");
        // `100` has no pg_dump: the newest folder is taken as the installed version.
        std::fs::remove_dir_all(lib.join("100")).unwrap();
        assert_eq!(find_program("pg_dump", None, None, &lib).unwrap(), newest);

        let path_var = std::env::join_paths([&on_path]).unwrap();
        let from_path = executable(&on_path, "pg_dump");
        assert_eq!(
            find_program("pg_dump", None, Some(&path_var), &lib).unwrap(),
            from_path
        );

        // An override without the program is an error, not a reason to look elsewhere.
        let err = find_program(
            "pg_dump",
            Some(override_dir.as_os_str()),
            Some(&path_var),
            &lib,
        )
        .unwrap_err();
        assert!(err.to_string().contains("PG_BIN_DIR="), "{err}");
        let chosen = executable(&override_dir, "pg_dump");
        assert_eq!(
            find_program(
                "pg_dump",
                Some(override_dir.as_os_str()),
                Some(&path_var),
                &lib
            )
            .unwrap(),
            chosen
        );
    }

    #[test]
    fn a_missing_program_names_the_package() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_program("pg_restore", None, None, empty.path()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("pg_restore"), "{text}");
        assert!(text.contains("postgresql-client"), "{text}");
    }

    #[test]
    fn a_url_becomes_libpq_variables() {
        let conn = ConnectionParams::from_url(
            "postgres://roll%40back:p%40ss%2Fw0rd@db.internal:6432/app%20db?sslmode=require&application_name=agent",
        )
        .unwrap();
        assert_eq!(
            conn.env_for_test(),
            [
                ("PGAPPNAME", "agent"),
                ("PGDATABASE", "app db"),
                ("PGHOST", "db.internal"),
                ("PGPASSWORD", "p@ss/w0rd"),
                ("PGPORT", "6432"),
                ("PGSSLMODE", "require"),
                ("PGUSER", "roll@back"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(conn.database(), "app db");
        let shown = format!("{conn:?} {}", conn.describe());
        assert!(!shown.contains("p@ss"), "{shown}");
        assert!(shown.contains("db.internal:6432 as roll@back"), "{shown}");

        let socket =
            ConnectionParams::from_url("postgres://postgres@%2Fvar%2Frun%2Fpostgresql/app")
                .unwrap();
        assert!(
            socket
                .env_for_test()
                .contains(&("PGHOST".into(), "/var/run/postgresql".into()))
        );
        let v6 = ConnectionParams::from_url("postgresql://u@[::1]:5432/app").unwrap();
        assert!(v6.env_for_test().contains(&("PGHOST".into(), "::1".into())));
        let other = conn.with_database("app_restored");
        assert_eq!(other.database(), "app_restored");
    }

    #[test]
    fn bad_urls_are_refused_without_quoting_them() {
        for url in [
            "mysql://u:secret@h/db",
            "postgres://u:secret@h:99999/db",
            "postgres://u:secret@h/",
        ] {
            let err = ConnectionParams::from_url(url).unwrap_err().to_string();
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_failing_program_reports_its_stderr_and_a_cancelled_one_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("prog");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"user=$PGUSER pw=$PGPASSWORD\"\necho 'pg_dump: error: no such schema' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let conn = ConnectionParams::from_url("postgres://alice:pw1@127.0.0.1:1/app").unwrap();
        let (output, mut rx) = OutputSink::channel(16);
        let io = ClientIo {
            output,
            cancel: CancellationToken::new(),
        };
        let mut lines = Vec::new();
        let mut collect = |line: &[u8]| lines.push(String::from_utf8_lossy(line).into_owned());
        let err = run_program(&script, &[], &conn, &io, Some(&mut collect))
            .await
            .unwrap_err();
        assert_eq!(lines, ["user=alice pw=pw1"]);
        let text = err.to_string();
        assert!(text.contains("exit status 1"), "{text}");
        assert!(text.contains("no such schema"), "{text}");
        assert_eq!(
            rx.recv().await.unwrap().text,
            "pg_dump: error: no such schema\n"
        );

        std::fs::write(&script, "#!/bin/sh\nsleep 30 &\nsleep 30\n").unwrap();
        let io = ClientIo::discard();
        let cancel = io.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            cancel.cancel();
        });
        let started = std::time::Instant::now();
        let err = run_program(&script, &[], &conn, &io, None)
            .await
            .unwrap_err();
        assert!(matches!(err, ArchiveError::Cancelled { .. }), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
