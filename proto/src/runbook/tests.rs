use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

const EVERY_KIND: &str = include_str!("../../tests/fixtures/runbook-every-kind.toml");
const FILE: &str = "deploy/runbooks/x.toml";

fn step_id(id: &str) -> StepId {
    StepId::new(id).unwrap()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A step with every common field at its default.
fn plain(id: &str, kind: StepKind) -> Step {
    Step {
        budget: None,
        maintenance: None,
        rehearse: false,
        id: step_id(id),
        title: id.to_owned(),
        idempotent: false,
        destructive: false,
        timeout: None,
        retry: RetryPolicy::default(),
        approvals: 0,
        dry_run: DryRunBehaviour::Describe,
        kind,
    }
}

fn phase(id: &str, title: &str, auto_advance: bool, steps: Vec<Step>) -> Phase {
    Phase {
        id: PhaseId::new(id).unwrap(),
        title: title.to_owned(),
        auto_advance,
        steps,
    }
}

fn expected_every_kind() -> Runbook {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let scope = TenancyScope::default();
    Runbook { rehearsal: RehearsalSpec { params: map(&[("app_dir", "/srv/staging")]) },
        name: "every-kind".into(),
        description: "One step of every kind".into(),
        params: map(&[
            ("app_dir", "/srv/app"),
            ("archive", "/var/backups/rollback/pre-migration"),
            ("backup_dir", "/var/backups/rollback"),
        ]),
        emergency: Some(EmergencySpec { database: "app".into(), confirm_within: Duration::from_secs(600) }),
        require_rehearsal_within: Some(Duration::from_secs(7 * 24 * 3600)),
        phases: vec![
            phase(
                "pre-rollback",
                "Pre-rollback checklist",
                false,
                vec![
                    Step {
                        title: "Assess the situation".into(),
                        ..plain(
                            "assess",
                            StepKind::Checklist(ChecklistStep {
                                items: strings(&["Document the issues", "Notify stakeholders"]),
                            }),
                        )
                    },
                    Step { approvals: 2, ..plain("go-ahead", StepKind::Approval) },
                    Step {
                        idempotent: true,
                        rehearse: true,
                        maintenance: Some(Maintenance::On),
                        timeout: Some(Duration::from_secs(120)),
                        retry: RetryPolicy {
                            max_attempts: 3,
                            initial_delay: Duration::from_secs(1),
                            max_delay: Duration::from_secs(30),
                            multiplier: 1.5,
                            jitter: false,
                        },
                        ..plain(
                            "maintenance-on",
                            StepKind::Shell(ShellStep {
                                command: "php artisan down --retry=60 && echo $${HOME}".into(),
                                workdir: Some("${app_dir}".into()),
                                env: map(&[("APP_ENV", "production")]),
                            }),
                        )
                    },
                    Step {
                        dry_run: DryRunBehaviour::Execute,
                        ..plain(
                            "health-down",
                            StepKind::Http(HttpStep {
                                method: HttpMethod::Post,
                                url: "https://app.example/health".into(),
                                headers: map(&[("Accept", "application/json")]),
                                body: Some("{}".into()),
                                expect_status: vec![503],
                            }),
                        )
                    },
                ],
            ),
            phase(
                "database-rollback",
                "database-rollback",
                true,
                vec![
                    plain(
                        "backup",
                        StepKind::PgDump(PgDumpStep {
                            target: "app".into(),
                            output_dir: "${backup_dir}/full".into(),
                            schemas: Some(strings(&["public"])),
                            format: DumpFormat::Custom,
                            jobs: 1,
                        }),
                    ),
                    plain(
                        "plan",
                        StepKind::Plan(TenancyStep {
                            target: "app".into(),
                            scope: scope.clone(),
                            tables: Some(strings(&["users", "orders"])),
                        }),
                    ),
                    plain(
                        "consolidate",
                        StepKind::Consolidate(ConsolidateStep {
                            target: "app".into(),
                            scope: TenancyScope {
                                schema_pattern: "^t_([0-9]+)$".into(),
                                tenants_table: "public.tenants".into(),
                                tenants: None,
                                exclude_tenants: vec![7, 9],
                                on_blocked: OnBlocked::Skip,
                            },
                            concurrency: 8,
                            ids: IdStrategy::Keep,
                            fk_checks: FkChecks::Auto,
                            prove: true,
                        }),
                    ),
                    plain(
                        "verify",
                        StepKind::Verify(TenancyStep { target: "app".into(), scope: scope.clone(), tables: None }),
                    ),
                    Step {
                        destructive: true,
                        approvals: 2,
                        ..plain(
                            "drop",
                            StepKind::DropSchemas(DropSchemasStep {
                                target: "app".into(),
                                scope,
                                archive_dir: "${backup_dir}/schemas".into(),
                            }),
                        )
                    },
                    plain(
                        "sequences",
                        StepKind::Sql(SqlStep { target: "app".into(), statements: strings(&["SELECT 1", "SELECT 2"]) }),
                    ),
                    Step {
                        timeout: Some(Duration::from_secs(300)),
                        ..plain(
                            "db-ready",
                            StepKind::Wait(WaitStep {
                                condition: WaitCondition::Sql(WaitSql {
                                    target: "app".into(),
                                    query: "SELECT count(*) = 0 FROM pg_stat_activity WHERE wait_event = 'Lock'".into(),
                                }),
                                interval: Duration::from_secs(5),
                            }),
                        )
                    },
                ],
            ),
            phase(
                "emergency",
                "emergency",
                false,
                vec![
                    plain(
                        "export",
                        StepKind::ExportDelta(ExportDeltaStep {
                            target: "app".into(),
                            scope: TenancyScope::default(),
                            baseline: None,
                            baseline_archive: Some("${archive}".into()),
                            max_age: Some(Duration::from_secs(86_400)),
                            output_dir: "${backup_dir}/delta".into(),
                        }),
                    ),
                    Step {
                        destructive: true,
                        approvals: 1,
                        ..plain(
                            "restore",
                            StepKind::PgRestore(PgRestoreStep {
                                target: "app".into(),
                                archive: "${archive}".into(),
                                jobs: 4,
                                max_age: Some(Duration::from_secs(86_400)),
                                in_place: true,
                                new_database: None,
                            }),
                        )
                    },
                    plain(
                        "import",
                        StepKind::ImportDelta(ImportDeltaStep {
                            target: "app".into(),
                            file: Some("${backup_dir}/delta/delta.jsonl.gz".into()),
                            concurrency: 2,
                            check_only: false,
                        }),
                    ),
                    Step {
                        timeout: Some(Duration::from_secs(60)),
                        ..plain(
                            "app-up",
                            StepKind::Wait(WaitStep {
                                condition: WaitCondition::Http(WaitHttp {
                                    url: "https://app.example/health".into(),
                                    expect_status: vec![200, 204],
                                }),
                                interval: Duration::from_secs(2),
                            }),
                        )
                    },
                ],
            ),
        ],
    }
}

#[test]
fn a_runbook_with_every_kind_parses_to_the_expected_model() {
    let parsed = Runbook::parse("every-kind.toml", EVERY_KIND).unwrap();
    let expected = expected_every_kind();
    for (got, want) in parsed.steps().zip(expected.steps()) {
        assert_eq!(got, want, "step `{}`", want.1.id);
    }
    assert_eq!(parsed, expected);
    let kinds: Vec<_> = parsed.steps().map(|(_, step)| step.kind.name()).collect();
    let mut every: Vec<_> = StepKind::NAMES.to_vec();
    every.sort_unstable();
    let mut seen = kinds.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, every, "the fixture has one step of every kind");
}

