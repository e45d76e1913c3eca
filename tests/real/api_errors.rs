//! Real tier: each Messages API fault, as the real CLI reports it, becomes its typed error with
//! the right `is_retryable()`, and the library's own retries recover from a passing fault.
//! Skipped with a notice when no CLI is installed.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use claude_rayon::Error;
use support::mock_api::{Fault, Reply};
use support::{quick_retries, Real};

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn api_faults_map_to_typed_errors_and_the_process_survives() {
    let Some(real) = Real::start("api_faults_map_to_typed_errors_and_the_process_survives") else {
        return;
    };
    real.api.set_reply(|prompt| match prompt {
        "fault 429" => Reply::status(429, None),
        "fault 529" => Reply::status(529, None),
        "fault 500" => Reply::status(500, None),
        "fault 400" => Reply::status(400, None),
        "fault cut" => Reply::Fault(Fault::CutStream),
        p => Reply::text(format!("fine: {p}")),
    });
    // One attempt per item (no CLI retries either), so each fault is seen exactly as reported.
    let session = real
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(0))
        .build()
        .unwrap();

    for (status, retryable) in [(429u16, true), (529, true), (500, true), (400, false)] {
        let prompt = format!("fault {status}");
        let err = session.query(&prompt).unwrap_err();
        assert!(
            matches!(&err, Error::Api { status: Some(s), .. } if *s == status),
            "{status}: {err:?}"
        );
        assert_eq!(err.is_retryable(), retryable, "{status}: {err:?}");
        assert!(!err.is_fatal(), "{status}");
        let calls = real
            .api
            .requests()
            .iter()
            .filter(|r| r.prompt == prompt)
            .count();
        // 2.1.332 re-sends a request refused with 400 by itself (once as it was, once
        // without a newer request field), with no api_retry line; 2.1.197 sends it once.
        let most = if status == 400 { 3 } else { 1 };
        assert!(
            (1..=most).contains(&calls),
            "{status}: {calls} API calls, expected no retries by CLI or library"
        );
    }

    // A cut stream, every time: the CLI falls back to one non-streaming request, which is cut
    // too, and reports no HTTP status.
    let err = session.query("fault cut").unwrap_err();
    assert!(
        matches!(&err, Error::Api { status: None, .. }),
        "cut stream: {err:?}"
    );
    assert!(err.is_retryable(), "cut stream: {err:?}");
    assert!(
        real.api
            .requests()
            .iter()
            .any(|r| r.prompt == "fault cut" && r.stream),
        "the cut prompt was streamed"
    );

    // API errors leave the process usable: the next item runs on the same one.
    assert_eq!(session.query("after").unwrap().text, "fine: after");
    assert_eq!(session.stats().processes_started as usize, 1);
    let stats = session.stats();
    assert_eq!((stats.failed, stats.succeeded, stats.retried), (5, 1, 0));
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_401_is_an_authentication_error_that_says_how_to_log_in() {
    let Some(real) = Real::start("a_401_is_an_authentication_error_that_says_how_to_log_in") else {
        return;
    };
    real.api.set_reply(|_| Reply::status(401, None));
    let session = real
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(0))
        .build()
        .unwrap();
    let err = session.query("who am I?").unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
    assert!(!err.is_retryable() && err.is_fatal(), "{err:?}");
    assert_eq!(err.api_status(), Some(401));
    let text = err.to_string();
    assert!(
        text.contains("/login") && text.contains("ANTHROPIC_API_KEY"),
        "{text}"
    );
    assert!(
        !text.contains("sk-ant-test-mock-key"),
        "the key is never shown: {text}"
    );
    assert_eq!(real.api.request_count(), 1);
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn the_librarys_retry_recovers_from_a_fault_on_the_first_request() {
    let Some(real) = Real::start("the_librarys_retry_recovers_from_a_fault_on_the_first_request")
    else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    real.api.set_reply_with(move |request| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(529, None)
        } else {
            Reply::text(format!("recovered: {}", request.prompt))
        }
    });
    let session = real
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(2))
        .build()
        .unwrap();
    let response = session.query("try me").unwrap();
    assert_eq!(response.text, "recovered: try me");
    let stats = session.stats();
    assert_eq!(stats.retried, 1, "{stats:?}");
    assert_eq!((stats.succeeded, stats.failed, stats.requests), (1, 0, 2));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the fault, then the retry");
    let requests = real.api.requests();
    assert_eq!(requests[1].user_turns, 1, "the retry carries fresh context");
    assert_eq!(
        session.stats().processes_started as usize,
        1,
        "the retry reused the process"
    );
}
