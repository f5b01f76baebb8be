use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use rollback_proto::Permission;

use super::layering::without_quoted_strings;
use super::url::without_userinfo;
use super::*;

/// An environment made of `pairs`.
fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let vars: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| vars.get(name).cloned()
}

fn no_env() -> impl Fn(&str) -> Option<String> {
    env(&[])
}

/// Writes `text` to a file named agent.toml in a fresh folder, and loads it with `vars`.
fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    AgentConfig::load(Some(&path), &env(vars))
}

fn load_err(text: &str, vars: &[(&str, &str)]) -> ConfigError {
    match load_text(text, vars) {
        Ok(config) => panic!("loaded: {config:?}"),
        Err(error) => error,
    }
}

const FULL: &str = r#"
[agent]
name = "agent-1"
runbooks_dir = "/srv/runbooks"
max_concurrent_runs = 4
lease_ttl = "20s"
output_chunk_bytes = 8192

[nats]
url = "tls://nats.internal:4222"
user = "agent"
password = "nats-pass-123"

[store]
replicas = 3
duplicate_window = "5m"

[databases.app]
url = "postgres://rollback:db-pass-456@db:5432/app"

[databases.backup]
url = "postgresql://rollback:db-pass-789@db:5432/app_before"

[policy.roles]
oncall = ["run"]
"123456789012345678" = ["run", "approve"]
[policy.users]
"42" = ["admin"]

[escalation]
stall_after = "10m"
[[escalation.levels]]
name = "team lead"
after = "0s"
mentions = ["<@&111>"]
webhooks = ["https://hooks.example/x?token=hook-secret-000"]
[[escalation.levels]]
name = "technical director"
after = "10m"
mentions = ["<@222>"]
[[escalation.levels]]
name = "CTO"
after = "20m"
mentions = ["<@333>"]

[metrics]
listen = "127.0.0.1:9464"
"#;

const SECRETS: [&str; 5] = [
    "nats-pass-123",
    "db-pass-456",
    "db-pass-789",
    "hook-secret-000",
    "nats-token-999",
];

#[test]
fn without_a_file_the_defaults_are_a_working_local_config() {
    let config = AgentConfig::load(None, &no_env()).unwrap();
    assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
    assert!(matches!(config.nats.auth(), NatsAuth::None));
    assert_eq!(config.agent.runbooks_dir, Path::new("deploy/runbooks"));
    assert!(
        config
            .agent
            .name
            .ends_with(&format!("-{}", std::process::id()))
    );
    assert_eq!(config.agent.max_concurrent_runs, 8);
    assert_eq!(config.agent.lease_ttl, Duration::from_secs(15));
    assert_eq!(config.agent.output_chunk_bytes, 4096);
    assert_eq!(config.store.replicas, 1);
    assert_eq!(config.store.duplicate_window, Duration::from_secs(600));
    assert!(config.databases.is_empty());
    assert!(!config.escalation.is_enabled());
    assert!(config.metrics.is_none());
    assert_eq!(config.policy, Policy::default());
}

