//! Pieces shared by the server wrappers: ports, child processes tied to the test, logs.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How many times a server start is tried with fresh ports: another process can grab a port
/// between [`free_port`] returning it and the server binding it.
pub(crate) const START_ATTEMPTS: usize = 3;

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports::<1>()?[0])
}

/// `N` distinct loopback ports; all listeners are held together so the kernel cannot hand out
/// the same port twice.
pub(crate) fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("binding 127.0.0.1:0 to find a free port")?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// Spawns `command` with stdout and stderr appended to `log`, killed by the kernel when the
/// spawning thread's process goes away so that a panicking or killed test leaves no server behind.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked exits: spawn from the test's own thread
/// or a runtime worker, never from a short-lived helper thread.
pub(crate) fn spawn_tied(mut command: Command, log: &Path) -> anyhow::Result<Child> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening log {}", log.display()))?;
    let err = out.try_clone()?;
    let parent = std::process::id();
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid). It runs after
    // std's setuid/setgid, which matters because a credential change clears the death signal.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect; nobody would kill us then.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
    let program = command.get_program().to_string_lossy().into_owned();
    command
        .spawn()
        .with_context(|| format!("starting {program}"))
}

/// Sends `signal`, waits up to `grace` for the child to exit, then SIGKILLs it and reaps it.
pub(crate) fn stop(child: &mut Child, signal: libc::c_int, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if signal != libc::SIGKILL {
        // SAFETY: plain kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(log: &Path, lines: usize) -> String {
    let text = match std::fs::read(log) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) => return format!("(log {} unreadable: {err})", log.display()),
    };
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    format!("last lines of {}:\n{tail}", log.display())
}

/// Polls `ready` every `every` until it says yes, the child exits, or `timeout` passes; the
/// error names `what` and ends with the tail of its log. Cleaning up after a timeout is the
/// caller's (a server stops in its own way).
pub(crate) async fn wait_ready<F: std::future::Future<Output = bool>>(
    child: &mut Option<Child>,
    what: &str,
    log: &Path,
    timeout: Duration,
    every: Duration,
    mut ready: impl FnMut() -> F,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            *child = None;
            anyhow::bail!("{what} exited early with {status}; {}", log_tail(log, 20));
        }
        if ready().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{what} not ready after {timeout:?}; {}", log_tail(log, 20));
        }
        tokio::time::sleep(every).await;
    }
}

/// A product process (the agent, the bot) run by a test: stdout and stderr appended to one
/// log, killed with SIGKILL when dropped, and restartable with the same command.
pub(crate) struct LoggedProcess {
    child: Option<tokio::process::Child>,
    log: std::path::PathBuf,
}

impl LoggedProcess {
    /// Not running yet; output goes to `log`.
    pub(crate) fn new(log: std::path::PathBuf) -> Self {
        Self { child: None, log }
    }

    /// Starts `command` (replacing whatever ran before), its output appended to the log.
    pub(crate) fn spawn(
        &mut self,
        mut command: tokio::process::Command,
        what: &str,
    ) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, and wait for the process to be gone.
    pub(crate) async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, and wait (with a deadline) for the exit.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        let pid = child.id().context("no pid")? as i32;
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        Ok(tokio::time::timeout(Duration::from_secs(30), child.wait()).await??)
    }

    /// The process id while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// The log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
