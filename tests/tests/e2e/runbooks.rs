//! The runbooks the product ships, in `deploy/runbooks/`: each parses, and the tenancy rollback
//! runs end to end as a dry run through a real agent against a real demo database, changing
//! nothing while every executable step says what it would do.

use super::harness::user_schemas;
use std::collections::BTreeMap;
use std::time::Duration;

use rollback_agent::demo::{self, DemoSpec};
use rollback_agent::tenancy::sql;
use rollback_proto::runbook::{DryRunBehaviour, Runbook, StepKind};
use rollback_proto::state::StepStatus;
use rollback_proto::{Command, Event, OutputStream, RunId, RunState, RunStatus};
use rollback_tests::Postgres;
use sqlx::{AssertSqlSafe, PgPool};

use super::harness::{DEADLINE, Harness, HttpStub, status_of, step};

const TENANCY_ROLLBACK: &str = include_str!("../../../deploy/runbooks/tenancy-rollback.toml");
const EMERGENCY_RESTORE: &str = include_str!("../../../deploy/runbooks/emergency-restore.toml");

/// `check-runbook` answers with the exit statuses every tool shares (and `--help` lists): 0 yes,
/// 3 ran and said no, 1 could not do its work, 2 a command line it does not understand.
#[test]
fn check_runbook_tells_no_from_could_not_and_from_a_typo() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    let text = "name = \"broken\"\n[[phases]]\nid = \"p\"\n[[phases.steps]]\nid = \"s\"\nkind = \"nope\"\n";
    std::fs::write(&broken, text).unwrap();
    let agent = rollback_tests::agent_binary().unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        let output = std::process::Command::new(&agent)
            .arg("check-runbook")
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code(), text)
    };
    let shipped = rollback_tests::workspace_root().join("deploy/runbooks/tenancy-rollback.toml");
    let (status, text) = run(&[shipped.as_os_str()]);
    assert_eq!(status, Some(0), "{text}");
    let (status, text) = run(&[shipped.as_os_str(), broken.as_os_str()]);
    assert_eq!(status, Some(3), "a runbook with a problem: {text}");
    assert!(text.contains("broken.toml"), "{text}");
    let missing = dir.path().join("missing.toml");
    let (status, text) = run(&[missing.as_os_str()]);
    assert_eq!(status, Some(1), "a file that cannot be read: {text}");
    let (status, text) = run(&["--no-such-flag".as_ref()]);
    assert_eq!(status, Some(2), "a typo: {text}");

    let help = std::process::Command::new(&agent)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Exit status: 0") && help.contains("3 ran and said no"),
        "{help}"
    );
}

#[test]
fn the_shipped_tenancy_rollback_runbook_parses() {
    let runbook = Runbook::parse("deploy/runbooks/tenancy-rollback.toml", TENANCY_ROLLBACK)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runbook.name, "tenancy-rollback");
    let phases: Vec<&str> = runbook.phases.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(
        phases,
        [
            "pre-rollback",
            "application-rollback",
            "database-rollback",
            "configuration-rollback",
            "verification",
            "post-rollback"
        ]
    );
    for param in [
        "app_dir",
        "artisan",
        "stable_commit",
        "backup_dir",
        "env_backup",
        "health_url",
    ] {
        assert!(runbook.params.contains_key(param), "param {param}");
    }
    assert_eq!(runbook.params["artisan"], "php artisan");
    for phase in &runbook.phases {
        for s in &phase.steps {
            if s.destructive {
                assert!(s.approvals >= 1, "{} is destructive", s.id);
            }
            if s.dry_run == DryRunBehaviour::Execute {
                assert!(
                    matches!(
                        s.kind,
                        StepKind::Plan(_) | StepKind::Wait(_) | StepKind::Verify(_)
                    ),
                    "{} executes in a dry run but is not read-only",
                    s.id
                );
            }
        }
    }
    let kind_of = |id: &str| &runbook.step(&step(id)).unwrap().2.kind;
    assert!(matches!(kind_of("backup"), StepKind::PgDump(_)));
    assert!(matches!(kind_of("drop-schemas"), StepKind::DropSchemas(_)));
    assert!(matches!(kind_of("go-ahead"), StepKind::Approval));
    assert_eq!(runbook.step(&step("go-ahead")).unwrap().2.approvals, 2);
}