#[test]
fn reads_every_setting_from_the_file() {
    let config = load_text(FULL, &[]).unwrap();
    assert_eq!(config.agent.name, "agent-1");
    assert_eq!(config.agent.runbooks_dir, Path::new("/srv/runbooks"));
    assert_eq!(config.agent.max_concurrent_runs, 4);
    assert_eq!(config.agent.lease_ttl, Duration::from_secs(20));
    assert_eq!(config.agent.output_chunk_bytes, 8192);
    assert_eq!(config.nats.servers(), ["tls://nats.internal:4222"]);
    match config.nats.auth() {
        NatsAuth::UserPassword { user, password } => {
            assert_eq!(user, "agent");
            assert_eq!(password.expose(), "nats-pass-123");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(config.store.replicas, 3);
    assert_eq!(config.store.duplicate_window, Duration::from_secs(300));
    assert_eq!(
        config.databases["app"].url.expose(),
        "postgres://rollback:db-pass-456@db:5432/app"
    );
    assert_eq!(config.databases.len(), 2);
    assert_eq!(
        config.policy.roles["123456789012345678"],
        BTreeSet::from([Permission::Run, Permission::Approve])
    );
    assert_eq!(
        config.policy.users["42"],
        BTreeSet::from([Permission::Admin])
    );
    let escalation = &config.escalation;
    assert_eq!(escalation.stall_after, Duration::from_secs(600));
    let names: Vec<&str> = escalation.levels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["team lead", "technical director", "CTO"]);
    assert_eq!(escalation.levels[1].after, Duration::from_secs(600));
    assert_eq!(escalation.levels[2].mentions, ["<@333>"]);
    assert_eq!(
        escalation.levels[0].webhooks[0].expose(),
        "https://hooks.example/x?token=hook-secret-000"
    );
    assert!(escalation.levels[1].webhooks.is_empty());
    assert_eq!(
        config.metrics.unwrap().listen,
        "127.0.0.1:9464".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn the_example_file_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.example.toml");
    let config = AgentConfig::load(Some(&path), &no_env()).unwrap();
    assert!(config.escalation.is_enabled());
    assert!(config.metrics.is_some());
    assert!(config.databases.contains_key("app"));
}

#[test]
fn the_example_files_proof_and_checkpoint_settings_load_when_uncommented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.example.toml");
    let text: String = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let uncommented = [
                "# [discord]",
                "# public_key",
                "# proof_max_age",
                "# [policy]",
            ]
            .iter()
            .chain(&["# require_proved_actions", "# checkpoint_every"])
            .any(|start| line.starts_with(start));
            let line = if uncommented { &line[2..] } else { line };
            format!("{}\n", line.replace("<64 hex digits>", &"a".repeat(64)))
        })
        .collect();
    let config = load_text(&text, &[]).unwrap();
    assert!(config.policy.require_proved_actions);
    assert!(config.discord.verifying_key().is_some());
    assert_eq!(
        config.events.checkpoint_every,
        std::time::Duration::from_secs(300)
    );
}

#[test]
fn no_secret_reaches_debug_output() {
    let config = load_text(FULL, &[]).unwrap();
    let with_token = load_text(
        "[nats]\nurl = \"nats://u:nats-pass-123@h:4222\"\ntoken = \"nats-token-999\"",
        &[],
    )
    .unwrap();
    for printed in [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{with_token:?}"),
    ] {
        for secret in SECRETS {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("[redacted]"));
    }
}

#[test]
fn the_environment_overrides_the_file() {
    let config = load_text(
        "[agent]\nname = \"from-file\"\n[nats]\nurl = \"nats://file:4222\"\n[metrics]\nlisten = \"127.0.0.1:1\"",
        &[
            ("ROLLBACK_AGENT_NAME", "from-env"),
            ("ROLLBACK_RUNBOOKS_DIR", "/opt/runbooks"),
            ("NATS_URL", "nats://a:4222, nats://b:4222"),
            ("NATS_USER", "agent"),
            ("NATS_PASSWORD", "nats-pass-123"),
            ("ROLLBACK_METRICS_LISTEN", "[::1]:9464"),
        ],
    )
    .unwrap();
    assert_eq!(config.agent.name, "from-env");
    assert_eq!(config.agent.runbooks_dir, Path::new("/opt/runbooks"));
    assert_eq!(config.nats.servers(), ["nats://a:4222", "nats://b:4222"]);
    assert!(matches!(
        config.nats.auth(),
        NatsAuth::UserPassword { user: "agent", .. }
    ));
    assert_eq!(config.metrics.unwrap().listen.to_string(), "[::1]:9464");

    let config = AgentConfig::load(
        None,
        &env(&[
            ("NATS_TOKEN", "nats-token-999"),
            ("ROLLBACK_METRICS_LISTEN", "off"),
            ("NATS_USER", ""),
        ]),
    )
    .unwrap();
    assert!(matches!(config.nats.auth(), NatsAuth::Token(t) if t.expose() == "nats-token-999"));
    assert!(config.metrics.is_none());
    let creds = AgentConfig::load(None, &env(&[("NATS_CREDS", "/etc/agent.creds")])).unwrap();
    assert!(
        matches!(creds.nats.auth(), NatsAuth::CredsFile(p) if p == Path::new("/etc/agent.creds"))
    );
}

