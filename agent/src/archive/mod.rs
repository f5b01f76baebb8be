//! Archives: `pg_dump` of a database or of exactly some schemas, their checksum, and the
//! checks an archive must pass before anything is restored from it.
//!
//! An archive is written under a temporary name and renamed when `pg_dump` succeeded, so a
//! dump that crashed never looks complete. Its sha256 goes into the run's log (the
//! `ArchiveWritten` event) and into `<archive>.sha256` beside it, in `sha256sum` layout, for
//! restores outside the run that wrote it. A directory archive's checksum covers every file
//! in name order together with its name, so a renamed, missing or extra file changes it too.

mod client;
pub mod restore;
pub mod resume;

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rollback_proto::runbook::{DumpFormat, format_duration};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

pub(crate) use client::run_program;
pub use client::{ClientIo, ConnectionParams, PgPrograms};

/// Why an archive could not be written, read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A client program is not installed where it was looked for.
    #[error(
        "{program} not found (looked in {looked}); install the Debian package postgresql-client \
         (`apt-get install postgresql-client`, the server's major version or newer), or set \
         PG_BIN_DIR to the folder that holds it"
    )]
    ProgramMissing {
        /// `pg_dump` or `pg_restore`.
        program: &'static str,
        /// Where it was looked for.
        looked: String,
    },
    /// The database target's URL cannot be turned into a connection.
    #[error("the database URL cannot be used: {reason}")]
    InvalidConnection {
        /// What is wrong, without the URL.
        reason: String,
    },
    /// Nothing is at the archive's path.
    #[error(
        "archive {} does not exist: check the path (a pg_dump step records where it wrote its \
         archive) and that this machine can see it", path.display()
    )]
    Missing {
        /// Where it should be.
        path: PathBuf,
    },
    /// The archive's bytes are not the ones recorded when it was written.
    #[error(
        "archive {} is corrupt: its sha256 is {actual} but {expected} was recorded when it was \
         written; do not restore it, find an intact copy", path.display()
    )]
    Corrupt {
        /// The archive.
        path: PathBuf,
        /// The checksum recorded.
        expected: String,
        /// The checksum now.
        actual: String,
    },
    /// The archive is older than the restore accepts.
    #[error(
        "archive {} is {} old, more than the {} allowed (max_age): take a fresh backup, or raise \
         max_age if this really is the archive to restore",
        path.display(), format_duration(*age), format_duration(*max_age)
    )]
    Stale {
        /// The archive.
        path: PathBuf,
        /// Its age (from its modification time).
        age: Duration,
        /// The most allowed.
        max_age: Duration,
    },
    /// An archive of that name is already there (it is never overwritten).
    #[error("{} already exists; an archive is never overwritten", path.display())]
    Exists {
        /// The path.
        path: PathBuf,
    },
    /// A client program ran and failed.
    #[error("{program} failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    ProgramFailed {
        /// Which.
        program: String,
        /// Its exit status.
        status: String,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// The step was cancelled while a client program ran; the program was killed.
    #[error("cancelled: {program} was killed before it finished")]
    Cancelled {
        /// Which.
        program: String,
    },
    /// A file operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done, with the path.
        action: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl ArchiveError {
    fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let action = action.into();
        move |source| ArchiveError::Io { action, source }
    }
}

/// An archive `pg_dump` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// A directory for the directory format, a file for the custom format; absolute.
    pub path: PathBuf,
    /// sha256 of its bytes, lowercase hex (see the module doc for directories).
    pub sha256: String,
    /// Its size in bytes (every file of a directory).
    pub bytes: u64,
    /// The schemas it holds; empty for the whole database.
    pub schemas: Vec<String>,
    /// Its format.
    pub format: DumpFormat,
}

impl crate::tenancy::drop::SchemaArchive for Archive {
    fn path(&self) -> &Path {
        &self.path
    }

    fn schemas(&self) -> &[String] {
        &self.schemas
    }
}

