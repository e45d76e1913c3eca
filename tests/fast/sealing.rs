//! Fast tier: what a session passes to the CLI to seal it, and what it refuses. The real
//! CLI's side of each guarantee is tested in `tests/real/sealing.rs`,
//! `tests/real/descendants.rs` and `tests/real/sigpipe.rs`.

use crate::support;

use claude_rayon::prelude::*;
use claude_rayon::{CliError, Error, Outcome};
use rayon::prelude::*;
use support::Fake;

fn start_event(fake: &Fake) -> serde_json::Value {
    fake.events()
        .into_iter()
        .find(|e| e["event"] == "start")
        .expect("a process started")
}

fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
    args.windows(2).any(|w| w[0] == flag && w[1] == value)
}

#[test]
fn every_process_is_sealed_by_default() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
    session.query("hello").unwrap();
    let args = &fake.starts()[0];
    assert!(args.contains(&"--safe-mode".to_string()), "{args:?}");
    assert!(args.contains(&"--strict-mcp-config".to_string()));
    assert!(has_pair(args, "--setting-sources", "user"));
    let settings = args
        .windows(2)
        .find(|w| w[0] == "--settings")
        .map(|w| serde_json::from_str::<serde_json::Value>(&w[1]).unwrap())
        .expect("--settings");
    assert_eq!(settings["env"]["CLAUDE_CODE_DISABLE_ATTACHMENTS"], "1");
    assert_eq!(settings["env"]["CLAUDE_CODE_SAFE_MODE"], "1");
    let env = &start_event(&fake)["env"];
    assert_eq!(env["CLAUDE_CODE_DISABLE_ATTACHMENTS"], "1");
    assert!(env["CLAUDE_RAYON_OWNER"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
}

#[test]
fn the_users_configuration_can_be_reopened_but_item_text_stays_text() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .cli(|c| c.load_user_config(true))
        .concurrency(1)
        .build()
        .unwrap();
    session.query("hello").unwrap();
    let args = &fake.starts()[0];
    assert!(!args.contains(&"--safe-mode".to_string()), "{args:?}");
    assert!(!args.contains(&"--strict-mcp-config".to_string()));
    // The project's settings stay off, and so do `@` attachments.
    assert!(has_pair(args, "--setting-sources", "user"));
    assert_eq!(
        start_event(&fake)["env"]["CLAUDE_CODE_DISABLE_ATTACHMENTS"],
        "1"
    );
    assert_eq!(session.query("/cost").unwrap().text, "echo:  /cost");
}

#[test]
fn flags_that_would_unseal_are_refused_unless_the_configuration_is_reopened() {
    let fake = Fake::new();
    for flag in [
        "--settings",
        "--mcp-config",
        "--setting-sources=user,project",
        "--plugin-dir",
    ] {
        let err = fake.builder().cli(|c| c.arg(flag)).build().unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig(m) if m.contains("load_user_config")),
            "{flag}: {err}"
        );
    }
    fake.builder()
        .cli(|c| c.load_user_config(true).arg("--mcp-config").arg("{}"))
        .build()
        .unwrap();
}

#[test]
fn text_that_would_run_a_command_is_sent_as_text() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
    for text in ["/cost", "/config model=haiku", "/clear and more"] {
        let answer = session.query(text).unwrap();
        assert_eq!(answer.text, format!("echo:  {text}"));
    }
    assert_eq!(session.query("a /cost").unwrap().text, "echo: a /cost");
    assert!(fake.events().iter().all(|e| e["event"] != "command"));
}

#[test]
fn interpreted_item_text_runs_commands() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .cli(|c| c.interpret_item_text(true))
        .concurrency(1)
        .build()
        .unwrap();
    assert_eq!(
        session.query("/cost").unwrap().text,
        "Unknown command: /cost"
    );
    let args = &fake.starts()[0];
    assert!(args.contains(&"--safe-mode".to_string()));
    assert!(start_event(&fake)["env"]
        .get("CLAUDE_CODE_DISABLE_ATTACHMENTS")
        .is_none());
}