#[test]
fn database_url_sets_the_one_database_and_refuses_to_guess() {
    let url = "postgres://u:db-pass-456@h/app";
    let vars = [(DATABASE_URL, url)];
    // No target: it becomes `default`.
    let config = AgentConfig::load(None, &env(&vars)).unwrap();
    assert_eq!(config.databases["default"].url.expose(), url);
    // A `default` target among others: that one.
    let two = "[databases.default]\nurl = \"postgres://x/1\"\n[databases.other]\nurl = \"postgres://x/2\"";
    let config = load_text(two, &vars).unwrap();
    assert_eq!(config.databases["default"].url.expose(), url);
    assert_eq!(config.databases["other"].url.expose(), "postgres://x/2");
    // Exactly one target, whatever its name: that one, and no second target.
    let config = load_text("[databases.app]\nurl = \"postgres://x/1\"", &vars).unwrap();
    assert_eq!(config.databases.len(), 1);
    assert_eq!(config.databases["app"].url.expose(), url);
    // Several, none `default`: ambiguous.
    let error = load_err(
        "[databases.app]\nurl = \"postgres://x/1\"\n[databases.reporting]\nurl = \"postgres://x/2\"",
        &vars,
    );
    assert_eq!(error.kind(), ConfigErrorKind::Conflict);
    assert_eq!(error.env_var(), Some(DATABASE_URL));
    assert!(error.to_string().contains("app, reporting"), "{error}");
    assert!(!error.to_string().contains("db-pass-456"));
}

#[test]
fn a_named_database_variable_wins_and_fills_declared_targets() {
    let text = "[databases.app]\nurl = \"postgres://x/1\"\n[databases.read-replica]\n";
    let config = load_text(
        text,
        &[
            (DATABASE_URL, "postgres://generic/db"),
            ("ROLLBACK_DATABASE_APP_URL", "postgres://specific/app"),
            (
                "ROLLBACK_DATABASE_READ_REPLICA_URL",
                "postgres://replica/app",
            ),
        ],
    );
    // Two targets and no `default`: DATABASE_URL is refused even though both are set.
    assert_eq!(config.unwrap_err().kind(), ConfigErrorKind::Conflict);
    let config = load_text(
        text,
        &[
            ("ROLLBACK_DATABASE_APP_URL", "postgres://specific/app"),
            (
                "ROLLBACK_DATABASE_READ_REPLICA_URL",
                "postgres://replica/app",
            ),
        ],
    )
    .unwrap();
    assert_eq!(
        config.databases["app"].url.expose(),
        "postgres://specific/app"
    );
    assert_eq!(
        config.databases["read-replica"].url.expose(),
        "postgres://replica/app"
    );

    let error = load_err(text, &[]);
    assert_eq!(error.kind(), ConfigErrorKind::Missing);
    assert_eq!(error.setting(), Some("databases.read-replica.url"));
    assert!(
        error
            .to_string()
            .contains("ROLLBACK_DATABASE_READ_REPLICA_URL"),
        "{error}"
    );
}

#[test]
fn the_process_environment_can_add_targets() {
    let names = [
        "PATH".to_owned(),
        "ROLLBACK_DATABASE_REPORTING_URL".to_owned(),
    ];
    let vars = env(&[("ROLLBACK_DATABASE_REPORTING_URL", "postgres://r/db")]);
    let config = AgentConfig::load_layered(None, &vars, &names).unwrap();
    assert_eq!(
        config.databases["reporting"].url.expose(),
        "postgres://r/db"
    );
    // Through `load`, which cannot list variables, the undeclared target stays unknown.
    assert!(AgentConfig::load(None, &vars).unwrap().databases.is_empty());
}

#[test]
fn unknown_keys_are_refused_with_their_setting_and_line() {
    let cases = [
        ("bogus = 1", "bogus"),
        (
            "[agent]\nname = \"a\"\nlease_tll = \"1s\"",
            "agent.lease_tll",
        ),
        ("[nats]\npasswd = \"nats-pass-123\"", "nats.passwd"),
        ("[policy]\nadmins = []", "policy.admins"),
        (
            "[databases.app]\nuri = \"postgres://x\"",
            "databases.app.uri",
        ),
        (
            "[escalation]\n[[escalation.levels]]\nname = \"a\"\nmention = []",
            "escalation.levels[0].mention",
        ),
        (
            "[metrics]\nlisten = \"127.0.0.1:1\"\nport = 2",
            "metrics.port",
        ),
    ];
    for (text, setting) in cases {
        let error = load_err(text, &[]);
        assert_eq!(error.kind(), ConfigErrorKind::UnknownSetting, "{error}");
        assert_eq!(error.setting(), Some(setting), "{error}");
        assert_eq!(error.line(), Some(text.lines().count()), "{error}");
        let shown = error.to_string();
        assert!(
            shown.contains("agent.toml") && shown.contains(setting),
            "{shown}"
        );
        assert!(!shown.contains("nats-pass-123"), "{shown}");
    }
}

