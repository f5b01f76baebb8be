//! What the tests of the agent as a process share: a NATS server, a folder of runbooks, agents
//! started on it, a client that sends commands as chat does, and the event store to read runs
//! back; plus a scripted HTTP server and a minimal HTTP client for the agent's HTTP sides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use rollback_agent::provision::{ProvisionSettings, provision};
use rollback_agent::store::{JetStreamEventStore, StoreConfig};
use rollback_proto::state::StepStatus;
use rollback_proto::subjects::LEASE_BUCKET;
use rollback_proto::{Command, CommandReply, Envelope, Event, RunId, RunState, StepId};
use rollback_tests::{AgentProcess, CommandClient, NatsServer, chat_user};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The agents' lease TTL: short, so that a takeover after a kill comes soon.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(2);

/// How long a test waits for something the agent should do soon; only reached on failure.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

pub(crate) struct Harness {
    pub(crate) nats: NatsServer,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) client: CommandClient,
    pub(crate) store: JetStreamEventStore,
}

impl Harness {
    pub(crate) async fn new() -> Harness {
        let nats = NatsServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("runbooks")).unwrap();
        let client = CommandClient::connect(&nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client.nats().clone());
        // As an administrator would, before any agent or bot starts (the server has no users).
        let settings = ProvisionSettings {
            store: StoreConfig {
                signing: rollback_tests::signing::test_signing(),
                ..Default::default()
            },
            lease_ttl: LEASE_TTL,
        };
        provision(&js, &settings).await.unwrap();
        let store = JetStreamEventStore::connect(js, settings.store)
            .await
            .unwrap();
        Harness {
            nats,
            dir,
            client,
            store,
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn runbook(&self, name: &str, text: &str) {
        std::fs::write(
            self.dir
                .path()
                .join("runbooks")
                .join(format!("{name}.toml")),
            text,
        )
        .unwrap();
    }

    /// An agent configuration: policy with oncall (run) and approvers (approve).
    pub(crate) fn config(&self, name: &str, extra: &str) -> String {
        format!(
            r#"
[agent]
name = "{name}"
runbooks_dir = "{dir}"
lease_ttl = "{lease_ttl:?}"

[nats]
url = "{url}"

[policy.roles]
oncall = ["run"]
approvers = ["approve"]
{extra}
"#,
            dir = self.dir.path().join("runbooks").display(),
            url = self.nats.url(),
            lease_ttl = LEASE_TTL,
        )
    }

    pub(crate) async fn agent(&self, name: &str, extra: &str) -> AgentProcess {
        AgentProcess::start(self.dir.path(), name, &self.config(name, extra))
            .await
            .unwrap()
    }

    pub(crate) async fn send(&self, who: &str, roles: &[&str], command: Command) -> CommandReply {
        self.client
            .send(&chat_user(who), roles, command)
            .await
            .unwrap()
    }

    pub(crate) async fn start(&self, runbook: &str) -> RunId {
        self.start_with(runbook, false, BTreeMap::new()).await
    }

    /// `start`, as alice (oncall), in dry-run mode or not, with parameter overrides.
    pub(crate) async fn start_with(
        &self,
        runbook: &str,
        dry_run: bool,
        params: BTreeMap<String, String>,
    ) -> RunId {
        self.opened(Command::start(runbook, dry_run, params)).await
    }

    /// `rehearse`, as alice (oncall).
    pub(crate) async fn rehearse(&self, runbook: &str) -> RunId {
        self.rehearse_with(runbook, rollback_proto::Rehearsal::default())
            .await
    }

    /// `rehearse` with its options, as alice (oncall).
    pub(crate) async fn rehearse_with(
        &self,
        runbook: &str,
        options: rollback_proto::Rehearsal,
    ) -> RunId {
        self.opened(Command::Start {
            fresh: options.fresh_copy,
            people: options.with_people,
            sample: options.sample,
            keep: options.keep,
            runbook: runbook.into(),
            dry_run: false,
            rehearsal: true,
            params: BTreeMap::new(),
        })
        .await
    }

    /// The run `command` (a start) opened, as alice (oncall); panics on a refusal.
    async fn opened(&self, command: Command) -> RunId {
        match self.send("alice", &["oncall"], command.clone()).await {
            CommandReply::Accepted { run: Some(run), .. } => run,
            other => panic!("`{}` refused: {other:?}", command.describe()),
        }
    }

    pub(crate) async fn accepted(&self, who: &str, roles: &[&str], command: Command) {
        let reply = self.send(who, roles, command.clone()).await;
        assert!(
            matches!(reply, CommandReply::Accepted { .. }),
            "{command:?} → {reply:?}"
        );
    }

    /// Waits until the run's state satisfies `pred` (polling the store, with a deadline).
    pub(crate) async fn wait_for(
        &self,
        run: RunId,
        what: &str,
        pred: impl Fn(&RunState) -> bool,
    ) -> RunState {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Ok(loaded) = self.store.load(run).await
                && let Some(state) = loaded.state
            {
                if pred(&state) {
                    return state;
                }
                if tokio::time::Instant::now() > deadline {
                    panic!(
                        "timed out waiting for {what}; run is now:\n{}",
                        rollback_proto::render::status_text(&state)
                    );
                }
            } else if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}: run {run} cannot be loaded");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The run's events, read back through the store (which verifies the hash chain).
    pub(crate) async fn events(&self, run: RunId) -> Vec<Event> {
        self.envelopes(run)
            .await
            .into_iter()
            .map(|e| e.event)
            .collect()
    }

    /// The run's envelopes, verified.
    pub(crate) async fn envelopes(&self, run: RunId) -> Vec<Envelope> {
        self.store.load_envelopes(run).await.unwrap()
    }

    /// The lease bucket the agents share.
    pub(crate) async fn leases(&self) -> kv::Store {
        async_nats::jetstream::new(self.client.nats().clone())
            .get_key_value(LEASE_BUCKET)
            .await
            .unwrap()
    }

    /// The name of the agent holding the run's lease, if one does.
    pub(crate) async fn lease_holder(&self, run: RunId) -> Option<String> {
        let value = self.leases().await.get(run.to_string()).await.unwrap()?;
        Some(String::from_utf8(value.to_vec()).unwrap())
    }
}

/// Every schema that is not the server's own.
pub(crate) async fn user_schemas(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace
         WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

pub(crate) fn step(s: &str) -> StepId {
    StepId::new(s).unwrap()
}

pub(crate) fn status_of(state: &RunState, s: &str) -> StepStatus {
    state.step(&step(s)).unwrap().3.status.clone()
}

/// The lines of a file; none while it does not exist.
pub(crate) fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Polls `check` every 20 ms until it holds; panics after `within`.
pub(crate) async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request an [`HttpStub`] received.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) body: String,
}

