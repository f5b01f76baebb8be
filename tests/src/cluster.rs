//! `nats-server` started from the configuration files the project ships in `deploy/nats/`:
//! one node from `single.conf`, or a 3-node JetStream cluster from `cluster/node-{1,2,3}.conf`.
//!
//! The shipped files are read as they are and only what must differ on a test machine is
//! replaced: listen addresses and ports (free loopback ports), route host names, the store
//! folder, and the include of `accounts.conf`, which points at the shipped file. Each
//! replacement must match exactly once, so a change to a shipped file that the tests no longer
//! understand fails loudly instead of testing something else. Users and permissions are the
//! shipped ones; the passwords (environment variables in `accounts.conf`) are fresh per start.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

use rollback_agent::store::{JetStreamEventStore, LoadedRun, StoreConfig};
use rollback_proto::subjects::COMMANDS_SUBJECT;
use rollback_proto::{Command, CommandReply, CommandRequest, Envelope, RunId, RunState};

use crate::agent::chat_user;
use crate::binaries::{find_binary, workspace_root};
use crate::nats::{greets_with_info, http_get};
use crate::process::{START_ATTEMPTS, free_ports, spawn_tied, stop, wait_ready};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The environment variable `accounts.conf` reads the administrator's password from.
pub const ADMIN_PASSWORD_VAR: &str = "ROLLBACK_ADMIN_NATS_PASSWORD";
/// The environment variable `accounts.conf` reads the agent's password from.
pub const AGENT_PASSWORD_VAR: &str = "ROLLBACK_AGENT_NATS_PASSWORD";
/// The environment variable `accounts.conf` reads the bot's password from.
pub const BOT_PASSWORD_VAR: &str = "ROLLBACK_BOT_NATS_PASSWORD";
/// The environment variable `accounts.conf` reads the auditor's password (account AUDIT) from.
pub const AUDITOR_PASSWORD_VAR: &str = "ROLLBACK_AUDITOR_NATS_PASSWORD";

/// The folder of the shipped NATS configuration.
pub fn shipped_nats_dir() -> PathBuf {
    workspace_root().join("deploy").join("nats")
}

/// The passwords of the shipped users for one server or cluster.
#[derive(Clone)]
pub struct NatsUsers {
    /// Password of the user `admin`, who provisions.
    pub admin_password: String,
    /// Password of the user `agent`.
    pub agent_password: String,
    /// Password of the user `bot`.
    pub bot_password: String,
    /// Password of the user `auditor`, the only user of the account AUDIT.
    pub auditor_password: String,
}

impl NatsUsers {
    fn fresh() -> Self {
        Self {
            admin_password: format!("admin-{}", uuid::Uuid::now_v7().simple()),
            agent_password: format!("agent-{}", uuid::Uuid::now_v7().simple()),
            bot_password: format!("bot-{}", uuid::Uuid::now_v7().simple()),
            auditor_password: format!("auditor-{}", uuid::Uuid::now_v7().simple()),
        }
    }

    /// Connection options for the user `admin`.
    pub fn admin(&self) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::with_user_and_password(
            "admin".into(),
            self.admin_password.clone(),
        )
    }

    /// Connection options for the user `agent`.
    pub fn agent(&self) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::with_user_and_password(
            "agent".into(),
            self.agent_password.clone(),
        )
    }

    /// Connection options for the user `bot`.
    pub fn bot(&self) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::with_user_and_password("bot".into(), self.bot_password.clone())
    }

    /// Connection options for the user `auditor` (account AUDIT).
    pub fn auditor(&self) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::with_user_and_password(
            "auditor".into(),
            self.auditor_password.clone(),
        )
    }
}

impl std::fmt::Debug for NatsUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsUsers { .. }")
    }
}

/// One `nats-server` running a configuration derived from a shipped file.
pub struct ConfiguredNats {
    child: Option<Child>,
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    store: PathBuf,
    port: u16,
    monitor_port: u16,
    users: NatsUsers,
}