#[test]
fn malformed_values_name_their_setting() {
    let cases = [
        (
            "[agent]\nlease_ttl = \"15 s\"",
            "agent.lease_ttl",
            "bad duration",
        ),
        (
            "[store]\nduplicate_window = \"10min\"",
            "store.duplicate_window",
            "bad duration",
        ),
        (
            "[escalation]\nstall_after = 15",
            "escalation.stall_after",
            "invalid type",
        ),
        (
            "[policy.roles]\noncall = [\"root\"]",
            "policy.roles.oncall",
            "unknown variant `root`",
        ),
        (
            "[policy.users]\n\"42\" = [\"run\", \"sudo\"]",
            "policy.users.42",
            "unknown variant `sudo`",
        ),
        (
            "[metrics]\nlisten = \"localhost:9464\"",
            "metrics.listen",
            "address",
        ),
        (
            "[agent]\nmax_concurrent_runs = -1",
            "agent.max_concurrent_runs",
            "invalid value",
        ),
    ];
    for (text, setting, message) in cases {
        let error = load_err(text, &[]);
        assert_eq!(error.kind(), ConfigErrorKind::InvalidValue, "{error}");
        assert!(error.setting().unwrap().starts_with(setting), "{error}");
        assert!(error.to_string().contains(message), "{error}");
        assert!(error.to_string().contains("agent.toml"), "{error}");
    }
    let missing = load_err("[escalation]\n[[escalation.levels]]\nafter = \"1m\"", &[]);
    assert_eq!(missing.kind(), ConfigErrorKind::Missing);
    assert_eq!(missing.setting(), Some("escalation.levels[0]"));
}

#[test]
fn syntax_errors_and_unreadable_files_say_where() {
    let error = load_err("[agent]\nname = \"a\"\nname = \"b\"", &[]);
    assert_eq!(error.kind(), ConfigErrorKind::Syntax);
    assert_eq!(error.line(), Some(3));
    assert!(
        error.to_string().ends_with("the key name is set twice"),
        "{error}"
    );
    let error = load_err(
        "[nats]\npassword = \"a\"\npassword = \"nats-pass-123\"",
        &[],
    );
    assert!(
        error.to_string().ends_with("the key password is set twice"),
        "{error}"
    );
    let error = load_err("[nats]\npassword = \"nats-pass-123", &[]);
    assert_eq!(error.kind(), ConfigErrorKind::Syntax);
    assert!(!error.to_string().contains("nats-pass-123"), "{error}");

    let missing = Path::new("/nonexistent/agent.toml");
    let error = AgentConfig::load(Some(missing), &no_env()).unwrap_err();
    assert_eq!(error.kind(), ConfigErrorKind::Unreadable);
    assert!(
        error.to_string().contains("/nonexistent/agent.toml"),
        "{error}"
    );
    assert!(std::error::Error::source(&error).is_some());
}

#[test]
fn escalation_needs_levels_with_distinct_names_that_ping_someone() {
    let error = load_err("[escalation]\nstall_after = \"5m\"", &[]);
    assert_eq!(error.kind(), ConfigErrorKind::Missing);
    assert_eq!(error.setting(), Some("escalation.levels"));

    let level =
        |name: &str| format!("[[escalation.levels]]\nname = \"{name}\"\nmentions = [\"<@1>\"]\n");
    let twice = format!(
        "[escalation]\n{}{}{}",
        level("lead"),
        level("cto"),
        level("lead")
    );
    let error = load_err(&twice, &[]);
    assert_eq!(error.kind(), ConfigErrorKind::InvalidValue);
    assert_eq!(error.setting(), Some("escalation.levels[2].name"));
    assert!(error.to_string().contains("`lead`"), "{error}");

    let silent = load_err("[escalation]\n[[escalation.levels]]\nname = \"lead\"", &[]);
    assert_eq!(silent.setting(), Some("escalation.levels[0].mentions"));

    let hook = load_err(
        "[escalation]\n[[escalation.levels]]\nname = \"lead\"\nwebhooks = [\"ftp://u:hook-secret-000@x\"]",
        &[],
    );
    assert_eq!(hook.setting(), Some("escalation.levels[0].webhooks[0]"));
    assert!(!hook.to_string().contains("hook-secret-000"), "{hook}");
}

