//! Each failure mode of the CLI gives its typed error, and the session keeps working.

use crate::support;

use std::time::Duration;

use claude_rayon::{CliError, Error, Session};
use serde_json::json;
use support::{pid_alive, quick_retries, wait_until, Fake};

fn one_process(fake: &Fake) -> Session {
    fake.builder()
        .concurrency(1)
        .retry_policy(quick_retries(0))
        .build()
        .unwrap()
}

#[test]
fn api_errors_are_typed_and_the_process_survives() {
    let fake = Fake::new();
    let session = one_process(&fake);
    for (status, retryable) in [(529u16, true), (429, true), (500, true), (400, false)] {
        let err = session
            .query(format!("[[sim:error={status}]]"))
            .unwrap_err();
        match &err {
            Error::Api { status: s, .. } => assert_eq!(*s, Some(status)),
            other => panic!("{status}: {other:?}"),
        }
        assert_eq!(err.is_retryable(), retryable, "{status}");
    }
    let err = session.query("[[sim:error=none]]").unwrap_err();
    assert!(matches!(err, Error::Api { status: None, .. }) && err.is_retryable());
    assert_eq!(session.query("fine").unwrap().text, "echo: fine");
    assert_eq!(
        session.stats().processes_started as usize,
        1,
        "an API error keeps the process"
    );
}

#[test]
fn authentication_failure_says_how_to_log_in() {
    let fake = Fake::new();
    let session = one_process(&fake);
    let err = session.query("[[sim:error=401]]").unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
    assert!(!err.is_retryable() && err.is_fatal());
    let text = err.to_string();
    assert!(
        text.contains("ANTHROPIC_API_KEY") && text.contains("login"),
        "{text}"
    );
}

#[test]
fn a_crash_is_reported_with_exit_code_and_stderr_and_the_process_replaced() {
    let fake = Fake::new();
    let session = one_process(&fake);
    session.query("warm up").unwrap();
    let first = fake.pids()[0];
    match session.query("[[sim:crash]]").unwrap_err() {
        Error::Cli(CliError::ProcessExited {
            code, stderr_tail, ..
        }) => {
            assert_eq!(code, Some(3));
            assert!(stderr_tail.contains("simulated crash"), "{stderr_tail:?}");
        }
        other => panic!("{other:?}"),
    }
    wait_until(
        "the crashed process is reaped",
        Duration::from_secs(5),
        || !pid_alive(first),
    );
    assert_eq!(session.query("again").unwrap().text, "echo: again");
    assert_eq!(session.stats().processes_started as usize, 2);
}

#[test]
fn garbage_on_stdout_is_a_protocol_error_and_the_process_is_killed() {
    let fake = Fake::new();
    let session = one_process(&fake);
    let err = session.query("[[sim:garbage]]").unwrap_err();
    match &err {
        Error::Cli(CliError::Protocol { line, .. }) => assert!(line.contains("not json"), "{line}"),
        other => panic!("{other:?}"),
    }
    assert!(err.is_retryable());
    let first = fake.pids()[0];
    wait_until(
        "the garbled process is killed",
        Duration::from_secs(5),
        || !pid_alive(first),
    );
    assert_eq!(session.query("next").unwrap().text, "echo: next");
}

#[test]
fn a_hung_item_times_out_and_its_process_is_killed_and_replaced() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(0))
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let err = session.query("[[sim:hang]]").unwrap_err();
    assert!(
        matches!(err, Error::Timeout(d) if d == Duration::from_millis(400)),
        "{err:?}"
    );
    let hung = fake.pids()[0];
    wait_until("the hung process is killed", Duration::from_secs(5), || {
        !pid_alive(hung)
    });
    assert_eq!(session.query("after").unwrap().text, "echo: after");
}

#[test]
fn a_ten_megabyte_answer_arrives_whole() {
    let fake = Fake::new();
    let session = one_process(&fake);
    let response = session.query("[[sim:huge=10485760]]").unwrap();
    assert_eq!(response.text.len(), 10 * 1024 * 1024);
    assert_eq!(session.query("small").unwrap().text, "echo: small");
}

#[test]
fn cli_retries_are_counted_and_unknown_lines_skipped() {
    let fake = Fake::new();
    let session = one_process(&fake);
    let response = session.query("[[sim:retry=529,2]] hi").unwrap();
    assert_eq!(response.api_retries, 2);
    let stats = session.stats();
    assert_eq!(stats.cli_api_retries, 2);
    assert!(
        stats.backoff_pauses >= 1,
        "a 529 retry pauses the shared throttle"
    );
}

