//! Fast tier: settings and sizes that used to crash or hang are accepted safely or refused at
//! `build()`, and what went wrong is said as it happened.

use crate::support;

use std::time::Duration;

use claude_rayon::prelude::*;
use claude_rayon::{Cancel, CliError, Error, RetryPolicy};
use rayon::prelude::*;
use support::{quick_retries, wait_until, Fake};

#[test]
fn duration_max_settings_do_not_panic() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .timeout(Duration::MAX)
        .concurrency(1)
        .build()
        .unwrap();
    assert_eq!(session.query("x").unwrap().text, "echo: x");

    // A retry wait of Duration::MAX, cut short by a cancel: no panic, and no retry counted
    // for a call that was never sent.
    let cancel = Cancel::new();
    let session = fake
        .builder()
        .retry_policy(
            RetryPolicy::default()
                .initial_backoff(Duration::MAX)
                .max_backoff(Duration::MAX),
        )
        .timeout(Duration::MAX)
        .concurrency(1)
        .build()
        .unwrap();
    std::thread::scope(|s| {
        let failing = s.spawn(|| {
            let mut results: Vec<_> = ["[[sim:error=529]] y"]
                .par_iter()
                .claude_map(&session, |p| p.to_string())
                .with_cancel(&cancel)
                .collect();
            results.pop().unwrap().map(|(_, r)| r).map_err(|f| f.error)
        });
        wait_until("the first call", Duration::from_secs(10), || {
            fake.prompts().iter().any(|(p, _)| p.contains(" y"))
        });
        cancel.cancel();
        let error = failing.join().unwrap().unwrap_err();
        assert_eq!(error.api_status(), Some(529), "{error}");
    });
    let stats = session.stats();
    assert_eq!((stats.requests, stats.retried), (1, 0), "{stats:?}");
}

#[test]
fn what_the_os_cannot_start_is_refused_at_build() {
    let fake = Fake::new();
    let refused = |builder: claude_rayon::SessionBuilder, what: &str| match builder.build() {
        Err(Error::InvalidConfig(message)) => assert!(message.contains(what), "{message}"),
        other => panic!("{what}: {other:?}"),
    };
    refused(fake.builder().model("son\0net"), "NUL");
    refused(
        fake.builder().cli(|c| c.env("SOME_VAR", "a\0b")),
        "SOME_VAR",
    );
    refused(
        fake.builder()
            .cli(|c| c.env("BIG_VAR", "x".repeat(200 * 1024))),
        "BIG_VAR",
    );
    let huge_schema = serde_json::json!({
        "type": "object",
        "description": "d".repeat(200 * 1024),
    });
    refused(fake.builder().json_schema(huge_schema), "128 KiB");
    refused(
        fake.builder().cli(|c| c.max_line_bytes(10)),
        "max_line_bytes",
    );
}

#[test]
fn a_spawn_that_cannot_succeed_is_not_retried() {
    let missing = Error::Cli(CliError::Spawn {
        path: "/nowhere/claude".into(),
        source: std::sync::Arc::new(std::io::Error::from_raw_os_error(libc::ENOENT)),
    });
    assert!(!missing.is_retryable());
    let too_big = Error::Cli(CliError::Spawn {
        path: "/bin/claude".into(),
        source: std::sync::Arc::new(std::io::Error::from_raw_os_error(libc::E2BIG)),
    });
    assert!(!too_big.is_retryable());
    let busy = Error::Cli(CliError::Spawn {
        path: "/bin/claude".into(),
        source: std::sync::Arc::new(std::io::Error::from_raw_os_error(libc::EAGAIN)),
    });
    assert!(busy.is_retryable());
}

#[test]
fn a_line_without_end_is_capped_and_its_process_killed() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .cli(|c| c.max_line_bytes(1 << 20))
        .retry_policy(quick_retries(0))
        .concurrency(1)
        .build()
        .unwrap();
    let pid = {
        session.query("warm").unwrap();
        fake.pids()[0]
    };
    match session.query("[[sim:huge=3000000]]").unwrap_err() {
        Error::Cli(CliError::Protocol { reason, .. }) => {
            assert!(reason.contains("max_line_bytes"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    wait_until("the process is gone", Duration::from_secs(10), || {
        !support::pid_alive(pid)
    });
    assert_eq!(session.query("next").unwrap().text, "echo: next");
}

#[test]
fn a_process_the_library_killed_is_said_to_be_killed_by_the_library() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .retry_policy(quick_retries(0))
        .concurrency(1)
        .build()
        .unwrap();
    match session.query("[[sim:close-stdout]]").unwrap_err() {
        error @ Error::Cli(CliError::ProcessExited {
            killed_by_library: true,
            ..
        }) => assert!(
            error.to_string().contains("claude-rayon killed it"),
            "{error}"
        ),
        other => panic!("{other:?}"),
    }
    match session.query("[[sim:crash]]").unwrap_err() {
        error @ Error::Cli(CliError::ProcessExited {
            killed_by_library: false,
            code: Some(3),
            ..
        }) => assert!(error.to_string().contains("exit code 3"), "{error}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_conversation_that_lost_its_context_says_so() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
    let mut chat = session.conversation();
    chat.send("remember 7").unwrap();
    assert!(matches!(
        chat.send("[[sim:crash]]"),
        Err(Error::Cli(CliError::ProcessExited { .. }))
    ));
    assert!(chat.is_lost());
    match chat.send("what did I say?") {
        Err(Error::ConversationLost { turns }) => assert_eq!(turns, 1),
        other => panic!("{other:?}"),
    }
    // A new conversation works.
    let mut again = session.conversation();
    assert!(again.send("hello").is_ok());
}