#[test]
fn urls_must_have_the_right_scheme() {
    let error = load_err("[nats]\nurl = \"http://127.0.0.1:4222\"", &[]);
    assert_eq!(error.setting(), Some("nats.url"));
    assert_eq!(error.env_var(), None);
    assert!(error.to_string().contains("`http`"), "{error}");

    let error = load_err("", &[("NATS_URL", "nats://ok:4222,127.0.0.1:4222")]);
    assert_eq!(error.setting(), Some("nats.url"));
    assert_eq!(error.env_var(), Some("NATS_URL"));
    assert!(
        error.to_string().contains("environment variable NATS_URL"),
        "{error}"
    );

    let error = load_err(
        "[databases.app]\nurl = \"mysql://root:db-pass-456@db/app\"",
        &[],
    );
    assert_eq!(error.setting(), Some("databases.app.url"));
    assert!(error.to_string().contains("`mysql`"), "{error}");
    assert!(!error.to_string().contains("db-pass-456"), "{error}");

    let error = load_err("", &[(DATABASE_URL, "db-pass-456")]);
    assert_eq!(error.setting(), Some("databases.default.url"));
    assert_eq!(error.env_var(), Some(DATABASE_URL));
    assert!(!error.to_string().contains("db-pass-456"), "{error}");
}

#[test]
fn one_way_to_authenticate_to_nats() {
    let error = load_err(
        "[nats]\nuser = \"a\"\npassword = \"nats-pass-123\"\ncreds_file = \"/etc/a.creds\"",
        &[],
    );
    assert_eq!(error.kind(), ConfigErrorKind::Conflict);
    assert_eq!(error.setting(), Some("nats.creds_file"));
    assert!(error.to_string().contains("nats.password"), "{error}");

    let error = load_err(
        "[nats]\ncreds_file = \"/etc/a.creds\"",
        &[("NATS_USER", "a"), ("NATS_PASSWORD", "nats-pass-123")],
    );
    assert_eq!(error.kind(), ConfigErrorKind::Conflict);
    assert!(!error.to_string().contains("nats-pass-123"), "{error}");

    let error = load_err("", &[("NATS_PASSWORD", "nats-pass-123")]);
    assert_eq!(error.kind(), ConfigErrorKind::Missing);
    assert_eq!(error.setting(), Some("nats.user"));
    let error = load_err("", &[("NATS_TOKEN", "t"), ("NATS_CREDS", "/c")]);
    assert_eq!(error.kind(), ConfigErrorKind::Conflict);
    assert_eq!(error.env_var(), Some("NATS_CREDS"));
}

#[test]
fn bad_metrics_address_from_the_environment() {
    let error = load_err("", &[("ROLLBACK_METRICS_LISTEN", "localhost:9464")]);
    assert_eq!(error.setting(), Some("metrics.listen"));
    assert_eq!(error.env_var(), Some("ROLLBACK_METRICS_LISTEN"));
    assert!(error.to_string().contains("agent.toml"), "{error}");
}

#[test]
fn the_scratch_server_comes_from_the_file_or_the_environment_and_must_be_postgres() {
    let config = load_text(
        "[rehearsal]\nserver = \"postgres://scratch@db-scratch:5432/postgres\"",
        &[],
    )
    .unwrap();
    assert!(config.rehearsal.server.is_some());
    let config = load_text(
        "",
        &[(
            "ROLLBACK_REHEARSAL_SERVER_URL",
            "postgres://scratch:secret-pass@db-scratch/postgres",
        )],
    )
    .unwrap();
    assert_eq!(
        config.rehearsal.server.unwrap().expose(),
        "postgres://scratch:secret-pass@db-scratch/postgres"
    );
    let error = load_err("[rehearsal]\nserver = \"mysql://root:hunter2@db/x\"", &[]);
    assert_eq!(error.setting(), Some("rehearsal.server"));
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert_eq!(load_text("", &[]).unwrap().rehearsal.server, None);
}

