//! `shell`: `sh -c <command>` in its own process group, output captured, the whole group
//! killed on timeout or cancellation.
//!
//! A command like `sh -c 'slow & slower'` forks; killing only `sh` would leave its children
//! running (and holding the output pipes open), so the child leads a process group of its own
//! and every kill goes to the group. The group is also killed once `sh` has exited: processes a
//! step leaves behind would outlive it unseen, and a retry would start a second copy. A command
//! meant to start a daemon must detach it itself (`setsid`, or better a service manager).

use std::fmt::Write as _;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rollback_proto::OutputStream;
use rollback_proto::runbook::ShellStep;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{OutputSink, StepContext, StepOutcome, describe_pairs, first_line, human};
use crate::output::PendingOutput;
use crate::process::ProcessGroup;

/// Output that is not a full chunk yet is sent after this long, so people see progress.
const FLUSH_AFTER: Duration = Duration::from_millis(200);
/// How long output is still read after `sh` exited and its group was killed.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The command's texts after `${param}` expansion.
struct Expanded {
    command: String,
    workdir: Option<String>,
    env: Vec<(String, String)>,
}

pub(super) async fn run(ctx: &StepContext<'_>, step: &ShellStep) -> StepOutcome {
    let expanded = match expand(ctx, step) {
        Ok(expanded) => expanded,
        Err(outcome) => return outcome,
    };
    if ctx.describes_only() {
        return ctx
            .describe(
                &describe(&expanded),
                &format!("run `{}`", first_line(&expanded.command)),
            )
            .await;
    }
    let timeout = ctx.timeout();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&expanded.command)
        .envs(expanded.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &expanded.workdir {
        command.current_dir(dir);
    }
    // If the agent dies (kill -9), the shell dies with it, so the rest of the command does
    // not carry on unseen; the step is then in doubt (or re-run, if idempotent).
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return StepOutcome::permanent(spawn_error(&expanded, &err)),
    };
    let Some(pid) = child.id() else {
        return StepOutcome::permanent("sh exited before it could be watched");
    };
    let group = ProcessGroup::new(pid);
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    tracing::debug!(pid, "shell command started");

    let deadline = Instant::now() + timeout;
    let ended = {
        let work = async {
            let status = async {
                let status = child.wait().await;
                // `sh` is gone; whatever it left running in its group goes with it, which also
                // closes the pipes so the readers below reach their end.
                let stragglers = group.kill();
                (status, stragglers)
            };
            let stop_reading = CancellationToken::new();
            let pumps = async {
                let (out, err) = tokio::join!(
                    pump(stdout, OutputStream::Stdout, &ctx.output, &stop_reading),
                    pump(stderr, OutputStream::Stderr, &ctx.output, &stop_reading),
                );
                out || err
            };
            tokio::pin!(status, pumps);
            let mut drained = None;
            let (status, stragglers) = loop {
                tokio::select! {
                    ended = &mut status => break ended,
                    held = &mut pumps, if drained.is_none() => drained = Some(held),
                }
            };
            // A process that left the group (`setsid`) may hold a pipe open for good: read
            // what comes within a grace period, then stop waiting for an end that may never
            // come. Output already read is still sent, however slowly the sink drains.
            let held_open = match drained {
                Some(held) => held,
                None => tokio::select! {
                    held = &mut pumps => held,
                    () = tokio::time::sleep(DRAIN_GRACE) => {
                        stop_reading.cancel();
                        (&mut pumps).await
                    }
                },
            };
            (status, stragglers, held_open)
        };
        tokio::select! {
            (status, stragglers, held_open) = work => Ended::Exited { status, stragglers, held_open },
            () = tokio::time::sleep_until(deadline) => Ended::TimedOut,
            () = ctx.cancel.cancelled() => Ended::Cancelled,
        }
    };
    match ended {
        Ended::Exited {
            status: Ok(status),
            stragglers,
            held_open,
        } => {
            group.disarm();
            if stragglers {
                ctx.output
                    .write(
                        OutputStream::Stderr,
                        "[the command left processes running in its process group; they were killed]\n",
                    )
                    .await;
            }
            if held_open {
                ctx.output
                    .write(
                        OutputStream::Stderr,
                        "[a process outside the command's group still holds its output open; stopped reading]\n",
                    )
                    .await;
            }
            exit_outcome(status)
        }
        Ended::Exited {
            status: Err(err), ..
        } => {
            group.kill();
            group.disarm();
            StepOutcome::transient(format!("waiting for sh failed: {err}"))
        }
        Ended::TimedOut | Ended::Cancelled => {
            group.kill();
            // Reap `sh` so it does not linger as a zombie; SIGKILL cannot be ignored.
            let _ = child.wait().await;
            group.disarm();
            if matches!(ended, Ended::TimedOut) {
                StepOutcome::transient(format!(
                    "timed out after {}; the command's process group was killed",
                    human(timeout)
                ))
            } else {
                ctx.cancelled()
            }
        }
    }
}