/// A tiny HTTP/1.1 server on loopback that answers from a script and records every request.
pub(crate) struct HttpStub {
    /// `http://127.0.0.1:<port>`.
    pub(crate) url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpStub {
    /// Serves requests, the n-th (from 0) answered with the status `status(n)`.
    pub(crate) async fn start(status: impl Fn(usize) -> u16 + Send + 'static) -> HttpStub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let Some(request) = read_request(&mut socket).await else {
                    continue;
                };
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(request);
                    seen.len() - 1
                };
                let code = status(n);
                let response = format!(
                    "HTTP/1.1 {code} Scripted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        HttpStub {
            url,
            requests,
            task,
        }
    }

    pub(crate) fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(socket: &mut TcpStream) -> Option<Request> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while data.len() < head_end + 4 + length {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let mut request_line = head.lines().next()?.split_whitespace();
    Some(Request {
        method: request_line.next()?.to_owned(),
        path: request_line.next()?.to_owned(),
        body: String::from_utf8_lossy(&data[head_end + 4..]).into_owned(),
    })
}

/// A minimal HTTP/1.0 GET: the status and the body.
pub(crate) async fn http_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("malformed response: {response}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// (schema, table) -> (rows, sum of the rows' text hashes).
pub(crate) type Fingerprints = BTreeMap<(String, String), (i64, i64)>;

pub(crate) async fn fingerprints(pool: &sqlx::PgPool, schemas: &[String]) -> Fingerprints {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p') ORDER BY 1, 2",
    )
    .bind(schemas)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for (schema, table) in tables {
        let q = format!(
            "SELECT count(*), coalesce(sum(hashtext(t::text)::int8), 0)::int8 FROM {} t",
            rollback_agent::tenancy::sql::table(&schema, &table)
        );
        let fp: (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .fetch_one(pool)
            .await
            .unwrap();
        out.insert((schema, table), fp);
    }
    out
}

/// A run of `runbook` right after it started, without parameters.
pub(crate) fn started(runbook: &rollback_proto::Runbook) -> RunState {
    RunState::from_runbook(
        RunId::new(),
        runbook.clone(),
        "t",
        "test",
        &BTreeMap::new(),
        false,
        &rollback_proto::Actor::Agent,
        time::OffsetDateTime::now_utc(),
    )
}