#[test]
fn human_kinds_are_checklist_and_approval() {
    let parsed = Runbook::parse("every-kind.toml", EVERY_KIND).unwrap();
    let human: Vec<_> = parsed
        .steps()
        .filter(|(_, s)| s.kind.is_human())
        .map(|(_, s)| s.id.as_str())
        .collect();
    assert_eq!(human, ["assess", "go-ahead"]);
}

#[test]
fn the_model_serializes_to_json_the_way_it_is_written() {
    let parsed = Runbook::parse("every-kind.toml", EVERY_KIND).unwrap();
    let json = serde_json::to_value(&parsed).unwrap();
    let shell = &json["phases"][0]["steps"][2];
    assert_eq!(shell["kind"], "shell");
    assert_eq!(
        shell["command"],
        "php artisan down --retry=60 && echo $${HOME}"
    );
    assert_eq!(shell["timeout"], "2m");
    assert_eq!(shell["retry"]["max_delay"], "30s");
    assert_eq!(json["phases"][0]["steps"][1]["kind"], "approval");
    assert_eq!(
        json["phases"][2]["steps"][3]["http"]["url"],
        "https://app.example/health"
    );
    assert_eq!(
        json["phases"][1]["steps"][2]["schema_pattern"],
        "^t_([0-9]+)$"
    );
}

