//! A real `nats-server` with JetStream on loopback, its store in a temporary folder.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::binaries::find_binary;
use crate::process::{START_ATTEMPTS, free_ports, spawn_tied, stop, wait_ready};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A running `nats-server`; dropping it SIGKILLs the server and removes its folder.
pub struct NatsServer {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    monitor_port: u16,
    config: Option<PathBuf>,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a JetStream-enabled server on free loopback ports and waits until it serves
    /// clients and JetStream is up.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_inner(None).await
    }

    /// Like [`start`](Self::start), with `extra_config` (nats-server config syntax: users,
    /// accounts, permissions, limits) written to a config file. Listen address, ports and the
    /// JetStream store come from command-line flags, which take precedence over the file.
    pub async fn start_with_config(extra_config: &str) -> anyhow::Result<Self> {
        Self::start_inner(Some(extra_config)).await
    }

    async fn start_inner(extra_config: Option<&str>) -> anyhow::Result<Self> {
        let bin = find_binary("nats-server")?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("rollback-nats-")
                .tempdir()
                .context("creating a temporary folder for nats-server")?;
            let config = match extra_config {
                Some(text) => {
                    let path = dir.path().join("nats.conf");
                    std::fs::write(&path, text).context("writing nats.conf")?;
                    Some(path)
                }
                None => None,
            };
            let [port, monitor_port] = free_ports()?;
            let mut server = NatsServer {
                child: None,
                bin: bin.clone(),
                port,
                monitor_port,
                config,
                dir,
            };
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.expect("at least one attempt").context(format!(
            "nats-server did not come up in {START_ATTEMPTS} attempts"
        )))
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>` of the monitoring endpoints (`/healthz`, `/varz`, `/jsz`, ...).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The JetStream store; it survives [`kill`](Self::kill) and [`restart`](Self::restart).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The server's combined stdout and stderr, appended across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// The process id while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the server, as a crash would; the store stays for [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, libc::SIGKILL, Duration::ZERO);
        }
    }

    /// SIGTERMs the server (its clean shutdown) and waits for it to exit (SIGKILL after 30 s);
    /// the store stays for [`restart`](Self::restart).
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, libc::SIGTERM, Duration::from_secs(30));
        }
    }

    /// Starts the server again (killing it first if it runs) on the same port with the same
    /// store, and waits until it is ready. Clients reconnect to the same URL.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn_and_wait()
            .await
            .context("restarting nats-server")
    }

    async fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(&self.bin);
        command
            .args(["-a", "127.0.0.1", "-js", "-sd"])
            .arg(self.store_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .current_dir(self.dir.path());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let log = self.log_path();
        self.child = Some(spawn_tied(command, &log)?);

        let (port, monitor_port) = (self.port, self.monitor_port);
        let what = format!("nats-server on port {port}");
        let waited = wait_ready(
            &mut self.child,
            &what,
            &log,
            READY_TIMEOUT,
            Duration::from_millis(25),
            || Self::is_ready(port, monitor_port),
        )
        .await;
        if waited.is_err() {
            self.kill();
        }
        waited
    }

    /// Ready means `/healthz` says ok (which covers JetStream) and the client port greets with
    /// INFO: the monitoring listener comes up before the client one.
    async fn is_ready(port: u16, monitor_port: u16) -> bool {
        let probe = async {
            let healthy = http_get(monitor_port, "/healthz")
                .await
                .is_ok_and(|(status, _)| status == 200);
            healthy && greets_with_info(port).await.is_ok()
        };
        tokio::time::timeout(PROBE_TIMEOUT, probe)
            .await
            .unwrap_or(false)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("url", &self.url())
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// A minimal HTTP/1.0 GET, enough for the monitoring endpoints; avoids an HTTP client dependency.
pub(crate) async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub(crate) async fn greets_with_info(port: u16) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await?;
    if &buf != b"INFO " {
        bail!("unexpected greeting {:?}", String::from_utf8_lossy(&buf));
    }
    Ok(())
}