/// What to dump, and where.
#[derive(Debug, Clone)]
pub struct DumpRequest<'a> {
    /// The folder the archive goes into (created if needed).
    pub output_dir: &'a Path,
    /// The start of the archive's name (a run id, a database name); a timestamp follows, so
    /// a re-run never meets an earlier archive.
    pub label: &'a str,
    /// Exactly these schemas, by exact name; the whole database when empty.
    pub schemas: &'a [String],
    /// Schemas left out, by exact name (a sampled rehearsal's other tenants).
    pub exclude_schemas: &'a [String],
    /// Directory (parallel) or custom.
    pub format: DumpFormat,
    /// Parallel jobs; only the directory format uses more than one.
    pub jobs: u32,
}

/// A schema name as a `pg_dump -n` pattern that matches that name only: double quotes make
/// `*`, `?`, `.` and upper case literal, and a double quote inside is doubled.
pub fn schema_pattern(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Where an archive made at `now` goes: `<output_dir>/<label>-<UTC time to the millisecond>`,
/// with `.dump` for the custom format.
pub fn archive_path(
    output_dir: &Path,
    label: &str,
    format: DumpFormat,
    now: OffsetDateTime,
) -> PathBuf {
    let label = file_label(label);
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
        ))
        .expect("a UTC time formats");
    let name = match format {
        DumpFormat::Directory => format!("{label}-{stamp}"),
        DumpFormat::Custom => format!("{label}-{stamp}.dump"),
    };
    output_dir.join(name)
}

/// A label as it appears in file names: anything but letters, digits, `-`, `_` and `.` becomes `_`.
fn file_label(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Removes what dumps labelled `label` left in `output_dir` when they were killed before they
/// finished (`<label>-<time>.partial`); what was removed. A dump's partial file is never
/// taken for an archive, so this only tidies up; a label names its run, so no other run's
/// dump in progress is touched.
pub async fn remove_partials(output_dir: &Path, label: &str) -> Vec<PathBuf> {
    let prefix = format!("{}-", file_label(label));
    let Ok(mut entries) = tokio::fs::read_dir(output_dir).await else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".partial") {
            let path = entry.path();
            remove_all(&path).await;
            if tokio::fs::symlink_metadata(&path).await.is_err() {
                removed.push(path);
            }
        }
    }
    removed.sort();
    removed
}

/// `pg_dump`'s arguments for writing `req` to `file` (no connection settings: those travel
/// in the environment).
pub fn dump_args(req: &DumpRequest<'_>, file: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        match req.format {
            DumpFormat::Directory => "--format=directory".into(),
            DumpFormat::Custom => "--format=custom".into(),
        },
        "--no-password".into(),
    ];
    if req.format == DumpFormat::Directory && req.jobs > 1 {
        args.push(format!("--jobs={}", req.jobs).into());
    }
    if !req.schemas.is_empty() {
        // A schema that is not there fails the dump instead of being skipped quietly.
        args.push("--strict-names".into());
        for schema in req.schemas {
            args.push(format!("--schema={}", schema_pattern(schema)).into());
        }
    }
    for schema in req.exclude_schemas {
        args.push(format!("--exclude-schema={}", schema_pattern(schema)).into());
    }
    let mut file_arg = OsString::from("--file=");
    file_arg.push(file);
    args.push(file_arg);
    args
}

/// The command line a dump would run, for a dry run: program, flags, schemas, and where it
/// connects (no password).
pub fn describe_dump(
    programs: &PgPrograms,
    conn: &ConnectionParams,
    req: &DumpRequest<'_>,
) -> String {
    let path = archive_path(
        req.output_dir,
        req.label,
        req.format,
        OffsetDateTime::now_utc(),
    );
    let mut line = programs.pg_dump.display().to_string();
    for arg in dump_args(req, &path) {
        line.push(' ');
        line.push_str(&shell_quote(&arg.to_string_lossy()));
    }
    format!(
        "would run: {line}\nconnected to {} (settings in libpq environment variables)\n\
         then record the archive's sha256 in the run and in {}.sha256\n",
        conn.describe(),
        path.display()
    )
}