#[test]
fn steps_and_phases_are_found_by_id() {
    let parsed = Runbook::parse("every-kind.toml", EVERY_KIND).unwrap();
    let (p, s, step) = parsed.step(&step_id("drop")).unwrap();
    assert_eq!((p, s, step.kind.name()), (1, 4, "drop_schemas"));
    assert_eq!(
        parsed.step(&step_id("assess")).map(|(p, s, _)| (p, s)),
        Some((0, 0))
    );
    assert!(parsed.step(&step_id("nope")).is_none());
    assert_eq!(
        parsed.phase_index(&PhaseId::new("emergency").unwrap()),
        Some(2)
    );
    assert_eq!(parsed.phase_index(&PhaseId::new("nope").unwrap()), None);
}

#[test]
fn params_expand_from_overrides_then_defaults() {
    let parsed = Runbook::parse("every-kind.toml", EVERY_KIND).unwrap();
    let none = BTreeMap::new();
    assert_eq!(
        parsed.expand("${backup_dir}/full", &none).unwrap(),
        "/var/backups/rollback/full"
    );
    let overrides = map(&[("backup_dir", "/mnt/b")]);
    assert_eq!(
        parsed
            .expand("${backup_dir}/x in ${app_dir}", &overrides)
            .unwrap(),
        "/mnt/b/x in /srv/app"
    );
    assert_eq!(
        parsed.expand("echo $${HOME}", &none).unwrap(),
        "echo ${HOME}"
    );
    assert_eq!(
        parsed.expand("${nope}", &none),
        Err(ExpandError::UnknownParam {
            name: "nope".into()
        })
    );
}

#[test]
fn titles_default_to_ids_and_defaults_fill_the_rest() {
    let src = r#"
name = "small"
[[phases]]
id = "only"
[[phases.steps]]
id = "dump"
kind = "pg_dump"
target = "app"
output_dir = "/b"
[[phases.steps]]
id = "poll"
kind = "wait"
http = { url = "http://localhost/health" }
timeout = "1m"
"#;
    let parsed = Runbook::parse("small.toml", src).unwrap();
    assert_eq!(parsed.description, "");
    assert!(parsed.params.is_empty() && parsed.emergency.is_none());
    assert_eq!(parsed.phases[0].title, "only");
    let dump = &parsed.phases[0].steps[0];
    assert_eq!(dump.title, "dump");
    assert_eq!(dump.retry, RetryPolicy::default());
    let StepKind::PgDump(dump) = &dump.kind else {
        panic!("not a pg_dump")
    };
    assert_eq!(
        (dump.format, dump.jobs, dump.schemas.as_ref()),
        (DumpFormat::Directory, 2, None)
    );
    let StepKind::Wait(wait) = &parsed.phases[0].steps[1].kind else {
        panic!("not a wait")
    };
    assert_eq!(wait.interval, Duration::from_secs(5));
}