enum Ended {
    /// `sh` exited.
    Exited {
        status: io::Result<ExitStatus>,
        /// Members of its group were still running, and were killed.
        stragglers: bool,
        /// Its output was still held open after [`DRAIN_GRACE`].
        held_open: bool,
    },
    TimedOut,
    Cancelled,
}

fn expand(ctx: &StepContext<'_>, step: &ShellStep) -> Result<Expanded, StepOutcome> {
    let command = ctx.expand("command", &step.command)?;
    let workdir = step
        .workdir
        .as_deref()
        .map(|dir| ctx.expand("workdir", dir))
        .transpose()?;
    let env = step
        .env
        .iter()
        .map(|(name, value)| Ok((name.clone(), ctx.expand(&format!("env.{name}"), value)?)))
        .collect::<Result<_, StepOutcome>>()?;
    Ok(Expanded {
        command,
        workdir,
        env,
    })
}

fn describe(expanded: &Expanded) -> String {
    let mut out = format!("would run: sh -c {}\n", expanded.command);
    let _ = writeln!(
        out,
        "in: {}",
        expanded
            .workdir
            .as_deref()
            .unwrap_or("the agent's working directory")
    );
    if !expanded.env.is_empty() {
        out.push_str("with environment:\n");
        describe_pairs(&mut out, "=", &expanded.env.iter().cloned().collect());
    }
    out
}

fn spawn_error(expanded: &Expanded, err: &io::Error) -> String {
    match &expanded.workdir {
        Some(dir) if err.kind() == io::ErrorKind::NotFound => {
            format!("cannot start sh in `{dir}`: {err} (does the directory exist?)")
        }
        _ => format!("cannot start sh: {err}"),
    }
}

fn exit_outcome(status: ExitStatus) -> StepOutcome {
    match (status.code(), status.signal()) {
        (Some(0), _) => StepOutcome::Succeeded {
            summary: "exit 0".to_owned(),
        },
        (Some(code), _) => StepOutcome::permanent(format!("exit {code}")),
        (None, Some(signal)) => StepOutcome::permanent(format!("killed by signal {signal}")),
        (None, None) => StepOutcome::permanent(format!("ended with {status}")),
    }
}

