//! Every builder setting reaches the CLI as its flag, and defaults suit batch work.

use crate::support;

use std::time::Duration;

use serde_json::json;
use support::Fake;

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

#[test]
fn defaults_disable_tools_system_prompt_and_transcripts() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
    session.query("hello").unwrap();
    let starts = fake.starts();
    assert_eq!(starts.len(), 1);
    let args = &starts[0];
    for flag in ["-p", "--verbose", "--no-session-persistence"] {
        assert!(args.contains(&flag.to_string()), "{flag} missing: {args:?}");
    }
    assert_eq!(
        flag_value(args, "--input-format").as_deref(),
        Some("stream-json")
    );
    assert_eq!(
        flag_value(args, "--output-format").as_deref(),
        Some("stream-json")
    );
    assert_eq!(flag_value(args, "--tools").as_deref(), Some(""));
    assert_eq!(flag_value(args, "--system-prompt").as_deref(), Some(""));
    assert!(!args.contains(&"--model".to_string()));
    // The prompt goes on stdin, never in argv.
    assert!(!args.iter().any(|a| a.contains("hello")));
}

#[test]
fn every_setting_maps_to_its_flag() {
    let fake = Fake::new();
    let cwd = tempfile::tempdir().unwrap();
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    let session = fake
        .builder()
        .model("sonnet")
        .system_prompt("You are terse.")
        .append_system_prompt("Answer in French.")
        .cli(|c| {
            c.tools(["Read", "Grep"])
                .allowed_tools(["Read"])
                .disallowed_tools(["Bash"])
                .permission_mode(claude_rayon::PermissionMode::Plan)
                .max_turns(3)
        })
        .json_schema(schema.clone())
        .effort(claude_rayon::Effort::Low)
        .cli(|c| {
            c.cwd(cwd.path())
                .persist_sessions(true)
                .arg("--strict-mcp-config")
        })
        .concurrency(1)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    session.query("hello").unwrap();
    let args = &fake.starts()[0];
    let expect = [
        ("--model", "sonnet"),
        ("--system-prompt", "You are terse."),
        ("--append-system-prompt", "Answer in French."),
        ("--tools", "Read,Grep"),
        ("--allowedTools", "Read"),
        ("--disallowedTools", "Bash"),
        ("--permission-mode", "plan"),
        ("--max-turns", "3"),
        ("--effort", "low"),
    ];
    for (flag, value) in expect {
        assert_eq!(
            flag_value(args, flag).as_deref(),
            Some(value),
            "{flag} in {args:?}"
        );
    }
    let sent: serde_json::Value =
        serde_json::from_str(&flag_value(args, "--json-schema").unwrap()).unwrap();
    assert_eq!(sent, schema);
    assert!(!args.contains(&"--no-session-persistence".to_string()));
    assert_eq!(args.last().map(String::as_str), Some("--strict-mcp-config"));
    let start = fake
        .events()
        .into_iter()
        .find(|e| e["event"] == "start")
        .unwrap();
    assert!(start["pid"].as_u64().is_some());
}

#[test]
fn system_prompt_none_keeps_the_clis_own() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .cli(|c| c.cli_system_prompt())
        .concurrency(1)
        .build()
        .unwrap();
    session.query("x").unwrap();
    assert_eq!(flag_value(&fake.starts()[0], "--system-prompt"), None);
}