/// Quotes `text` for a shell when it needs it (only for showing commands to people).
fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=./:,@%+".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Dumps `req` from `conn`: writes under a temporary name, checksums, renames into place, and
/// writes the `.sha256` file beside it.
pub async fn dump(
    programs: &PgPrograms,
    conn: &ConnectionParams,
    req: &DumpRequest<'_>,
    io: &ClientIo,
) -> Result<Archive, ArchiveError> {
    tokio::fs::create_dir_all(req.output_dir)
        .await
        .map_err(ArchiveError::io(format!(
            "creating {}",
            req.output_dir.display()
        )))?;
    let path = std::path::absolute(archive_path(
        req.output_dir,
        req.label,
        req.format,
        OffsetDateTime::now_utc(),
    ))
    .map_err(ArchiveError::io("resolving the archive's path"))?;
    let mut partial = path.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    for p in [&path, &partial, &sidecar_path(&path)] {
        if tokio::fs::symlink_metadata(p).await.is_ok() {
            return Err(ArchiveError::Exists { path: p.clone() });
        }
    }
    let written = async {
        run_program(&programs.pg_dump, &dump_args(req, &partial), conn, io, None).await?;
        checksum(&partial).await
    }
    .await;
    let (sha256, bytes) = match written {
        Ok(sum) => sum,
        Err(err) => {
            remove_all(&partial).await;
            return Err(err);
        }
    };
    tokio::fs::rename(&partial, &path)
        .await
        .map_err(ArchiveError::io(format!(
            "renaming {} into place",
            partial.display()
        )))?;
    write_sidecar(&path, &sha256).await?;
    Ok(Archive {
        path,
        sha256,
        bytes,
        schemas: req.schemas.to_vec(),
        format: req.format,
    })
}

async fn remove_all(path: &Path) {
    let removed = match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if meta.is_dir() => tokio::fs::remove_dir_all(path).await,
        Ok(_) => tokio::fs::remove_file(path).await,
        Err(_) => return,
    };
    if let Err(err) = removed {
        tracing::warn!(path = %path.display(), error = %err, "could not remove a partial archive");
    }
}

/// `<archive>.sha256`, beside the archive (outside a directory archive, so that it is not
/// part of what it checks).
pub fn sidecar_path(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Writes `<archive>.sha256` in the format of `sha256sum`.
pub(crate) async fn write_sidecar(archive: &Path, sha256: &str) -> Result<(), ArchiveError> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sidecar = sidecar_path(archive);
    tokio::fs::write(&sidecar, format!("{sha256}  {name}\n"))
        .await
        .map_err(ArchiveError::io(format!("writing {}", sidecar.display())))
}

/// The checksum in `<archive>.sha256`, if that file is there.
pub async fn read_sidecar(archive: &Path) -> Result<Option<String>, ArchiveError> {
    let sidecar = sidecar_path(archive);
    match tokio::fs::read_to_string(&sidecar).await {
        Ok(text) => {
            let sum = text.split_whitespace().next().unwrap_or_default();
            if sum.len() == 64 && sum.chars().all(|c| c.is_ascii_hexdigit()) {
                Ok(Some(sum.to_ascii_lowercase()))
            } else {
                Err(ArchiveError::Io {
                    action: format!("reading {}", sidecar.display()),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "it does not start with a sha256 in hex",
                    ),
                })
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(ArchiveError::io(format!("reading {}", sidecar.display()))(
            err,
        )),
    }
}

/// sha256 (lowercase hex) and size of an archive: a file's bytes, or for a directory every
/// file (recursively) in order of its relative path, each as `path NUL length(u64 BE) bytes`.
pub async fn checksum(path: &Path) -> Result<(String, u64), ArchiveError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || checksum_blocking(&path))
        .await
        .expect("checksumming does not panic")
}