#[test]
fn blank_items_fail_typed_without_a_call_and_come_back() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(2).build().unwrap();
    let items = vec!["a".to_string(), String::new(), "  \n".into(), "b".into()];
    let outcome: Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |s| s.to_string())
        .collect();
    assert_eq!(outcome.ok.len(), 2);
    assert_eq!(outcome.dead_letter.len(), 2);
    for failed in &outcome.dead_letter {
        assert!(failed.item.trim().is_empty());
        assert!(matches!(failed.error, Error::EmptyPrompt));
        assert_eq!(failed.attempts, 0);
    }
    let prompts = fake.prompts();
    assert_eq!(prompts.len(), 2, "{prompts:?}");
    let mut chat = session.conversation();
    assert!(matches!(chat.send(" "), Err(Error::EmptyPrompt)));
}

#[test]
fn a_reset_that_did_not_happen_replaces_the_process_and_items_never_share_context() {
    for mode in ["as-text", "same-session"] {
        let fake = Fake::new();
        let session = fake
            .builder()
            .cli(|c| c.env("CLAUDE_RAYON_SIM_CLEAR", mode))
            .concurrency(2)
            .build()
            .unwrap();
        let items: Vec<u32> = (0..12).collect();
        let outcome: Outcome<_, _> = items
            .par_iter()
            .claude_map(&session, |i| format!("[[sim:context]] item {i}"))
            .collect();
        assert!(
            outcome.dead_letter.is_empty(),
            "{mode}: {:?}",
            outcome.dead_letter
        );
        for (i, response) in &outcome.ok {
            assert_eq!(
                response.text,
                format!("context: [[sim:context]] item {i}"),
                "{mode}: item {i} saw another item"
            );
        }
        let stats = session.close().unwrap();
        assert!(stats.processes_started > 2, "{mode}: {stats:?}");
    }
}

#[test]
fn working_resets_keep_processes_warm() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(2).build().unwrap();
    let items: Vec<u32> = (0..20).collect();
    let outcome: Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |i| format!("[[sim:context]] item {i}"))
        .collect();
    assert_eq!(outcome.ok.len(), 20);
    for (i, response) in &outcome.ok {
        assert_eq!(response.text, format!("context: [[sim:context]] item {i}"));
    }
    assert_eq!(session.close().unwrap().processes_started, 2);
}

#[test]
fn a_cli_too_old_to_seal_is_refused() {
    let fake = Fake::new();
    for version in ["2.0.99 (Claude Code)", "1.0.0", "not a version"] {
        let err = fake
            .builder()
            .cli(|c| c.env("CLAUDE_RAYON_SIM_VERSION", version))
            .build()
            .unwrap_err();
        match &err {
            Error::Cli(CliError::Unsupported { minimum, .. }) => assert_eq!(minimum, "2.1.197"),
            other => panic!("{version}: {other}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("2.1.197") && message.contains("npm install"),
            "{message}"
        );
        assert!(err.is_fatal());
    }
    fake.builder()
        .cli(|c| c.env("CLAUDE_RAYON_SIM_VERSION", "2.1.197 (Claude Code)"))
        .build()
        .unwrap();
}

#[test]
fn without_a_cwd_each_session_gets_a_private_folder_removed_at_close() {
    use std::os::unix::fs::PermissionsExt;
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
    session.query("hello").unwrap();
    let cwd = std::path::PathBuf::from(start_event(&fake)["cwd"].as_str().unwrap());
    let meta = std::fs::metadata(&cwd).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0);
    let other = fake.builder().build().unwrap();
    other.query("x").unwrap();
    let cwds: Vec<String> = fake
        .events()
        .iter()
        .filter(|e| e["event"] == "start")
        .map(|e| e["cwd"].as_str().unwrap().to_string())
        .collect();
    assert_ne!(cwds[0], cwds[1], "sessions share a folder");
    session.close().unwrap();
    assert!(!cwd.exists());
    // A session that is only dropped removes its folder too.
    drop(other);
    assert!(!std::path::Path::new(&cwds[1]).exists());
}