impl ConfiguredNats {
    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>` of the monitoring endpoints (`/healthz`, `/connz`, `/jsz`, ...).
    pub fn monitor_address(&self) -> String {
        format!("127.0.0.1:{}", self.monitor_port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The configuration file the server runs, as derived from the shipped one.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The server's JetStream store folder.
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// The server's combined stdout and stderr, appended across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the server, as a crash would; its store stays for [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, libc::SIGKILL, Duration::ZERO);
        }
    }

    /// Starts the server again with the same configuration and store, and waits until ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_ready().await
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = std::process::Command::new(&self.bin);
        command
            .arg("-c")
            .arg(&self.config)
            .env(ADMIN_PASSWORD_VAR, &self.users.admin_password)
            .env(AGENT_PASSWORD_VAR, &self.users.agent_password)
            .env(BOT_PASSWORD_VAR, &self.users.bot_password)
            .env(AUDITOR_PASSWORD_VAR, &self.users.auditor_password);
        if let Some(dir) = self.config.parent() {
            command.current_dir(dir);
        }
        self.child = Some(spawn_tied(command, &self.log)?);
        Ok(())
    }

    /// Ready: `/healthz` says ok (on a cluster node: JetStream current with the cluster) and
    /// the client port greets with INFO.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let (port, monitor_port) = (self.port, self.monitor_port);
        let what = format!("nats-server {} on port {port}", self.config.display());
        let log = self.log.clone();
        let waited = wait_ready(
            &mut self.child,
            &what,
            &log,
            READY_TIMEOUT,
            Duration::from_millis(50),
            || async move {
                let probe = async {
                    let healthy = http_get(monitor_port, "/healthz")
                        .await
                        .is_ok_and(|(status, _)| status == 200);
                    healthy && greets_with_info(port).await.is_ok()
                };
                tokio::time::timeout(PROBE_TIMEOUT, probe)
                    .await
                    .unwrap_or(false)
            },
        )
        .await;
        if waited.is_err() {
            self.kill();
        }
        waited
    }
}

impl Drop for ConfiguredNats {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for ConfiguredNats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredNats")
            .field("url", &self.url())
            .field("config", &self.config)
            .field("pid", &self.pid())
            .finish()
    }
}

/// A shipped configuration file's text with test-machine values put in.
struct Derived {
    source: PathBuf,
    text: String,
}

impl Derived {
    fn read(source: PathBuf) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(&source)
            .with_context(|| format!("reading {}", source.display()))?;
        Ok(Self { source, text })
    }

    /// Replaces `from`, which must occur exactly once in the shipped file, by `to`.
    fn replace(mut self, from: &str, to: &str) -> anyhow::Result<Self> {
        let found = self.text.matches(from).count();
        if found != 1 {
            bail!(
                "{} holds `{from}` {found} times, the tests expect it once: \
                 update tests/src/cluster.rs along with the shipped file",
                self.source.display()
            );
        }
        self.text = self.text.replacen(from, to, 1);
        Ok(self)
    }

    /// Points the include of the shared accounts file at the shipped one, from a derived file
    /// to be written in `dir`. nats-server reads an include relative to the including file's
    /// folder, even an absolute one, hence the way up to `/` and down again.
    fn include_shipped_accounts(self, written_as: &str, dir: &Path) -> anyhow::Result<Self> {
        let accounts = shipped_nats_dir().join("accounts.conf");
        let up = dir
            .canonicalize()?
            .components()
            .skip(1)
            .map(|_| "..")
            .collect::<Vec<_>>()
            .join("/");
        let down = accounts.canonicalize()?;
        let down = down.strip_prefix("/")?;
        self.replace(
            &format!("include {written_as}"),
            &format!("include \"{up}/{}\"", down.display()),
        )
    }

    fn write(self, to: &Path) -> anyhow::Result<PathBuf> {
        std::fs::write(to, &self.text).with_context(|| format!("writing {}", to.display()))?;
        Ok(to.to_path_buf())
    }
}

/// A server from the shipped `deploy/nats/single.conf`; dropping it kills the server and
/// removes its folder.
pub struct SingleNats {
    server: ConfiguredNats,
    _dir: TempDir,
}

impl SingleNats {
    /// Starts `single.conf` on free loopback ports with a store in a temporary folder and
    /// fresh passwords for the shipped users, and waits until it is ready.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = find_binary("nats-server")?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("rollback-nats-single-")
                .tempdir()?;
            let [port, monitor_port] = free_ports()?;
            let store = dir.path().join("store");
            let config = Derived::read(shipped_nats_dir().join("single.conf"))?
                .replace("listen: 0.0.0.0:4222", &format!("listen: 127.0.0.1:{port}"))?
                .replace(
                    "http: 127.0.0.1:8222",
                    &format!("http: 127.0.0.1:{monitor_port}"),
                )?
                .replace(
                    "store_dir: \"/var/lib/nats\"",
                    &format!("store_dir: \"{}\"", store.display()),
                )?
                .include_shipped_accounts("./accounts.conf", dir.path())?
                .write(&dir.path().join("single.conf"))?;
            let mut server = ConfiguredNats {
                child: None,
                bin: bin.clone(),
                config,
                log: dir.path().join("nats.log"),
                store,
                port,
                monitor_port,
                users: NatsUsers::fresh(),
            };
            server.spawn()?;
            match server.wait_ready().await {
                Ok(()) => return Ok(Self { server, _dir: dir }),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.expect("at least one attempt").context(format!(
            "nats-server (single.conf) did not come up in {START_ATTEMPTS} attempts"
        )))
    }

    /// The server.
    pub fn server(&mut self) -> &mut ConfiguredNats {
        &mut self.server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The passwords of the shipped users.
    pub fn users(&self) -> &NatsUsers {
        &self.server.users
    }
}

/// A 3-node JetStream cluster from the shipped `deploy/nats/cluster/node-{1,2,3}.conf`;
/// dropping it kills every node and removes their folders.
pub struct NatsCluster {
    nodes: Vec<ConfiguredNats>,
    users: NatsUsers,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts the three nodes on free loopback ports (client, route and monitoring port each),
    /// each with its own store, and waits until every node is ready (JetStream current).
    pub async fn start() -> anyhow::Result<Self> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start().await {
                Ok(cluster) => return Ok(cluster),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.expect("at least one attempt").context(format!(
            "the 3-node cluster did not come up in {START_ATTEMPTS} attempts"
        )))
    }

    async fn try_start() -> anyhow::Result<Self> {
        let bin = find_binary("nats-server")?;
        let dir = tempfile::Builder::new()
            .prefix("rollback-nats-cluster-")
            .tempdir()?;
        let users = NatsUsers::fresh();
        let ports: [u16; 9] = free_ports()?;
        let (client, rest) = ports.split_at(3);
        let (route, monitor) = rest.split_at(3);
        let mut nodes = Vec::new();
        for n in 0..3 {
            let name = format!("node-{}", n + 1);
            let node_dir = dir.path().join(&name);
            std::fs::create_dir(&node_dir)?;
            let store = node_dir.join("store");
            let mut derived = Derived::read(
                shipped_nats_dir()
                    .join("cluster")
                    .join(format!("{name}.conf")),
            )?
            .replace(
                "listen: 0.0.0.0:4222",
                &format!("listen: 127.0.0.1:{}", client[n]),
            )?
            .replace(
                "http: 0.0.0.0:8222",
                &format!("http: 127.0.0.1:{}", monitor[n]),
            )?
            .replace(
                "listen: 0.0.0.0:6222",
                &format!("listen: 127.0.0.1:{}", route[n]),
            )?
            .replace(
                "store_dir: \"/var/lib/nats\"",
                &format!("store_dir: \"{}\"", store.display()),
            )?
            .include_shipped_accounts("../accounts.conf", &node_dir)?;
            for (peer, port) in route.iter().enumerate() {
                derived = derived.replace(
                    &format!("nats-route://nats-{}:6222", peer + 1),
                    &format!("nats-route://127.0.0.1:{port}"),
                )?;
            }
            let config = derived.write(&node_dir.join(format!("{name}.conf")))?;
            let mut node = ConfiguredNats {
                child: None,
                bin: bin.clone(),
                config,
                log: node_dir.join("nats.log"),
                store,
                port: client[n],
                monitor_port: monitor[n],
                users: users.clone(),
            };
            node.spawn()?;
            nodes.push(node);
        }
        // JetStream needs a quorum: no node is healthy before the others are up.
        for node in &mut nodes {
            node.wait_ready().await?;
        }
        Ok(Self {
            nodes,
            users,
            _dir: dir,
        })
    }

    /// The three client URLs, comma-separated (the agent's `nats.url` syntax).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(ConfiguredNats::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Each node's client URL.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(ConfiguredNats::url).collect()
    }

    /// Node `n` (0, 1 or 2).
    pub fn node(&mut self, n: usize) -> &mut ConfiguredNats {
        &mut self.nodes[n]
    }

    /// The passwords of the shipped users.
    pub fn users(&self) -> &NatsUsers {
        &self.users
    }
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster")
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// An agent configuration for a server or cluster started from the shipped files: the user
/// `agent`, every URL in `urls` (comma-separated), `replicas` stream replicas, and the policy
/// the tests use (role `oncall` may run, role `approvers` may approve).
pub fn agent_config(
    name: &str,
    runbooks_dir: &Path,
    urls: &str,
    users: &NatsUsers,
    replicas: usize,
    lease_ttl: &str,
) -> String {
    format!(
        r#"
[agent]
name = "{name}"
runbooks_dir = "{runbooks}"
lease_ttl = "{lease_ttl}"

[nats]
url = "{urls}"
user = "agent"
password = "{password}"

[store]
replicas = {replicas}

[policy.roles]
oncall = ["run"]
approvers = ["approve"]
"#,
        runbooks = runbooks_dir.display(),
        password = users.agent_password,
    )
}

/// Sends commands the way the bot does, on one connection, and reads runs back through the
/// event store (hash chain verified) on another: with the shipped permissions the bot's user
/// may send commands but not read runs with ad hoc consumers, the agent's user may do both.
pub struct RunDriver {
    commands: async_nats::Client,
    store: JetStreamEventStore,
}

/// How long [`RunDriver`] waits for the agent to do something it should do soon; reached only
/// when a test fails.
pub const RUN_DEADLINE: Duration = Duration::from_secs(90);

impl RunDriver {
    /// Commands go out on `commands`; runs are read on `reader` from the provisioned stream,
    /// which is to have `replicas` replicas.
    pub async fn new(
        commands: async_nats::Client,
        reader: async_nats::Client,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let store = JetStreamEventStore::connect(
            async_nats::jetstream::new(reader),
            StoreConfig {
                replicas,
                signing: crate::signing::test_signing(),
                ..Default::default()
            },
        )
        .await
        .context("opening the event store")?;
        Ok(Self { commands, store })
    }

    /// The event store runs are read from.
    pub fn store(&self) -> &JetStreamEventStore {
        &self.store
    }

    /// Sends `command` as the chat user `who` with `roles`; retries while no agent answers yet.
    pub async fn send(
        &self,
        who: &str,
        roles: &[&str],
        command: Command,
    ) -> anyhow::Result<CommandReply> {
        let request = CommandRequest {
            proof: None,
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            actor: chat_user(who),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            command,
        };
        let payload = serde_json::to_vec(&request)?;
        let deadline = tokio::time::Instant::now() + RUN_DEADLINE;
        loop {
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                self.commands
                    .request(COMMANDS_SUBJECT, payload.clone().into()),
            )
            .await;
            match reply {
                Ok(Ok(msg)) => return Ok(serde_json::from_slice(&msg.payload)?),
                Ok(Err(_)) | Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends `command` and fails unless it is accepted.
    pub async fn accepted(
        &self,
        who: &str,
        roles: &[&str],
        command: Command,
    ) -> anyhow::Result<CommandReply> {
        let reply = self.send(who, roles, command.clone()).await?;
        if !matches!(reply, CommandReply::Accepted { .. }) {
            bail!("{command:?} was not accepted: {reply:?}");
        }
        Ok(reply)
    }

    /// Starts `runbook` as alice (role `oncall`) and returns the new run.
    pub async fn start(&self, runbook: &str) -> anyhow::Result<RunId> {
        let reply = self
            .accepted(
                "alice",
                &["oncall"],
                Command::start(runbook, false, Default::default()),
            )
            .await?;
        match reply {
            CommandReply::Accepted { run: Some(run), .. } => Ok(run),
            other => bail!("start answered without a run: {other:?}"),
        }
    }

    /// Polls the run until its state satisfies `pred`; fails after [`RUN_DEADLINE`].
    pub async fn wait_for(
        &self,
        run: RunId,
        what: &str,
        pred: impl Fn(&RunState) -> bool,
    ) -> anyhow::Result<RunState> {
        let deadline = tokio::time::Instant::now() + RUN_DEADLINE;
        loop {
            let last = match self.store.load(run).await {
                Ok(LoadedRun {
                    state: Some(state), ..
                }) => {
                    if pred(&state) {
                        return Ok(state);
                    }
                    rollback_proto::render::status_text(&state)
                }
                Ok(_) => "no events yet".to_owned(),
                Err(e) => format!("cannot be loaded: {e}"),
            };
            if tokio::time::Instant::now() > deadline {
                bail!("timed out waiting for {what}; run {run}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The run's envelopes, read back with the hash chain verified.
    pub async fn envelopes(&self, run: RunId) -> anyhow::Result<Vec<Envelope>> {
        Ok(self.store.load_envelopes(run).await?)
    }
}

/// One agent (`agent-a`, one replica, a 5 s lease) on a single server from the shipped files,
/// provisioned as `admin`, its runbooks written into a folder of its own by `runbooks` (given
/// that folder's parent, for files a runbook writes); a driver that commands as the bot and
/// reads as the agent, and the agent's own connection for what a holder of its credentials
/// does by hand.
pub struct ShippedAgent {
    pub nats: SingleNats,
    pub users: NatsUsers,
    pub dir: TempDir,
    pub agent: crate::AgentProcess,
    pub as_agent: async_nats::Client,
    pub driver: RunDriver,
}

impl ShippedAgent {
    pub async fn start(
        runbooks: impl FnOnce(&Path) -> Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let nats = SingleNats::start().await?;
        let users = nats.users().clone();
        let dir = tempfile::tempdir()?;
        let folder = dir.path().join("runbooks");
        std::fs::create_dir(&folder)?;
        for (name, text) in runbooks(dir.path()) {
            std::fs::write(folder.join(format!("{name}.toml")), text)?;
        }
        let agent = crate::AgentProcess::start_with(
            dir.path(),
            "agent-a",
            &agent_config("agent-a", &folder, &nats.url(), &users, 1, "5s"),
            crate::Provision::AsAdmin(&users),
        )
        .await?;
        let bot = users.bot().connect(nats.url()).await?;
        let as_agent = users.agent().connect(nats.url()).await?;
        let driver = RunDriver::new(bot, as_agent.clone(), 1).await?;
        Ok(ShippedAgent {
            nats,
            users,
            dir,
            agent,
            as_agent,
            driver,
        })
    }
}