fn checksum_blocking(path: &Path) -> Result<(String, u64), ArchiveError> {
    let meta = std::fs::metadata(path).map_err(|err| missing_or_io(path, err))?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    // One buffer for every file: a directory archive holds a file per table, most of them
    // small, and a fresh zeroed megabyte for each cost more than hashing it.
    let mut buf = vec![0u8; HASH_BUFFER_BYTES];
    if meta.is_dir() {
        let mut files = Vec::new();
        collect_files(path, Path::new(""), &mut files)?;
        files.sort();
        for relative in files {
            let full = path.join(&relative);
            let len = std::fs::metadata(&full)
                .map_err(ArchiveError::io(format!("reading {}", full.display())))?
                .len();
            hasher.update(relative.as_os_str().as_encoded_bytes());
            hasher.update([0u8]);
            hasher.update(len.to_be_bytes());
            bytes += hash_file(&full, &mut hasher, &mut buf)?;
        }
    } else {
        bytes = hash_file(path, &mut hasher, &mut buf)?;
    }
    Ok((hex::encode(hasher.finalize()), bytes))
}

fn collect_files(root: &Path, relative: &Path, out: &mut Vec<PathBuf>) -> Result<(), ArchiveError> {
    let dir = root.join(relative);
    let entries =
        std::fs::read_dir(&dir).map_err(ArchiveError::io(format!("listing {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(ArchiveError::io(format!("listing {}", dir.display())))?;
        let rel = relative.join(entry.file_name());
        if entry
            .file_type()
            .map_err(ArchiveError::io(format!(
                "reading {}",
                entry.path().display()
            )))?
            .is_dir()
        {
            collect_files(root, &rel, out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

/// Read size when hashing an archive.
const HASH_BUFFER_BYTES: usize = 1 << 20;

fn hash_file(path: &Path, hasher: &mut Sha256, buf: &mut [u8]) -> Result<u64, ArchiveError> {
    let mut file = std::fs::File::open(path).map_err(|err| missing_or_io(path, err))?;
    let mut total = 0u64;
    loop {
        let n = file
            .read(buf)
            .map_err(ArchiveError::io(format!("reading {}", path.display())))?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

fn missing_or_io(path: &Path, err: std::io::Error) -> ArchiveError {
    if err.kind() == std::io::ErrorKind::NotFound {
        ArchiveError::Missing {
            path: path.to_owned(),
        }
    } else {
        ArchiveError::io(format!("reading {}", path.display()))(err)
    }
}

/// Refuses an archive that is missing, older than `max_age` (by its own modification time:
/// for a directory, the directory's), or whose sha256 is not `expected_sha256`.
pub async fn verify_archive(
    path: &Path,
    expected_sha256: &str,
    max_age: Option<Duration>,
) -> Result<(), ArchiveError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|err| missing_or_io(path, err))?;
    if let Some(max_age) = max_age {
        let modified = meta.modified().map_err(ArchiveError::io(format!(
            "reading the time of {}",
            path.display()
        )))?;
        // A time in the future (clock skew) counts as new.
        let age = SystemTime::now()
            .duration_since(modified)
            .unwrap_or(Duration::ZERO);
        if age > max_age {
            return Err(ArchiveError::Stale {
                path: path.to_owned(),
                age: Duration::from_secs(age.as_secs()),
                max_age,
            });
        }
    }
    let (actual, _) = checksum(path).await?;
    if !actual.eq_ignore_ascii_case(expected_sha256.trim()) {
        return Err(ArchiveError::Corrupt {
            path: path.to_owned(),
            expected: expected_sha256.trim().to_ascii_lowercase(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_patterns_match_one_name_only() {
        assert_eq!(schema_pattern("tenant_1"), "\"tenant_1\"");
        assert_eq!(schema_pattern("Tenant*.x"), "\"Tenant*.x\"");
        assert_eq!(schema_pattern("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            schema_pattern("tenant_7; DROP TABLE x"),
            "\"tenant_7; DROP TABLE x\""
        );
    }

    #[test]
    fn dump_arguments_select_schemas_and_carry_no_connection() {
        let schemas = vec!["tenant_1".to_owned(), "we?ird".to_owned()];
        let req = DumpRequest {
            exclude_schemas: &[],
            output_dir: Path::new("/backups"),
            label: "run",
            schemas: &schemas,
            format: DumpFormat::Directory,
            jobs: 3,
        };
        let args: Vec<String> = dump_args(&req, Path::new("/backups/a"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--format=directory",
                "--no-password",
                "--jobs=3",
                "--strict-names",
                "--schema=\"tenant_1\"",
                "--schema=\"we?ird\"",
                "--file=/backups/a",
            ]
        );
        let custom = DumpRequest {
            format: DumpFormat::Custom,
            schemas: &[],
            ..req
        };
        let args = dump_args(&custom, Path::new("/b/x.dump"));
        assert_eq!(
            args,
            ["--format=custom", "--no-password", "--file=/b/x.dump"]
        );
    }

    #[test]
    fn archive_names_carry_the_label_and_the_time() {
        let at = time::macros::datetime!(2025-03-04 05:06:07.089 UTC);
        assert_eq!(
            archive_path(Path::new("/b"), "run 1/x", DumpFormat::Custom, at),
            Path::new("/b/run_1_x-20250304T050607.089Z.dump")
        );
        assert_eq!(
            archive_path(Path::new("/b"), "r", DumpFormat::Directory, at),
            Path::new("/b/r-20250304T050607.089Z")
        );
    }

    #[test]
    fn a_dry_run_description_shows_the_command_but_no_password() {
        let programs = PgPrograms {
            pg_dump: "/usr/bin/pg_dump".into(),
            pg_restore: "/usr/bin/pg_restore".into(),
        };
        let conn = ConnectionParams::from_url("postgres://app:hunter2@db:5432/app").unwrap();
        let schemas = vec!["tenant_7; DROP TABLE x".to_owned()];
        let text = describe_dump(
            &programs,
            &conn,
            &DumpRequest {
                exclude_schemas: &[],
                output_dir: Path::new("/backups"),
                label: "run",
                schemas: &schemas,
                format: DumpFormat::Directory,
                jobs: 2,
            },
        );
        assert!(
            text.starts_with("would run: /usr/bin/pg_dump --format=directory"),
            "{text}"
        );
        assert!(
            text.contains("'--schema=\"tenant_7; DROP TABLE x\"'"),
            "{text}"
        );
        assert!(text.contains("database `app` on db:5432 as app"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn directory_checksums_cover_names_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("toc.dat"), b"toc").unwrap();
        std::fs::write(a.join("1.dat"), b"rows").unwrap();
        let (sum, bytes) = checksum(&a).await.unwrap();
        assert_eq!(bytes, 7);
        assert_eq!(checksum(&a).await.unwrap().0, sum, "deterministic");

        std::fs::rename(a.join("1.dat"), a.join("2.dat")).unwrap();
        assert_ne!(
            checksum(&a).await.unwrap().0,
            sum,
            "a renamed file changes it"
        );
        std::fs::rename(a.join("2.dat"), a.join("1.dat")).unwrap();
        std::fs::write(a.join("1.dat"), b"rowz").unwrap();
        assert_ne!(
            checksum(&a).await.unwrap().0,
            sum,
            "a changed byte changes it"
        );
        std::fs::write(a.join("1.dat"), b"rows").unwrap();
        assert_eq!(checksum(&a).await.unwrap().0, sum);

        verify_archive(&a, &sum.to_uppercase(), Some(Duration::from_secs(60)))
            .await
            .unwrap();
        let missing = verify_archive(&dir.path().join("nope"), &sum, None)
            .await
            .unwrap_err();
        assert!(matches!(missing, ArchiveError::Missing { .. }), "{missing}");
    }

    #[tokio::test]
    async fn sidecars_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.dump");
        std::fs::write(&file, b"archive").unwrap();
        assert_eq!(read_sidecar(&file).await.unwrap(), None);
        let (sum, _) = checksum(&file).await.unwrap();
        write_sidecar(&file, &sum).await.unwrap();
        assert_eq!(read_sidecar(&file).await.unwrap(), Some(sum.clone()));
        let text = std::fs::read_to_string(sidecar_path(&file)).unwrap();
        assert_eq!(text, format!("{sum}  x.dump\n"), "sha256sum's layout");
    }
}