#[test]
fn proved_actions_need_the_applications_public_key_which_must_be_one() {
    let key = "a".repeat(64);
    let config = load_text(
        &format!("[discord]\npublic_key = \"{key}\"\n[policy]\nrequire_proved_actions = true"),
        &[],
    )
    .unwrap();
    assert!(config.policy.require_proved_actions);
    assert!(config.discord.verifying_key().is_some());
    assert_eq!(
        config.discord.proof_max_age,
        std::time::Duration::from_secs(300)
    );
    let error = load_err("[policy]\nrequire_proved_actions = true", &[]);
    assert_eq!(error.setting(), Some("policy.require_proved_actions"));
    let config = load_text(
        "[policy]\nrequire_proved_actions = true",
        &[("ROLLBACK_DISCORD_PUBLIC_KEY", &key)],
    )
    .unwrap();
    assert!(config.discord.verifying_key().is_some());
    let error = load_err("[discord]\npublic_key = \"not hex\"", &[]);
    assert_eq!(error.setting(), Some("discord.public_key"));
}

#[test]
fn limits_are_checked() {
    for (text, setting) in [
        (
            "[agent]\nmax_concurrent_runs = 0",
            "agent.max_concurrent_runs",
        ),
        ("[agent]\nlease_ttl = \"0s\"", "agent.lease_ttl"),
        (
            "[agent]\noutput_chunk_bytes = 0",
            "agent.output_chunk_bytes",
        ),
        (
            "[agent]\noutput_chunk_bytes = 1048576",
            "agent.output_chunk_bytes",
        ),
        ("[agent]\nname = \" \"", "agent.name"),
        ("[store]\nreplicas = 0", "store.replicas"),
        ("[store]\nreplicas = 7", "store.replicas"),
        (
            "[store]\nduplicate_window = \"0s\"",
            "store.duplicate_window",
        ),
        ("[databases.App]\nurl = \"postgres://x\"", "databases.App"),
    ] {
        let error = load_err(text, &[]);
        assert_eq!(error.setting(), Some(setting), "{error}");
    }
}

