//! The command line as an operator meets it. (Building these tests also makes cargo build
//! the `rollback-agent` executable that the end-to-end tests drive and kill.)

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rollback-agent"))
}

#[test]
fn check_runbook_accepts_a_good_file_and_names_the_place_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "name = \"good\"\n[[phases]]\nid = \"p\"\n[[phases.steps]]\nid = \"s\"\nkind = \"shell\"\ncommand = \"true\"\n").unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\n[[phases]]\nid = \"db\"\n[[phases.steps]]\nid = \"drop\"\nkind = \"drop_schemas\"\ntarget = \"app\"\narchive_dir = \"/x\"\ndestructive = true\n",
    )
    .unwrap();

    let out = agent().arg("check-runbook").arg(&good).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 phases, 1 steps)"));

    let out = agent()
        .arg("check-runbook")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bad.toml"), "{text}");
    assert!(text.contains("phase `db`, step `drop`"), "{text}");
    assert!(text.contains("at least one approval"), "{text}");
}

#[test]
fn a_missing_database_url_is_named() {
    let out = agent()
        .arg("plan")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("--database-url"), "{text}");
}
