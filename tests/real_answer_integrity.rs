//! Real tier: answers that are not whole or not answers, through the real CLI and the mock
//! API: an answer the CLI continued after the output limit comes back whole; a stream that
//! ended early is never taken for the answer; a refusal fails at once; a model that does not
//! exist stops the run.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use claude_rayon::prelude::*;
use claude_rayon::{Error, Outcome};
use rayon::prelude::*;
use support::mock_api::{Fault, Reply};
use support::Real;

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn an_answer_cut_at_max_tokens_comes_back_whole() {
    let Some(real) = Real::start("an_answer_cut_at_max_tokens_comes_back_whole") else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    real.api.set_reply(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Stop {
                text: "The first half, ".into(),
                stop_reason: "max_tokens".into(),
            }
        } else {
            Reply::text("and the second half.")
        }
    });
    let session = real.builder().concurrency(1).build().unwrap();
    let response = session.query("write something long").unwrap();
    assert_eq!(response.text, "The first half, and the second half.");
    assert_eq!((response.continuations, response.api_calls), (1, 2));
    assert_eq!(real.api.request_count(), 2);
    assert_eq!(session.stats().requests, 2, "both calls counted");
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_stream_that_ended_early_is_not_the_answer() {
    let Some(real) = Real::start("a_stream_that_ended_early_is_not_the_answer") else {
        return;
    };
    real.api.set_reply(|_| {
        Reply::Fault(Fault::NoStop(
            "A partial ans".into(),
            "A partial answer, whole at last.".into(),
        ))
    });
    let session = real.builder().concurrency(1).build().unwrap();
    match session.query("tell me") {
        Ok(response) => assert_eq!(response.text, "A partial answer, whole at last."),
        Err(error) => assert!(error.is_retryable(), "{error}"),
    }
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_refusal_fails_at_once() {
    let Some(real) = Real::start("a_refusal_fails_at_once") else {
        return;
    };
    real.api.set_reply(|_| Reply::Stop {
        text: String::new(),
        stop_reason: "refusal".into(),
    });
    let session = real
        .builder()
        .max_retries(3)
        .concurrency(1)
        .build()
        .unwrap();
    let error = session.query("something refused").unwrap_err();
    assert!(matches!(error, Error::Refused { .. }), "{error}");
    // The library does not retry it; newer CLIs (2.1.332) ask once more by themselves.
    assert_eq!(session.stats().retried, 0);
    assert!(
        real.api.request_count() <= 2,
        "{}",
        real.api.request_count()
    );
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_model_that_does_not_exist_stops_the_run() {
    let Some(real) = Real::start("a_model_that_does_not_exist_stops_the_run") else {
        return;
    };
    real.api.set_reply(|_| Reply::status(404, None));
    let session = real.builder().concurrency(2).build().unwrap();
    let items: Vec<u32> = (0..20).collect();
    let outcome: Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |i| format!("item {i}"))
        .collect();
    assert_eq!(outcome.dead_letter.len(), 20);
    assert!(outcome
        .dead_letter
        .iter()
        .any(|f| matches!(&f.error, Error::ModelNotFound { message } if message.contains("claude-sonnet-4-5"))));
    // The CLI makes up to two calls per item (a streaming one, then one without); at most
    // `concurrency` items are tried before the run stops.
    let calls = real.api.request_count();
    assert!(calls <= 4, "{calls} calls for 20 items on a missing model");
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_call_the_cli_sends_again_after_a_cut_stream_is_counted() {
    let Some(real) = Real::start("a_call_the_cli_sends_again_after_a_cut_stream_is_counted") else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    // Every other call's stream is cut; the CLI sends it again without streaming, with no
    // api_retry line.
    real.api.set_reply(move |p| {
        if seen.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
            Reply::Fault(Fault::CutStream)
        } else {
            Reply::text(format!("answer to {p}"))
        }
    });
    let session = real.builder().concurrency(1).build().unwrap();
    // 2.1.197 shows the cut call's start; 2.1.332 shows nothing of it (it sends the call again
    // without a trace in its output), so there only the answer is checked.
    let version = std::process::Command::new(&real.cli)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let shows_cut_calls = version.starts_with("2.1.197 ");
    for i in 0..5 {
        let response = session.query(format!("item {i}")).unwrap();
        assert_eq!(response.text, format!("answer to item {i}"));
        if shows_cut_calls {
            assert_eq!(response.api_calls, 2);
        }
    }
    let stats = session.stats();
    assert_eq!(real.api.request_count(), 10);
    let counted = stats.requests + stats.cli_api_retries;
    if shows_cut_calls {
        assert_eq!(
            counted, 10,
            "the calls the API received, all counted: {stats:?}"
        );
    } else {
        assert!(counted <= 10, "{stats:?}");
        eprintln!(
            "NOTICE: CLI {} hides calls sent again after a cut stream: {counted} of 10 counted",
            version.trim()
        );
    }
}
