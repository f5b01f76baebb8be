//! Blocked tenants: with `on_blocked = "skip"` one tenant that cannot move (an extra table, a
//! value that does not cast, a view outside its schema that depends on it) is left exactly as
//! it was, and every other tenant is consolidated, verified and dropped; with `stop` nothing is
//! written. Once fixed, a blocked tenant is moved by a re-run, exactly once.

use std::collections::BTreeSet;

use rollback_agent::archive::Archive;
use rollback_agent::demo::{self, DemoSpec};
use rollback_agent::tenancy::consolidate::{ConsolidateOptions, consolidate};
use rollback_agent::tenancy::drop::{check_drop, drop_schemas};
use rollback_agent::tenancy::plan::{Plan, PlanOptions, plan};
use rollback_agent::tenancy::verify::verify;
use rollback_proto::runbook::{DumpFormat, OnBlocked};
use rollback_tests::{Postgres, agent_binary};
use sqlx::PgPool;

use super::harness::{Fingerprints, fingerprints};

/// Twelve clean tenants and four with something about them: tenant 2 holds a table with no
/// shared counterpart, tenant 3 a text grade that does not cast to `numeric(5,2)`, tenant 5 a
/// text grade that does (not a blocker), and a view in `public` depends on tenant 4's users
/// (a blocker for the drop only).
async fn hostile_database(pool: &PgPool) {
    let spec = DemoSpec {
        tenants: 16,
        rows: 8,
        seed: 61,
        shared_rows: 10,
        ..DemoSpec::default()
    };
    demo::generate(pool, &spec).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE tenant_2.notes (id bigserial PRIMARY KEY, body text);
         INSERT INTO tenant_2.notes (body) VALUES ('kept');
         ALTER TABLE tenant_3.graduates ALTER COLUMN grade TYPE text;
         UPDATE tenant_3.graduates SET grade = 'n/a' WHERE id = (SELECT min(id) FROM tenant_3.graduates);
         ALTER TABLE tenant_5.graduates ALTER COLUMN grade TYPE text;
         UPDATE tenant_5.graduates SET grade = '87.5' WHERE id = (SELECT min(id) FROM tenant_5.graduates);
         CREATE VIEW public.tenant_4_report AS SELECT id FROM tenant_4.users;",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// Every table's rows and every column's type of `schemas`: what "untouched" means.
async fn state_of(
    pool: &PgPool,
    schemas: &[String],
) -> (Fingerprints, Vec<(String, String, String)>) {
    let shape: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name || '.' || column_name, data_type::text
           FROM information_schema.columns WHERE table_schema = ANY($1) ORDER BY 1, 2",
    )
    .bind(schemas)
    .fetch_all(pool)
    .await
    .unwrap();
    (fingerprints(pool, schemas).await, shape)
}

fn skipping() -> PlanOptions {
    let mut opts = PlanOptions::default();
    opts.scope.on_blocked = OnBlocked::Skip;
    opts
}

fn ids(plan: &Plan) -> Vec<i64> {
    plan.tenants.iter().map(|t| t.id).collect()
}