#[test]
fn the_source_hash_is_the_sha256_of_the_text() {
    assert_eq!(
        source_hash(""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_ne!(
        source_hash(EVERY_KIND),
        source_hash(&format!("{EVERY_KIND} "))
    );
}

#[test]
fn retry_delays_grow_and_stop_at_the_cap_and_the_last_attempt() {
    let retry = RetryPolicy {
        max_attempts: 5,
        max_delay: Duration::from_secs(5),
        ..RetryPolicy::default()
    };
    let delays: Vec<_> = (0..=5).map(|attempt| retry.delay_after(attempt)).collect();
    let secs = |s| Some(Duration::from_secs(s));
    assert_eq!(delays, [None, secs(1), secs(2), secs(4), secs(5), None]);
    assert_eq!(RetryPolicy::default().delay_after(1), None);
}

// ---- errors: each names the file, the phase and the step ----

/// A runbook with one phase, `database-rollback`, holding `steps` after a valid first step.
fn with_steps(steps: &str) -> String {
    format!(
        r#"name = "x"
[params]
backup_dir = "/b"

[[phases]]
id = "database-rollback"

[[phases.steps]]
id = "ok"
kind = "approval"
approvals = 1

{steps}"#
    )
}

fn error(source: &str) -> RunbookError {
    match Runbook::parse(FILE, source) {
        Ok(runbook) => panic!("parsed, but should not have: {runbook:#?}"),
        Err(e) => e,
    }
}

/// Parses, expecting an error whose message starts with `prefix` and contains every `part`.
fn assert_error(source: &str, prefix: &str, parts: &[&str]) -> RunbookError {
    let e = error(source);
    let text = e.to_string();
    assert!(
        text.starts_with(prefix),
        "`{text}` does not start with `{prefix}`"
    );
    for part in parts {
        assert!(text.contains(part), "`{text}` does not contain `{part}`");
    }
    e
}

/// Errors located in the text start with the file, then its line and column.
const AT_LINE: &str = "deploy/runbooks/x.toml:";

#[test]
fn a_syntax_error_has_its_line_and_column() {
    let e = assert_error(
        "name = \"x\"\n[[phases]\n",
        FILE,
        &["TOML syntax error", "`]`"],
    );
    assert!(matches!(e.kind, RunbookErrorKind::Syntax { .. }));
    assert_eq!(
        e.at,
        Some(TextPosition {
            line: 2,
            column: 10
        })
    );
    assert_eq!((e.phase, e.step), (None, None));
}

#[test]
fn a_destructive_step_without_approval_is_refused() {
    let e = assert_error(
        &with_steps(
            "[[phases.steps]]\nid = \"drop\"\nkind = \"drop_schemas\"\ntarget = \"app\"\narchive_dir = \"/a\"\ndestructive = true\n",
        ),
        AT_LINE,
        &[
            "phase `database-rollback`, step `drop`: a destructive step needs at least one approval (set approvals = 1 or more)",
        ],
    );
    assert_eq!(e.kind, RunbookErrorKind::DestructiveWithoutApproval);
    assert_eq!(
        (e.phase.as_deref(), e.step.as_deref()),
        (Some("database-rollback"), Some("drop"))
    );
    assert_eq!(
        e.at.map(|at| at.line),
        Some(18),
        "points at `destructive = true`"
    );
}

#[test]
fn destroying_steps_must_be_marked_destructive() {
    let e = assert_error(
        &with_steps(
            "[[phases.steps]]\nid = \"drop\"\nkind = \"drop_schemas\"\ntarget = \"app\"\narchive_dir = \"/a\"\n",
        ),
        AT_LINE,
        &[
            "phase `database-rollback`, step `drop`: a `drop_schemas` step destroys data",
            "destructive = true",
        ],
    );
    assert!(matches!(
        e.kind,
        RunbookErrorKind::NotMarkedDestructive { .. }
    ));
    let e = error(&with_steps(
        "[[phases.steps]]\nid = \"restore\"\nkind = \"pg_restore\"\ntarget = \"app\"\narchive = \"/a\"\nin_place = true\n",
    ));
    assert!(
        e.to_string()
            .contains("step `restore`: a `pg_restore` with in_place = true destroys data"),
        "{e}"
    );
    let e = error(&with_steps(
        "[[phases.steps]]\nid = \"restore\"\nkind = \"pg_restore\"\ntarget = \"app\"\narchive = \"/a\"\n",
    ));
    assert!(
        e.to_string()
            .contains("a `pg_restore` (it swaps the target database out) destroys data"),
        "{e}"
    );
    assert!(Runbook::parse(FILE, &with_steps("[[phases.steps]]\nid = \"restore\"\nkind = \"pg_restore\"\ntarget = \"app\"\narchive = \"/a\"\ndestructive = true\napprovals = 1\n")).is_ok());
}

#[test]
fn an_approval_step_needs_approvers() {
    let e = assert_error(
        &with_steps("[[phases.steps]]\nid = \"sign-off\"\nkind = \"approval\"\n"),
        AT_LINE,
        &[
            "phase `database-rollback`, step `sign-off`: an approval step needs at least one approver",
        ],
    );
    assert_eq!(e.kind, RunbookErrorKind::ZeroApprovers);
}

#[test]
fn an_unknown_kind_lists_the_kinds() {
    let e = assert_error(
        &with_steps("[[phases.steps]]\nid = \"down\"\nkind = \"shel\"\ncommand = \"x\"\n"),
        AT_LINE,
        &[
            "step `down`: unknown step kind `shel`",
            "checklist, approval, shell, http",
        ],
    );
    assert!(
        matches!(&e.kind, RunbookErrorKind::UnknownKind { kind, expected } if kind == "shel" && expected.len() == 14)
    );
    assert_eq!(e.at.map(|at| at.line), Some(15));
}

#[test]
fn missing_and_unknown_fields_are_named() {
    let e = assert_error(
        &with_steps(
            "[[phases.steps]]\nid = \"down\"\nkind = \"shell\"\ncomand = \"php artisan down\"\n",
        ),
        AT_LINE,
        &[
            "phase `database-rollback`, step `down`: unknown field `comand`, expected one of `command`",
            "or one of `id`, `title`",
        ],
    );
    assert!(matches!(&e.kind, RunbookErrorKind::UnknownField { field, .. } if field == "comand"));
    assert_eq!(e.at.map(|at| at.line), Some(16));

    let e = assert_error(
        &with_steps("[[phases.steps]]\nid = \"down\"\nkind = \"shell\"\n"),
        AT_LINE,
        &["step `down`: missing field `command`"],
    );
    assert_eq!(
        e.kind,
        RunbookErrorKind::MissingField {
            field: "command".into()
        }
    );

    let e = error(&with_steps("[[phases.steps]]\nid = \"down\"\n"));
    assert_eq!(
        e.kind,
        RunbookErrorKind::MissingField {
            field: "kind".into()
        }
    );

    let e = assert_error(
        &with_steps(
            "[[phases.steps]]\nid = \"down\"\nkind = \"shell\"\ncommand = \"x\"\nretry = { max_attempts = 2, jiter = true }\nidempotent = true\n",
        ),
        AT_LINE,
        &["step `down`: unknown field `retry.jiter`"],
    );
    assert!(
        matches!(&e.kind, RunbookErrorKind::UnknownField { field, .. } if field == "retry.jiter")
    );

    let e = assert_error(
        &with_steps(
            "[[phases.steps]]\nid = \"poll\"\nkind = \"wait\"\ntimeout = \"1m\"\nhttp = { expect_status = [200] }\n",
        ),
        AT_LINE,
        &["step `poll`: missing field `http.url`"],
    );
    assert!(matches!(e.kind, RunbookErrorKind::MissingField { .. }));
}

#[test]
fn fields_of_the_wrong_type_are_named() {
    let e = assert_error(
        &with_steps("[[phases.steps]]\nid = \"down\"\nkind = \"shell\"\ncommand = 3\n"),
        AT_LINE,
        &["step `down`: `command`: invalid type: integer `3`, expected a string"],
    );
    assert!(
        matches!(&e.kind, RunbookErrorKind::InvalidField { field: Some(f), .. } if f == "command")
    );
    let e = error(&with_steps(
        "[[phases.steps]]\nid = \"down\"\nkind = \"shell\"\ncommand = \"x\"\ndry_run = \"run\"\n",
    ));
    assert!(
        e.to_string()
            .contains("step `down`: `dry_run`: unknown variant `run`"),
        "{e}"
    );
    let e = error(&with_steps(
        "[[phases.steps]]\nid = \"list\"\nkind = \"checklist\"\nitems = [\"a\", 2]\n",
    ));
    assert!(
        e.to_string()
            .contains("step `list`: `items[1]`: invalid type"),
        "{e}"
    );
}

#[test]
fn steps_and_phases_without_a_valid_id_are_numbered() {
    let e = assert_error(
        &with_steps("[[phases.steps]]\nkind = \"shell\"\ncommand = \"x\"\n"),
        AT_LINE,
        &["phase `database-rollback`, step #2: missing field `id`"],
    );
    assert_eq!(e.step.as_deref(), Some("#2"));
    let e = assert_error(
        &with_steps("[[phases.steps]]\nid = \"Bad Id\"\nkind = \"shell\"\ncommand = \"x\"\n"),
        AT_LINE,
        &["step #2: `id`: `Bad Id` is not a valid id"],
    );
    assert!(matches!(e.kind, RunbookErrorKind::InvalidField { .. }));
    let src = format!("{}\n[[phases]]\ntitle = \"no id\"\n", with_steps(""));
    assert_error(&src, AT_LINE, &["phase #2: missing field `id`"]);
}

#[test]
fn duplicate_ids_are_refused() {
    let e = assert_error(
        &format!(
            "{}\n[[phases]]\nid = \"later\"\n[[phases.steps]]\nid = \"ok\"\nkind = \"approval\"\napprovals = 1\n",
            with_steps("")
        ),
        AT_LINE,
        &["phase `later`, step `ok`: step id `ok` is already used in phase `database-rollback`"],
    );
    assert!(matches!(e.kind, RunbookErrorKind::DuplicateStepId { .. }));
    let e = assert_error(
        &format!(
            "{}\n[[phases]]\nid = \"database-rollback\"\n[[phases.steps]]\nid = \"b\"\nkind = \"approval\"\napprovals = 1\n",
            with_steps("")
        ),
        AT_LINE,
        &["phase `database-rollback`: phase id `database-rollback` is already used by phase #1"],
    );
    assert!(matches!(
        e.kind,
        RunbookErrorKind::DuplicatePhaseId { first: 1, .. }
    ));
    assert_eq!(e.step, None);
}

#[test]
fn undeclared_params_are_refused_where_they_are_used() {
    let e = assert_error(
        &with_steps(
            "[[phases.steps]]\nid = \"down\"\nkind = \"shell\"\ncommand = \"ls\"\nworkdir = \"${app_dir}\"\n",
        ),
        AT_LINE,
        &[
            "step `down`: `workdir` uses `${app_dir}`, which is not declared in [params] (declared: backup_dir)",
        ],
    );
    assert!(
        matches!(&e.kind, RunbookErrorKind::UnknownParam { name, field, .. } if name == "app_dir" && field == "workdir")
    );
    let e = error(&with_steps(
        "[[phases.steps]]\nid = \"down\"\nkind = \"shell\"\ncommand = \"ls\"\nenv = { DIR = \"${nope}\" }\n",
    ));
    assert!(
        e.to_string()
            .contains("step `down`: `env.DIR` uses `${nope}`"),
        "{e}"
    );
    let e = error(&with_steps(
        "[[phases.steps]]\nid = \"down\"\nkind = \"shell\"\ncommand = \"echo ${backup_dir\"\n",
    ));
    assert!(
        e.to_string()
            .contains("step `down`: `command`: has a `${` with no parameter name"),
        "{e}"
    );
    // Escaped and declared references are fine.
    let ok = with_steps(
        "[[phases.steps]]\nid = \"down\"\nkind = \"shell\"\ncommand = \"echo $${HOME} ${backup_dir}\"\n",
    );
    assert!(Runbook::parse(FILE, &ok).is_ok());
}

#[test]
fn bad_durations_are_refused_with_their_field() {
    let e = assert_error(
        &with_steps(
            "[[phases.steps]]\nid = \"down\"\nkind = \"shell\"\ncommand = \"x\"\ntimeout = \"10x\"\n",
        ),
        AT_LINE,
        &["step `down`: `timeout`: bad duration `10x`: unknown unit `x`"],
    );
    assert!(
        matches!(&e.kind, RunbookErrorKind::BadDuration { field: Some(f), .. } if f == "timeout")
    );
    let e = error(&with_steps(
        "[[phases.steps]]\nid = \"down\"\nkind = \"shell\"\ncommand = \"x\"\nretry = { initial_delay = \"1.5s\" }\n",
    ));
    assert!(
        e.to_string()
            .contains("step `down`: `retry.initial_delay`: bad duration `1.5s`"),
        "{e}"
    );
    let e = error(&with_steps(
        "[[phases.steps]]\nid = \"down\"\nkind = \"shell\"\ncommand = \"x\"\ntimeout = \"0s\"\n",
    ));
    assert!(
        e.to_string()
            .contains("step `down`: `timeout`: must be longer than 0s"),
        "{e}"
    );
    let e = assert_error(
        "name = \"x\"\n[emergency]\ndatabase = \"app\"\nconfirm_within = \"soon\"\n",
        "deploy/runbooks/x.toml:4:18: `emergency.confirm_within`: bad duration `soon`",
        &[],
    );
    assert_eq!((e.phase, e.step), (None, None));
}

#[test]
fn a_runbook_needs_phases_and_phases_need_steps() {
    let e = assert_error("name = \"x\"\n", FILE, &["the runbook has no phases"]);
    assert_eq!(e.kind, RunbookErrorKind::NoPhases);
    let e = assert_error(
        "name = \"x\"\n[[phases]]\nid = \"empty\"\n",
        AT_LINE,
        &["phase `empty`: the phase has no steps"],
    );
    assert_eq!(e.kind, RunbookErrorKind::EmptyPhase);
    let e = error("name = \"x\"\n[phases]\nid = \"p\"\n");
    assert!(
        e.to_string()
            .contains("`phases`: must be a list of tables, each written [[phases]]"),
        "{e}"
    );
    let e = error("description = \"x\"\n[[phases]]\n");
    assert_eq!(
        e.kind,
        RunbookErrorKind::MissingField {
            field: "name".into()
        },
        "{e}"
    );
}

#[test]
fn retry_policies_that_cannot_work_are_refused() {
    let step = |retry: &str, idempotent: bool| {
        with_steps(&format!(
            "[[phases.steps]]\nid = \"down\"\nkind = \"shell\"\ncommand = \"x\"\nidempotent = {idempotent}\nretry = {retry}\n"
        ))
    };
    for (retry, idempotent, reason) in [
        (
            "{ max_attempts = 0 }",
            true,
            "max_attempts must be at least 1",
        ),
        (
            "{ max_attempts = 3, multiplier = 0.5 }",
            true,
            "multiplier must be a number of at least 1",
        ),
        (
            "{ max_attempts = 3, initial_delay = \"2m\" }",
            true,
            "initial_delay is longer than max_delay",
        ),
        (
            "{ max_attempts = 3 }",
            false,
            "not idempotent is never re-run automatically",
        ),
    ] {
        let e = assert_error(
            &step(retry, idempotent),
            AT_LINE,
            &["step `down`: bad retry policy: ", reason],
        );
        assert!(matches!(e.kind, RunbookErrorKind::BadRetry { .. }));
    }
}

#[test]
fn kinds_that_prove_their_own_progress_may_retry_without_saying_idempotent() {
    let rb = with_steps(
        "[[phases.steps]]\nid = \"move\"\nkind = \"consolidate\"\ntarget = \"app\"\nretry = { max_attempts = 3 }\n\
         [[phases.steps]]\nid = \"swap-in\"\nkind = \"pg_restore\"\ntarget = \"app\"\narchive = \"/b/a\"\n\
         destructive = true\napprovals = 1\nretry = { max_attempts = 2 }\n",
    );
    Runbook::parse("t.toml", &rb).unwrap_or_else(|e| panic!("{e}"));
    let over = with_steps(
        "[[phases.steps]]\nid = \"over\"\nkind = \"pg_restore\"\ntarget = \"app\"\narchive = \"/b/a\"\n\
         in_place = true\ndestructive = true\napprovals = 1\nretry = { max_attempts = 2 }\n",
    );
    let e = Runbook::parse("t.toml", &over).unwrap_err();
    assert!(
        e.to_string()
            .contains("a step that is not idempotent is never re-run automatically"),
        "{e}"
    );
}

#[test]
fn kind_rules_are_checked() {
    for (step, message) in [
        (
            "kind = \"checklist\"\nitems = []",
            "`items`: must not be an empty list",
        ),
        (
            "kind = \"shell\"\ncommand = \" \"",
            "`command`: must not be empty",
        ),
        (
            "kind = \"sql\"\ntarget = \"app\"\nstatements = []",
            "`statements`: must not be an empty list",
        ),
        (
            "kind = \"wait\"\nhttp = { url = \"http://x\" }",
            "missing field `timeout`",
        ),
        (
            "kind = \"wait\"\ntimeout = \"1m\"",
            "a `wait` step needs exactly one of `http = { url = … }` or `sql",
        ),
        (
            "kind = \"wait\"\ntimeout = \"1m\"\nhttp = { url = \"http://x\" }\nsql = { target = \"a\", query = \"q\" }",
            "a `wait` step needs exactly one of `http = { url = … }` or `sql",
        ),
        (
            "kind = \"wait\"\ntimeout = \"1s\"\ninterval = \"5s\"\nhttp = { url = \"http://x\" }",
            "`interval`: is longer than",
        ),
        (
            "kind = \"http\"\nurl = \"http://x\"\nexpect_status = [42]",
            "42 is not an HTTP status",
        ),
        (
            "kind = \"pg_dump\"\ntarget = \"app\"\noutput_dir = \"/b\"\nformat = \"custom\"\njobs = 4",
            "parallel jobs only with format",
        ),
        (
            "kind = \"plan\"\ntarget = \"app\"\nschema_pattern = \"tenant_%\"",
            "must be anchored",
        ),
        (
            "kind = \"consolidate\"\ntarget = \"app\"\nconcurrency = 0",
            "`concurrency`: must be at least 1",
        ),
        (
            "kind = \"consolidate\"\ntarget = \"app\"\nfoo = 1",
            "unknown field `foo`",
        ),
        (
            "kind = \"export_delta\"\ntarget = \"app\"\nbaseline = \"app\"\noutput_dir = \"/d\"",
            "must name the restored",
        ),
        (
            "kind = \"export_delta\"\ntarget = \"app\"\noutput_dir = \"/d\"",
            "give exactly one of `baseline`",
        ),
        (
            "kind = \"export_delta\"\ntarget = \"app\"\nbaseline = \"b\"\nbaseline_archive = \"/a\"\noutput_dir = \"/d\"",
            "give exactly one of `baseline`",
        ),
        (
            "kind = \"import_delta\"\ntarget = \"app\"\nconcurrency = 0",
            "`concurrency`: must be at least 1",
        ),
        (
            "kind = \"pg_restore\"\ntarget = \"app\"\narchive = \"/a\"\nin_place = true\nnew_database = \"n\"\ndestructive = true\napprovals = 1",
            "`new_database`: a restore in place",
        ),
        (
            "kind = \"approval\"\napprovals = 1\nitems = [\"x\"]",
            "unknown field `items`",
        ),
    ] {
        let source = with_steps(&format!("[[phases.steps]]\nid = \"s\"\n{step}\n"));
        assert_error(
            &source,
            AT_LINE,
            &["phase `database-rollback`, step `s`: ", message],
        );
    }
}

#[test]
fn top_level_fields_are_checked() {
    let e = error("name = \"x\"\ndescripton = \"typo\"\n[[phases]]\n");
    assert!(
        e.to_string()
            .contains("unknown field `descripton`, expected one of `name`, `description`"),
        "{e}"
    );
    let e = error("name = \"Tenancy Rollback\"\n");
    assert!(
        e.to_string().starts_with(
            "deploy/runbooks/x.toml:1:8: `name`: `Tenancy Rollback` is not a valid id"
        ),
        "{e}"
    );
    let e = error("name = \"x\"\n[params]\n\"app-dir\" = \"/a\"\n");
    assert!(
        e.to_string()
            .contains("`params`: `app-dir` is not a parameter name"),
        "{e}"
    );
    let e = error("name = \"x\"\n[params]\ndir = 1\n");
    assert!(
        e.to_string()
            .contains("`params.dir`: invalid type: integer `1`, expected a string"),
        "{e}"
    );
    let e = error(
        "name = \"x\"\n[[phases]]\nid = \"p\"\nauto_advance = \"yes\"\n[[phases.steps]]\nid = \"a\"\nkind = \"approval\"\napprovals = 1\n",
    );
    assert!(
        e.to_string().contains(
            "phase `p`: `auto_advance`: invalid type: string \"yes\", expected a boolean"
        ),
        "{e}"
    );
}
