//! The command line: a missing or malformed setting stops the bot with a message naming it.
//! (Also makes `cargo test` build the binary the end-to-end tests start.)

use std::process::Command;

fn bot() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollback-bot"));
    for var in [
        "DISCORD_TOKEN",
        "DISCORD_APPLICATION_ID",
        "DISCORD_CHANNEL_ID",
        "DISCORD_PUBLIC_KEY",
        "ROLLBACK_BOT_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn a_missing_token_is_named() {
    let out = bot().arg("register-commands").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DISCORD_TOKEN"), "{err}");
}

#[test]
fn a_malformed_setting_is_named_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.toml");
    std::fs::write(&path, "[progress]\nedit_interval = \"often\"\n").unwrap();
    let out = bot()
        .arg("--config")
        .arg(&path)
        .arg("run")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bot.toml") && err.contains("often"), "{err}");
    let out = bot()
        .arg("run")
        .env("DISCORD_CHANNEL_ID", "general")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DISCORD_CHANNEL_ID"), "{err}");
}