async fn id_map_rows(pool: &PgPool, tenant: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM rollback_engine.id_map WHERE tenant = $1")
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn schemas_left(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'tenant\\_%' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn with_skip_blocked_tenants_stay_untouched_and_the_others_move_verify_and_drop() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    hostile_database(&pool).await;
    let kept: Vec<String> = ["tenant_2", "tenant_3", "tenant_4"]
        .map(str::to_owned)
        .to_vec();
    let before = state_of(&pool, &kept).await;

    // The plan: tenants 2 and 3 blocked, with their reasons; 5 (whose grades cast) is not.
    let p = plan(&pool, &skipping()).await.unwrap();
    assert!(p.is_executable(), "{p}");
    let blocked: Vec<i64> = p.blocked.iter().map(|b| b.tenant).collect();
    assert_eq!(blocked, [2, 3], "{p}");
    assert_eq!(p.blocked[0].schema, "tenant_2");
    assert!(
        p.blocked[0].reasons.iter().any(|r| r.contains("notes")),
        "{:?}",
        p.blocked[0].reasons
    );
    assert!(
        p.blocked[1]
            .reasons
            .iter()
            .any(|r| r.contains("grade") && r.contains("'n/a'")),
        "{:?}",
        p.blocked[1].reasons
    );
    assert_eq!(ids(&p).len(), 14);
    assert!(!ids(&p).contains(&2) && !ids(&p).contains(&3));
    assert!(p.orphan_tenants.is_empty() && p.orphan_schemas.is_empty());
    let text = p.to_string();
    assert!(text.contains("BLOCKED: 2 tenant(s)"), "{text}");

    // Consolidated and verified: everyone but 2 and 3.
    let moved = consolidate(&pool, &p, &ConsolidateOptions::default(), &|_| {})
        .await
        .unwrap();
    assert_eq!(moved.units_done, moved.units_total);
    let proof = verify(&pool, &p, 2).await.unwrap();
    assert!(proof.is_ok(), "{:?}", proof.failures());
    assert_eq!(proof.verified_tenants, ids(&p));
    assert_eq!(id_map_rows(&pool, 2).await + id_map_rows(&pool, 3).await, 0);

    // The drop: tenant 4's schema stays for the view, with the reason; the others go.
    let verified: BTreeSet<i64> = proof.verified_tenants.iter().copied().collect();
    let p = plan(&pool, &skipping()).await.unwrap();
    let check = check_drop(&pool, &p, &verified).await.unwrap();
    let blocked: Vec<i64> = check.blocked.iter().map(|b| b.tenant).collect();
    assert_eq!(blocked, [2, 3, 4]);
    assert!(
        check.blocked[2]
            .reasons
            .iter()
            .any(|r| r.contains("public.tenant_4_report")),
        "{:?}",
        check.blocked[2].reasons
    );
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive {
        path: dir.path().to_owned(),
        sha256: String::new(),
        bytes: 0,
        schemas: check.schema_names(),
        format: DumpFormat::Directory,
    };
    let report = drop_schemas(&pool, &p, &verified, &archive).await.unwrap();
    assert_eq!(report.schemas.len(), 13);
    assert_eq!(schemas_left(&pool).await, kept);
    assert_eq!(
        state_of(&pool, &kept).await,
        before,
        "blocked tenants untouched"
    );

    // Tenant 2 fixed by hand: a re-run moves exactly it, and the whole proves.
    sqlx::raw_sql("DROP TABLE tenant_2.notes")
        .execute(&pool)
        .await
        .unwrap();
    let p = plan(&pool, &skipping()).await.unwrap();
    assert_eq!(ids(&p), [2, 4], "{p}");
    assert_eq!(p.blocked.iter().map(|b| b.tenant).collect::<Vec<_>>(), [3]);
    let again = consolidate(&pool, &p, &ConsolidateOptions::default(), &|_| {})
        .await
        .unwrap();
    let tenant_2_tables = p
        .tables
        .iter()
        .filter(|t| t.unit_tenants.contains(&2))
        .count() as u64;
    assert_eq!(again.units_done, tenant_2_tables, "only tenant 2 moves");
    assert_eq!(again.units_skipped, again.units_total - tenant_2_tables);
    let source_rows: i64 = fingerprints(&pool, &["tenant_2".to_owned()])
        .await
        .values()
        .map(|(rows, _)| rows)
        .sum();
    assert_eq!(id_map_rows(&pool, 2).await, source_rows, "every row once");
    let proof = verify(&pool, &p, 2).await.unwrap();
    assert!(proof.is_ok(), "{:?}", proof.failures());
    assert_eq!(proof.verified_tenants, [2, 4]);

    // The command line says the same: the plan lists the blocked tenant and exits 0.
    let output = tokio::process::Command::new(agent_binary().unwrap())
        .args(["plan", "--on-blocked", "skip", "--format", "json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["blocked"][0]["tenant"], 3, "{json}");
    assert_eq!(json["on_blocked"], "skip");
}

#[tokio::test]
async fn with_stop_a_blocked_tenant_stops_everything_before_anything_is_written() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    hostile_database(&pool).await;
    let everyone: Vec<String> = (1..=16).map(|i| format!("tenant_{i}")).collect();
    let before = state_of(&pool, &everyone).await;

    let p = plan(&pool, &PlanOptions::default()).await.unwrap();
    assert!(!p.is_executable());
    assert!(p.blocked.is_empty());
    let named: BTreeSet<i64> = p.refusals.iter().flat_map(|r| r.tenants.clone()).collect();
    assert_eq!(named, BTreeSet::from([2, 3]), "{p}");
    assert!(
        consolidate(&pool, &p, &ConsolidateOptions::default(), &|_| {})
            .await
            .is_err()
    );
    let bookkeeping: bool =
        sqlx::query_scalar("SELECT to_regclass('rollback_engine.units') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!bookkeeping, "nothing was written");
    assert_eq!(state_of(&pool, &everyone).await, before);

    // The command line: the plan says no (exit 3), and so does consolidate.
    for tool in ["plan", "consolidate"] {
        let output = tokio::process::Command::new(agent_binary().unwrap())
            .arg(tool)
            .env("DATABASE_URL", &db.url)
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(3), "{tool}: {output:?}");
    }

    // Without the two, the drop with `stop` refuses for tenant 4's view and drops nothing.
    let mut opts = PlanOptions::default();
    opts.scope.exclude_tenants = vec![2, 3];
    let p = plan(&pool, &opts).await.unwrap();
    consolidate(&pool, &p, &ConsolidateOptions::default(), &|_| {})
        .await
        .unwrap();
    let proof = verify(&pool, &p, 2).await.unwrap();
    let verified: BTreeSet<i64> = proof.verified_tenants.iter().copied().collect();
    let err = check_drop(&pool, &p, &verified).await.unwrap_err();
    assert!(err.to_string().contains("public.tenant_4_report"), "{err}");
    assert_eq!(schemas_left(&pool).await.len(), 16);
}

/// The same database through the agent, a runbook with `on_blocked = "skip"` in every tenancy
/// step: the run records the blocked tenants, moves, proves and drops the others, and waits for
/// a person instead of completing. Tenant 2, fixed, is rerun and moves exactly once; tenant 3 is
/// accepted as left behind (recorded with who and why); at the drop, tenant 4's view blocks it
/// and it is accepted too. The run then completes, and the blocked tenants' schemas are as they
/// were.
#[tokio::test]
async fn a_run_with_blocked_tenants_waits_for_a_person_then_reruns_or_accepts_them() {
    use super::harness::{Harness, step};
    use rollback_proto::{Command, Event, RunStatus};

    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    hostile_database(&pool).await;
    let untouched: Vec<String> = ["tenant_3", "tenant_4"].map(str::to_owned).to_vec();
    let before = state_of(&pool, &untouched).await;

    let h = Harness::new().await;
    let archives = h.path("archives");
    h.runbook(
        "skip",
        &format!(
            r#"
name = "skip"
[[phases]]
id = "move"
[[phases.steps]]
id = "plan"
kind = "plan"
target = "app"
on_blocked = "skip"
[[phases.steps]]
id = "consolidate"
kind = "consolidate"
target = "app"
on_blocked = "skip"
[[phases.steps]]
id = "verify"
kind = "verify"
target = "app"
on_blocked = "skip"

[[phases]]
id = "drop"
[[phases.steps]]
id = "drop"
kind = "drop_schemas"
target = "app"
archive_dir = "{archives}"
on_blocked = "skip"
destructive = true
approvals = 1
"#,
            archives = archives.display()
        ),
    );
    let _agent = h
        .agent(
            "agent-a",
            &format!("[databases.app]\nurl = \"{}\"\n", db.url),
        )
        .await;
    let run = h.start("skip").await;
    h.accepted("alice", &["oncall"], Command::Next { run })
        .await;
    let state = h
        .wait_for(run, "the move phase to wait on blocked tenants", |s| {
            s.unresolved_blocked().len() == 2
                && s.phases[0].steps.iter().all(|st| st.status.is_terminal())
        })
        .await;
    let waiting: Vec<i64> = state
        .unresolved_blocked()
        .iter()
        .map(|e| e.tenant.tenant)
        .collect();
    assert_eq!(waiting, [2, 3]);
    assert_eq!(state.status, RunStatus::Active);
    assert!(state.active_phase == Some(0), "the phase does not complete");
    let verified: Vec<i64> = state.verified_tenants.iter().copied().collect();
    assert_eq!(verified.len(), 14);
    assert!(!verified.contains(&2) && !verified.contains(&3));

    // Tenant 2 fixed: rerun. It moves, and only it (the others' units are found done).
    sqlx::raw_sql("DROP TABLE tenant_2.notes")
        .execute(&pool)
        .await
        .unwrap();
    h.accepted("alice", &["oncall"], Command::RerunBlocked { run })
        .await;
    let state = h
        .wait_for(run, "the rerun to leave tenant 3 alone blocked", |s| {
            s.phases[0].steps.iter().all(|st| st.status.is_terminal())
                && s.unresolved_blocked().len() == 1
                && s.verified_tenants.contains(&2)
        })
        .await;
    assert_eq!(state.unresolved_blocked()[0].tenant.tenant, 3);
    let units_for_2: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rollback_engine.units WHERE tenant = 2")
            .fetch_one(&pool)
            .await
            .unwrap();
    let tenant_2_rows: i64 = fingerprints(&pool, &["tenant_2".to_owned()])
        .await
        .values()
        .map(|(rows, _)| rows)
        .sum();
    assert!(units_for_2 > 0);
    assert_eq!(
        id_map_rows(&pool, 2).await,
        tenant_2_rows,
        "every row of 2 once"
    );

    // Tenant 3 accepted as left behind: the phase completes.
    h.accepted(
        "alice",
        &["oncall"],
        Command::AcceptBlocked {
            run,
            reason: "tenant 3's grades are cleaned up by hand next week".into(),
        },
    )
    .await;
    h.wait_for(run, "the move phase to complete", |s| {
        s.active_phase.is_none()
    })
    .await;

    // The drop: tenant 4 blocked by the view (3 stays accepted).
    h.accepted("alice", &["oncall"], Command::Next { run })
        .await;
    h.accepted(
        "bob",
        &["approvers"],
        Command::Approve {
            run,
            step: step("drop"),
        },
    )
    .await;
    let state = h
        .wait_for(run, "the drop to wait on tenant 4", |s| {
            s.phases[1].steps.iter().all(|st| st.status.is_terminal())
                && s.unresolved_blocked().len() == 1
        })
        .await;
    assert_eq!(state.unresolved_blocked()[0].tenant.tenant, 4);
    assert_eq!(schemas_left(&pool).await, untouched);
    h.accepted(
        "alice",
        &["oncall"],
        Command::AcceptBlocked {
            run,
            reason: "the report view moves to the shared table first".into(),
        },
    )
    .await;
    let state = h
        .wait_for(run, "the run to complete", |s| s.is_finished())
        .await;
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(state_of(&pool, &untouched).await, before);

    // The history says who decided what.
    let events = h.events(run).await;
    let accepted: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::BlockedTenantsAccepted { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(accepted.len(), 2);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::BlockedTenantsRerun { from, .. } if *from == step("plan")))
    );
}