#[test]
fn strings_of_the_wrong_shape_are_not_repeated() {
    for text in [
        "[databases]\napp = \"postgres://u:db-pass-456@h/db\"",
        "[escalation]\n[[escalation.levels]]\nname = \"a\"\nwebhooks = \"https://h/hook-secret-000\"",
        "[nats]\npassword = [\"nats-pass-123\"]",
        "[nats]\npassword = 123456",
    ] {
        let error = load_err(text, &[]);
        let shown = error.to_string();
        for secret in SECRETS.iter().chain(&["123456"]) {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
    assert_eq!(
        without_quoted_strings(r#"invalid type: string "a\"b", expected x"#),
        "invalid type: a string, expected x"
    );
}

#[test]
fn the_nats_url_prints_without_credentials() {
    assert_eq!(without_userinfo("nats://u:p@h:4222"), "nats://***@h:4222");
    assert_eq!(without_userinfo("nats://h:4222"), "nats://h:4222");
    assert_eq!(
        database_env_var("read-replica"),
        "ROLLBACK_DATABASE_READ_REPLICA_URL"
    );
}

#[test]
fn inline_text_loads_without_a_file() {
    let config = AgentConfig::from_toml_str("[agent]\nname = \"x\"", &no_env()).unwrap();
    assert_eq!(config.agent.name, "x");
    let error = AgentConfig::from_toml_str("[agent]\nnom = \"x\"", &no_env()).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("configuration (no file), line 2"),
        "{error}"
    );
}

#[test]
fn the_signing_key_comes_from_the_environment_or_a_file_and_its_own_key_is_trusted() {
    let seed = "11".repeat(32);
    let config = load_text(
        "",
        &[
            ("ROLLBACK_EVENTS_SIGNING_KEY_ID", "agent-b"),
            ("ROLLBACK_EVENTS_SIGNING_KEY", &seed),
        ],
    )
    .unwrap();
    assert!(config.events.has_signing_key());
    let signing = config.events.signing();
    assert_eq!(signing.signer().key_id(), "agent-b");
    assert!(signing.signatures().keys().get("agent-b").is_some());
    assert!(signing.signatures().requires_signatures());
    assert!(
        !format!("{config:?}").contains(&seed),
        "the key never prints"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, format!("{seed}\n")).unwrap();
    let old = rollback_proto::EventSigner::from_seed("agent-a", [2; 32]).unwrap();
    let text = format!(
        "[events]\nsigning_key_id = \"agent-b\"\nsigning_key_file = \"{}\"\n\
         unsigned_through_stream_seq = 40\n[events.trusted_keys]\n\"agent-a\" = \"{}\"\n",
        file.display(),
        old.public_key_hex()
    );
    let config = load_text(&text, &[]).unwrap();
    let policy = config.events.signature_policy();
    assert_eq!(
        policy.keys().key_ids().collect::<Vec<_>>(),
        ["agent-a", "agent-b"]
    );
    assert_eq!(policy.unsigned_through_seq(), 40);
    // Replay needs no secret key: the trusted keys alone.
    assert!(!load_text("", &[]).unwrap().events.has_signing_key());
}

#[test]
fn bad_signing_settings_are_refused_without_quoting_the_key() {
    let seed = "11".repeat(32);
    let err = load_err("", &[("ROLLBACK_EVENTS_SIGNING_KEY", &seed)]);
    assert_eq!(err.setting(), Some("events.signing_key_id"));
    let err = load_err(
        "",
        &[
            ("ROLLBACK_EVENTS_SIGNING_KEY_ID", "a"),
            ("ROLLBACK_EVENTS_SIGNING_KEY", "not-hex-secret"),
        ],
    );
    assert_eq!(err.kind(), ConfigErrorKind::InvalidValue);
    assert!(!err.to_string().contains("not-hex-secret"), "{err}");
    let err = load_err("[events.trusted_keys]\n\"a\" = \"00\"\n", &[]);
    assert_eq!(err.setting(), Some("events.trusted_keys.a"));
    let other = rollback_proto::EventSigner::from_seed("a", [3; 32]).unwrap();
    let err = load_err(
        &format!(
            "[events.trusted_keys]\n\"a\" = \"{}\"\n",
            other.public_key_hex()
        ),
        &[
            ("ROLLBACK_EVENTS_SIGNING_KEY_ID", "a"),
            ("ROLLBACK_EVENTS_SIGNING_KEY", &seed),
        ],
    );
    assert_eq!(err.kind(), ConfigErrorKind::Conflict);
}

/// The shipped deployments give the agent a signing key: compose's and Kubernetes' agent.toml
/// with the environment they set (the key from .env or the Secret) load with one.
#[test]
fn the_shipped_deployments_configure_a_signing_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let compose = std::fs::read_to_string(root.join("compose/agent.toml")).unwrap();
    let configmap = std::fs::read_to_string(root.join("k8s/agent-configmap.yaml")).unwrap();
    // The ConfigMap's agent.toml is the block under `agent.toml: |`, indented by four.
    let k8s: String = configmap
        .split_once("agent.toml: |\n")
        .unwrap()
        .1
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let key = "11".repeat(32);
    // What each deployment sets in the environment (compose.yaml; the Secret and the pod).
    let compose_env = [
        ("NATS_USER", "agent"),
        ("NATS_PASSWORD", "p"),
        ("DATABASE_URL", "postgres://u@h/app"),
    ];
    let k8s_env = [
        ("NATS_PASSWORD", "p"),
        ("ROLLBACK_DATABASE_APP_URL", "postgres://u@h/app"),
    ];
    for (name, text, vars) in [
        ("compose", compose, &compose_env[..]),
        ("k8s", k8s, &k8s_env[..]),
    ] {
        let mut vars = vars.to_vec();
        vars.push(("ROLLBACK_EVENTS_SIGNING_KEY", &key));
        let config = load_text(&text, &vars).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(config.events.has_signing_key(), "{name}");
    }
}