/// Reads a pipe to its end into the sink: whole lines, a full chunk at once, or whatever
/// arrived once it has waited [`FLUSH_AFTER`]. Returns true when `stop` ended it before the
/// end of the pipe.
async fn pump(
    mut reader: impl AsyncRead + Unpin,
    stream: OutputStream,
    sink: &OutputSink,
    stop: &CancellationToken,
) -> bool {
    let mut pending = PendingOutput::default();
    let mut buf = vec![0u8; 8192];
    let mut flush_at: Option<Instant> = None;
    let stopped = loop {
        let read = tokio::select! {
            // Data or the end of the pipe first; `stop` only when nothing is waiting.
            biased;
            read = reader.read(&mut buf) => Some(read),
            () = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => None,
            () = stop.cancelled() => break true,
        };
        match read {
            None => {
                let ready = pending.take_ready();
                sink.write(stream, &ready).await;
                flush_at = (!pending.is_empty()).then(|| Instant::now() + FLUSH_AFTER);
            }
            Some(Ok(0) | Err(_)) => break false,
            Some(Ok(n)) => {
                pending.push(&buf[..n]);
                if pending.is_full() {
                    let ready = pending.take_ready();
                    sink.write(stream, &ready).await;
                }
                if pending.is_empty() {
                    flush_at = None;
                } else if flush_at.is_none() {
                    flush_at = Some(Instant::now() + FLUSH_AFTER);
                }
            }
        }
    };
    sink.write(stream, &pending.take_all()).await;
    stopped
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::*;
    use super::*;

    fn shell(command: &str, extra: &str) -> Fixture {
        let command = toml_string(command);
        Fixture::new(runbook(
            "name = \"world\"",
            &format!("kind = \"shell\"\ncommand = {command}\n{extra}"),
        ))
    }

    fn toml_string(text: &str) -> String {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    }

    #[tokio::test]
    async fn exit_zero_succeeds_and_output_is_captured_per_stream() {
        let step = shell("echo hello ${name}; echo oops >&2", "");
        let (outcome, chunks) = step.run().await;
        assert_eq!(succeeded(&outcome), "exit 0");
        assert_eq!(text(&chunks, OutputStream::Stdout), "hello world\n");
        assert_eq!(text(&chunks, OutputStream::Stderr), "oops\n");
    }

    #[tokio::test]
    async fn nonzero_exit_is_a_permanent_failure() {
        let (outcome, _) = shell("exit 3", "").run().await;
        assert_eq!(failed(&outcome), ("exit 3", false));
    }

    #[tokio::test]
    async fn death_by_signal_is_reported() {
        let (outcome, _) = shell("kill -TERM $$", "").run().await;
        assert_eq!(failed(&outcome), ("killed by signal 15", false));
    }

    #[tokio::test]
    async fn env_and_workdir_are_applied_and_expanded() {
        let dir = tempfile::tempdir().unwrap();
        let mut step = shell(
            "pwd; echo \"$GREETING\"",
            &format!(
                "workdir = {}\nenv = {{ GREETING = \"hi ${{name}}\" }}",
                toml_string(&dir.path().display().to_string())
            ),
        );
        step.params.insert("name".into(), "override".into());
        let (outcome, chunks) = step.run().await;
        assert!(outcome.is_success(), "{outcome:?}");
        let canonical = dir.path().canonicalize().unwrap();
        assert_eq!(
            text(&chunks, OutputStream::Stdout),
            format!("{}\nhi override\n", canonical.display())
        );
    }

    #[tokio::test]
    async fn a_missing_workdir_is_a_permanent_failure() {
        let (outcome, _) = shell("true", "workdir = \"/no/such/dir\"").run().await;
        let (error, retryable) = failed(&outcome);
        assert!(error.contains("/no/such/dir"), "{error}");
        assert!(!retryable);
    }

    #[tokio::test]
    async fn stdin_is_empty() {
        let (outcome, chunks) = shell("wc -c", "").run().await;
        assert!(outcome.is_success());
        assert_eq!(text(&chunks, OutputStream::Stdout).trim(), "0");
    }

    #[tokio::test]
    async fn an_expansion_error_names_the_field() {
        let mut step = shell("true", "env = { A = \"${name}\" }");
        step.runbook.params.clear();
        let (outcome, _) = step.run().await;
        let (error, retryable) = failed(&outcome);
        assert!(error.contains("`env.A`"), "{error}");
        assert!(error.contains("${name}"), "{error}");
        assert!(!retryable);
    }

    /// Pids of live `sleep <marker>` processes (zombies excluded).
    fn sleepers(marker: &str) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let running =
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                        !stat
                            .rsplit_once(')')
                            .is_some_and(|(_, s)| s.starts_with(" Z"))
                    });
                running && cmdline == format!("sleep\0{marker}\0").as_bytes()
            })
            .collect()
    }

    /// Asserts that the test's sleepers are gone, within 5 s: SIGKILL is delivered
    /// asynchronously, so a process killed a moment ago may still be listed (seen under load);
    /// it must be gone soon after, never survive.
    fn assert_none_survive(marker: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let alive = sleepers(marker);
            if alive.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sleep survived: {alive:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A sleep duration no other test uses, to find exactly this test's processes.
    fn marker() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!("999.{}{nanos}", std::process::id())
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let marker = marker();
        let step = shell(
            &format!("sleep {marker} & sleep {marker}"),
            "timeout = \"300ms\"",
        );
        let started = std::time::Instant::now();
        let (outcome, _) = step.run().await;
        let (error, retryable) = failed(&outcome);
        assert!(error.starts_with("timed out after 300ms"), "{error}");
        assert!(retryable);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_none_survive(&marker);
    }

    #[tokio::test]
    async fn cancellation_kills_the_whole_process_group() {
        let marker = marker();
        let step = shell(&format!("sleep {marker} & sleep {marker}"), "");
        let cancel = step.cancel.clone();
        let watcher = {
            let marker = marker.clone();
            tokio::spawn(async move {
                // Cancel once both sleeps run, so the kill has something to find.
                while sleepers(&marker).len() < 2 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                cancel.cancel();
            })
        };
        let (outcome, _) = tokio::time::timeout(Duration::from_secs(10), step.run())
            .await
            .expect("cancellation ends the attempt");
        watcher.await.unwrap();
        let (error, retryable) = failed(&outcome);
        assert!(error.starts_with("cancelled"), "{error}");
        assert!(retryable);
        assert_none_survive(&marker);
    }

    #[tokio::test]
    async fn processes_left_behind_are_killed_when_sh_exits() {
        let marker = marker();
        let step = shell(&format!("sleep {marker} & echo started"), "");
        let (outcome, chunks) = tokio::time::timeout(Duration::from_secs(10), step.run())
            .await
            .expect("a background child holding the pipe does not hang the step");
        assert!(outcome.is_success(), "{outcome:?}");
        assert_eq!(text(&chunks, OutputStream::Stdout), "started\n");
        assert!(text(&chunks, OutputStream::Stderr).contains("left processes running"));
        assert_none_survive(&marker);
    }

    #[tokio::test]
    async fn a_detached_process_holding_the_output_does_not_hang_the_step() {
        let marker = marker();
        let dir = tempfile::tempdir().unwrap();
        // The detached sleep keeps stdout open; `ready` says it has left the group.
        let step = shell(
            &format!(
                "setsid sh -c 'touch ready; exec sleep {marker}' & \
                 while [ ! -e ready ]; do sleep 0.01; done; echo started"
            ),
            &format!(
                "workdir = {}",
                toml_string(&dir.path().display().to_string())
            ),
        );
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(10), step.run()).await;
        let escaped = sleepers(&marker);
        for pid in &escaped {
            // SAFETY: sends a signal to the test's own leftover `sleep`.
            unsafe { libc::kill(libc::pid_t::try_from(*pid).unwrap(), libc::SIGKILL) };
        }
        let (outcome, chunks) = result.expect("the step ends after the drain grace");
        assert!(outcome.is_success(), "{outcome:?}");
        assert_eq!(
            escaped.len(),
            1,
            "the detached process should have escaped the kill"
        );
        assert_eq!(text(&chunks, OutputStream::Stdout), "started\n");
        assert!(text(&chunks, OutputStream::Stderr).contains("stopped reading"));
        assert!(started.elapsed() < DRAIN_GRACE + Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_slow_sink_loses_no_output_after_sh_exits() {
        // 64 KiB fits the pipe: `sh` exits at once while the readers wait on a full channel
        // for longer than the drain grace.
        let fixture = shell("head -c 65536 /dev/zero | tr '\\0' x", "");
        let (sink, mut rx) = OutputSink::channel(1);
        let state = fixture.state();
        let ctx = fixture.context(&state, &fixture.runbook.phases[0].steps[0], sink);
        let slow_reader = async {
            tokio::time::sleep(DRAIN_GRACE + Duration::from_millis(500)).await;
            let mut chunks = Vec::new();
            while let Some(chunk) = rx.recv().await {
                chunks.push(chunk);
            }
            chunks
        };
        let (outcome, chunks) = tokio::join!(super::super::run_step(ctx), slow_reader);
        assert!(outcome.is_success(), "{outcome:?}");
        assert_eq!(text(&chunks, OutputStream::Stdout), "x".repeat(65536));
        assert_eq!(text(&chunks, OutputStream::Stderr), "");
    }

    #[tokio::test]
    async fn dry_run_describes_without_running() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("ran");
        let step = shell(
            &format!("touch {} # ${{name}}", flag.display()),
            "workdir = \"/tmp\"\nenv = { MODE = \"fast\", DB_PASSWORD = \"hunter2\" }",
        );
        let (summary, described) = step.describe().await;
        assert_eq!(
            summary,
            format!("dry run: would run `touch {} # world`", flag.display())
        );
        assert!(!flag.exists(), "a dry run ran the command");
        assert!(described.contains(&format!("sh -c touch {} # world", flag.display())));
        assert!(described.contains("in: /tmp"), "{described}");
        assert!(described.contains("MODE=fast"), "{described}");
        assert!(described.contains("DB_PASSWORD=<redacted>"), "{described}");
        assert!(!described.contains("hunter2"));
    }

    #[tokio::test]
    async fn dry_run_with_execute_behaviour_runs() {
        let mut step = shell("echo checked", "dry_run = \"execute\"");
        step.dry_run = true;
        let (outcome, chunks) = step.run().await;
        assert!(outcome.is_success());
        assert_eq!(text(&chunks, OutputStream::Stdout), "checked\n");
    }

    #[tokio::test]
    async fn large_output_is_chunked_and_capped() {
        // 400 KiB of 100-byte lines.
        let (outcome, chunks) = shell(
            "i=0; while [ $i -lt 4096 ]; do printf '%099d\\n' $i; i=$((i+1)); done",
            "",
        )
        .run()
        .await;
        assert!(outcome.is_success(), "{outcome:?}");
        let stdout: Vec<_> = chunks
            .iter()
            .filter(|c| c.stream == OutputStream::Stdout)
            .collect();
        assert!(
            stdout
                .iter()
                .all(|c| c.text.len() <= super::super::MAX_CHUNK_BYTES)
        );
        let kept: usize = stdout[..stdout.len() - 1]
            .iter()
            .map(|c| c.text.len())
            .sum();
        assert_eq!(kept, super::super::MAX_ATTEMPT_BYTES);
        let note = &stdout.last().unwrap().text;
        assert!(
            note.contains(&format!(
                "{} more byte(s) dropped",
                4096 * 100 - super::super::MAX_ATTEMPT_BYTES
            )),
            "{note}"
        );
    }
}