#[test]
fn an_unexpected_control_request_is_answered_with_an_error() {
    let fake = Fake::new();
    let session = one_process(&fake);
    let response = session.query("[[sim:control]] go").unwrap();
    assert!(response.text.starts_with("echo:"));
    let answer = fake
        .events()
        .into_iter()
        .find(|e| e["event"] == "control_response")
        .expect("the fake recorded our answer");
    let line: serde_json::Value = serde_json::from_str(answer["line"].as_str().unwrap()).unwrap();
    assert_eq!(line["response"]["subtype"], "error");
    assert_eq!(line["response"]["request_id"], "sim-1");
}

#[test]
fn max_turns_is_its_own_error() {
    let fake = Fake::new();
    let session = one_process(&fake);
    let err = session.query("[[sim:max-turns]]").unwrap_err();
    assert!(
        matches!(err, Error::Cli(CliError::MaxTurns { turns: 2 })),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[test]
fn structured_output_present_missing_and_typed() {
    #[derive(serde::Deserialize)]
    struct Count {
        n: i64,
    }
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(0))
        .json_schema(
            json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}),
        )
        .build()
        .unwrap();
    let response = session.query("[[sim:structured={\"n\": 41}]]").unwrap();
    assert_eq!(response.structured, Some(json!({"n": 41})));
    assert_eq!(response.parse::<Count>().unwrap().n, 41);
    let err = session.query("[[sim:no-structured]] plain").unwrap_err();
    assert!(
        matches!(err, Error::StructuredOutputMissing { .. }),
        "{err:?}"
    );
}

#[test]
fn a_secret_never_appears_in_errors_or_debug() {
    let secret = "sk-ant-api03-very-secret-value";
    let fake = Fake::new();
    let builder = fake
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(0))
        .cli(|c| c.env("ANTHROPIC_API_KEY", secret));
    assert!(!format!("{builder:?}").contains(secret));
    let session = builder.build().unwrap();
    assert!(!format!("{session:?}").contains(secret));
    let err = session
        .query("[[sim:stderr-env=ANTHROPIC_API_KEY]]")
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(shown.contains("ANTHROPIC_API_KEY=[REDACTED]"), "{shown}");
}

#[test]
fn retryable_failures_are_retried_until_they_succeed() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(3))
        .build()
        .unwrap();
    let response = session.query("[[sim:fail-times=a,2,529]] x").unwrap();
    assert!(response.text.starts_with("echo:"));
    let stats = session.stats();
    assert_eq!((stats.retried, stats.requests, stats.succeeded), (2, 3, 1));

    let err = session.query("[[sim:fail-times=b,5,500]] y").unwrap_err();
    assert!(matches!(
        err,
        Error::Api {
            status: Some(500),
            ..
        }
    ));
    assert_eq!(session.stats().failed, 1);
    // A non-retryable error is not retried.
    let before = session.stats().requests;
    session.query("[[sim:error=400]]").unwrap_err();
    assert_eq!(session.stats().requests, before + 1);
}

#[test]
fn a_failed_call_is_billed_to_the_stats_and_the_budget() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(0))
        .max_budget_usd(0.025)
        .build()
        .unwrap();
    for _ in 0..2 {
        let err = session.query("[[sim:max-turns]]").unwrap_err();
        assert!(matches!(err, Error::Cli(CliError::MaxTurns { .. })));
    }
    let stats = session.stats();
    assert!((stats.cost_usd - 0.02).abs() < 1e-9, "{}", stats.cost_usd);
    // 0.02 spent, and the largest cost seen (0.01) no longer fits under 0.025.
    let err = session.query("[[sim:max-turns]]").unwrap_err();
    assert!(matches!(err, Error::BudgetExceeded { .. }), "{err:?}");
    assert_eq!(fake.prompts().len(), 2);
}

#[test]
fn a_cli_that_stops_reading_cannot_block_past_the_timeout() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(0))
        .timeout(Duration::from_millis(500))
        // Stuck before it reads stdin: a large prompt fills the pipe and the write blocks.
        .cli(|c| c.env("CLAUDE_RAYON_SIM_STARTUP_MS", "60000"))
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = session.clone();
    std::thread::spawn(move || {
        let prompt = "y".repeat(1 << 20);
        tx.send(worker.query(prompt)).unwrap();
    });
    let result = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the query returned instead of blocking on the write");
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    let pid = fake.pids()[0];
    wait_until(
        "the stuck process is killed",
        Duration::from_secs(5),
        || !pid_alive(pid),
    );
}

#[test]
fn a_secret_split_by_shortening_is_still_redacted() {
    let secret = "sk-ant-api03-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(0))
        .cli(|c| c.env("ANTHROPIC_API_KEY", secret))
        .build()
        .unwrap();
    let err = session
        .query("[[sim:garbage-env=ANTHROPIC_API_KEY]]")
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(
        matches!(err, Error::Cli(CliError::Protocol { .. })),
        "{shown}"
    );
    // Not even a prefix of the key survives the cut.
    assert!(!shown.contains(&secret[..14]), "{shown}");
}