/// (schema, table) -> rows, for every table of the given schemas.
async fn row_counts(pool: &PgPool, schemas: &[String]) -> BTreeMap<(String, String), i64> {
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
        let q = format!("SELECT count(*) FROM {}", sql::table(&schema, &table));
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(q))
            .fetch_one(pool)
            .await
            .unwrap();
        out.insert((schema, table), n);
    }
    out
}

/// Drives a run to its end as people would: `next` for each phase that waits for it, every
/// checklist item ticked, approvals by people other than the one who started the phase, an
/// emergency confirmed by a second person.
async fn drive(h: &Harness, run: RunId) -> RunState {
    let deadline = tokio::time::Instant::now() + DEADLINE * 3;
    loop {
        let state = h.store.load(run).await.unwrap().state.unwrap();
        if state.is_finished() {
            return state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run did not finish:\n{}",
            rollback_proto::render::status_text(&state)
        );
        if state.awaiting_emergency_confirmation() {
            h.accepted("erin", &["responders"], Command::ConfirmEmergency { run })
                .await;
            continue;
        }
        let Some(p) = state.active_phase else {
            // An auto-advancing phase is started by the agent itself; a `next` racing it would
            // be refused as "still under way", rightly.
            let automatic = state
                .next_phase()
                .is_some_and(|n| state.runbook.phases[n].auto_advance);
            if !automatic {
                h.accepted("alice", &["oncall"], Command::Next { run })
                    .await;
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        let current = state.runbook.phases[p]
            .steps
            .iter()
            .zip(&state.phases[p].steps)
            .find(|(_, st)| !st.status.is_terminal());
        if let Some((def, st)) = current {
            match &st.status {
                StepStatus::Failed { .. } | StepStatus::InDoubt { .. } => panic!(
                    "step {} stopped: {:?}\n{:#?}",
                    def.id,
                    st.status,
                    h.events(run).await
                ),
                StepStatus::Pending => {
                    if let StepKind::Checklist(list) = &def.kind {
                        for item in 1..=list.items.len() as u32 {
                            if !st.checked.contains(&item) {
                                h.accepted(
                                    "alice",
                                    &["oncall"],
                                    Command::Check {
                                        run,
                                        step: def.id.clone(),
                                        item,
                                    },
                                )
                                .await;
                            }
                        }
                        continue;
                    }
                    let given = st.approvals.len();
                    let needed = def.approvals as usize;
                    if given < needed {
                        for who in ["bob", "carol"].iter().take(needed).skip(given) {
                            h.accepted(
                                who,
                                &["approvers"],
                                Command::Approve {
                                    run,
                                    step: def.id.clone(),
                                },
                            )
                            .await;
                        }
                        continue;
                    }
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a step's dry run said it would do.
fn dry_run_output(events: &[Event], id: &str) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepOutputRecorded {
                step,
                stream: OutputStream::DryRun,
                text,
                ..
            } if step.as_str() == id => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// A dry run's every step succeeded, and each that would act said what it would do.
fn assert_every_step_succeeded_and_described(state: &RunState, events: &[Event]) {
    for phase in &state.runbook.phases {
        for def in &phase.steps {
            let status = status_of(state, def.id.as_str());
            assert!(
                matches!(status, StepStatus::Succeeded { .. }),
                "{}: {status:?}",
                def.id
            );
            if def.kind.is_human() || def.dry_run == DryRunBehaviour::Execute {
                continue;
            }
            assert!(
                !dry_run_output(events, def.id.as_str()).is_empty(),
                "{} recorded no dry-run description",
                def.id
            );
        }
    }
}

/// A dry run of the shipped runbook, driven as people would: `next` for each phase, every
/// checklist item ticked, approvals by two people other than the one who started the phase.
#[tokio::test]
async fn a_dry_run_of_the_tenancy_rollback_runbook_changes_nothing() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    let summary = demo::generate(
        &pool,
        &DemoSpec {
            tenants: 3,
            rows: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(summary.tenants, [1, 2, 3]);
    let schemas_before = user_schemas(&pool).await;
    let counts_before = row_counts(&pool, &schemas_before).await;

    let h = Harness::new().await;
    h.runbook("tenancy-rollback", TENANCY_ROLLBACK);
    let health = HttpStub::start(|_| 200).await;
    let app_dir = h.path("app");
    let backup_dir = h.path("backups");
    std::fs::create_dir(&app_dir).unwrap();
    let _agent = h
        .agent(
            "agent-a",
            &format!("[databases.app]\nurl = \"{}\"\n", db.url),
        )
        .await;

    let params: BTreeMap<String, String> = [
        ("app_dir", app_dir.display().to_string()),
        ("backup_dir", backup_dir.display().to_string()),
        ("env_backup", h.path("env.original").display().to_string()),
        ("health_url", format!("{}/up", health.url)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let run = h.start_with("tenancy-rollback", true, params).await;

    let state = drive(&h, run).await;
    let events = h.events(run).await;
    assert_eq!(state.status, RunStatus::Completed, "{events:#?}");

    // Every step that would act said what it would do; the read-only ones really ran.
    assert_every_step_succeeded_and_described(&state, &events);
    let described = |id: &str| dry_run_output(&events, id);
    assert!(described("maintenance-on").contains("php artisan down --retry=60"));
    assert!(described("code-revert").contains(&format!("git -C {}", app_dir.display())));
    assert!(described("backup").contains("pg_dump"));
    assert!(described("drop-schemas").contains("DROP SCHEMA \"tenant_3\" RESTRICT;"));
    assert!(
        !described("backup").contains(&db.url),
        "no URL in a description"
    );
    assert!(state.archives.is_empty());
    // The health wait really polled the stub.
    let requests = health.requests();
    assert!(!requests.is_empty(), "the health URL was polled");
    assert!(
        requests
            .iter()
            .all(|r| r.method == "GET" && r.path == "/up")
    );

    // Nothing changed: the same schemas (no bookkeeping either), the same rows, no files.
    assert_eq!(user_schemas(&pool).await, schemas_before);
    for tenant in ["tenant_1", "tenant_2", "tenant_3"] {
        assert!(schemas_before.iter().any(|s| s == tenant), "{tenant}");
    }
    assert_eq!(row_counts(&pool, &schemas_before).await, counts_before);
    assert!(!backup_dir.exists(), "a dry run writes no backup");
    assert_eq!(std::fs::read_dir(&app_dir).unwrap().count(), 0);
}

#[test]
fn the_shipped_emergency_restore_runbook_parses() {
    let runbook = Runbook::parse("deploy/runbooks/emergency-restore.toml", EMERGENCY_RESTORE)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runbook.name, "emergency-restore");
    assert!(runbook.emergency.is_some());
    let kinds: Vec<&str> = runbook
        .phases
        .iter()
        .flat_map(|p| p.steps.iter().map(|s| s.kind.name()))
        .collect();
    assert_eq!(
        kinds,
        [
            "shell",
            "pg_dump",
            "export_delta",
            "pg_restore",
            "import_delta",
            "import_delta",
            "sql",
            "shell",
            "shell",
            "shell",
            "wait"
        ]
    );
}

/// The emergency runbook with its parameters pointed at this test's folders and stub app.
fn emergency_runbook(params: &[(&str, String)]) -> String {
    let mut text = EMERGENCY_RESTORE.to_owned();
    for (name, value) in params {
        let start = text
            .find(&format!("\n{name} = "))
            .expect("a declared parameter")
            + 1;
        let end = start + text[start..].find('\n').expect("one line");
        text.replace_range(start..end, &format!("{name} = {value:?}"));
    }
    text
}

/// The emergency path, for real, through a real agent: a database migrated to schemas with
/// writes since, its pre-migration backup; `/rollback emergency` with the typed name, a second
/// person's confirmation, the restore approved by someone else. Afterwards the database holds
/// the backup plus exactly what the tenant schemas held, checked without the engine.
#[tokio::test]
async fn the_emergency_restore_runbook_restores_and_brings_back_every_row() {
    use rollback_agent::archive::{self, ClientIo, ConnectionParams, DumpRequest, PgPrograms};
    use rollback_agent::demo::history;
    use rollback_proto::runbook::DumpFormat;

    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(
        &pool,
        &DemoSpec {
            tenants: 3,
            rows: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    history::rewind_to_shared(&pool).await.unwrap();
    let h = Harness::new().await;
    let backup = archive::dump(
        &PgPrograms::in_dir(pg.bin_dir()).unwrap(),
        &ConnectionParams::from_url(&db.url).unwrap(),
        &DumpRequest {
            exclude_schemas: &[],
            output_dir: &h.path("premigration"),
            label: "pre-migration",
            schemas: &[],
            format: DumpFormat::Custom,
            jobs: 1,
        },
        &ClientIo::discard(),
    )
    .await
    .unwrap();
    history::migrate_forward(&pool).await.unwrap();
    history::write_after_migration(&pool).await.unwrap();
    let truth = super::delta::schema_truth(&pool).await;
    let tenants = super::delta::tenant_ids(&pool).await;
    pool.close().await;

    let health = HttpStub::start(|_| 200).await;
    let app_dir = h.path("app");
    std::fs::create_dir(&app_dir).unwrap();
    h.runbook(
        "emergency-restore",
        &emergency_runbook(&[
            ("app_dir", app_dir.display().to_string()),
            ("artisan", "echo artisan".into()),
            ("stable_commit", "HEAD".into()),
            ("premigration_archive", backup.path.display().to_string()),
            ("backup_dir", h.path("backups").display().to_string()),
            ("health_url", format!("{}/up", health.url)),
        ]),
    );
    std::process::Command::new("git")
        .args(["init", "-q"])
        .arg(&app_dir)
        .status()
        .unwrap();
    std::process::Command::new("git")
        .args([
            "-c",
            "user.email=t@t",
            "-c",
            "user.name=t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "stable",
        ])
        .current_dir(&app_dir)
        .status()
        .unwrap();
    let _agent = h
        .agent(
            "agent-a",
            &format!(
                "responders = [\"emergency\"]\n\n[databases.app]\nurl = \"{}\"\n",
                db.url
            ),
        )
        .await;
    let reply = h
        .send(
            "dave",
            &["responders"],
            Command::Emergency {
                runbook: "emergency-restore".into(),
                database: "app".into(),
            },
        )
        .await;
    let rollback_proto::CommandReply::Accepted { run: Some(run), .. } = reply else {
        panic!("emergency refused: {reply:?}");
    };
    let state = drive(&h, run).await;
    let events = h.events(run).await;
    assert_eq!(state.status, RunStatus::Completed, "{events:#?}");
    let summary = |id: &str| match status_of(&state, id) {
        StepStatus::Succeeded { summary, .. } => summary,
        other => panic!("{id}: {other:?}"),
    };
    assert!(
        summary("export-delta").contains("inserted"),
        "{}",
        summary("export-delta")
    );
    assert!(
        summary("import-delta").contains("all"),
        "{}",
        summary("import-delta")
    );
    assert!(
        summary("prove-delta").contains("hold exactly"),
        "{}",
        summary("prove-delta")
    );
    // The delta and the current state's backup are recorded with their checksums.
    assert_eq!(state.archives.len(), 2, "{:?}", state.archives);

    let restored = db.pool().await.unwrap();
    assert_eq!(
        super::delta::shared_content(&restored, &tenants).await,
        truth,
        "every row the tenant schemas held, back exactly once with its links"
    );
    // No scratch database is left behind.
    let scratch: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_database WHERE datname LIKE '%delta_baseline%'",
    )
    .fetch_one(&restored)
    .await
    .unwrap();
    assert_eq!(scratch, 0);
}

/// The emergency runbook rehearsed: a dry run started like any other (no typed name, no
/// second person) says what every step would do and changes nothing.
#[tokio::test]
async fn a_dry_run_of_the_emergency_restore_runbook_changes_nothing() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(
        &pool,
        &DemoSpec {
            tenants: 2,
            rows: 5,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let schemas_before = user_schemas(&pool).await;
    let counts_before = row_counts(&pool, &schemas_before).await;
    let h = Harness::new().await;
    h.runbook("emergency-restore", EMERGENCY_RESTORE);
    let health = HttpStub::start(|_| 200).await;
    let _agent = h
        .agent(
            "agent-a",
            &format!("[databases.app]\nurl = \"{}\"\n", db.url),
        )
        .await;
    let params: BTreeMap<String, String> = [
        ("backup_dir", h.path("backups").display().to_string()),
        ("health_url", format!("{}/up", health.url)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let run = h.start_with("emergency-restore", true, params).await;
    let state = drive(&h, run).await;
    let events = h.events(run).await;
    assert_eq!(state.status, RunStatus::Completed, "{events:#?}");
    assert_every_step_succeeded_and_described(&state, &events);
    assert_eq!(user_schemas(&pool).await, schemas_before);
    assert_eq!(row_counts(&pool, &schemas_before).await, counts_before);
    assert!(!h.path("backups").exists(), "a dry run writes nothing");
}
