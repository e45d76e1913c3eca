//! Real tier: answers that are not whole or not answers, through the real CLI and the mock
//! API: an answer the CLI continued after the output limit comes back whole; a stream that
//! ended early is never taken for the answer; a refusal fails at once, also when the CLI asks
//! again by itself; a paused turn is not an answer; continuations are joined whatever their
//! message ids; a model that does not exist stops the run. Every call the mock received is
//! counted in `Response::api_calls` and `stats().requests`.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use claude_rayon::prelude::*;
use claude_rayon::{Error, Outcome, Session};
use rayon::prelude::*;
use support::mock_api::{Fault, RecordedRequest, Reply};
use support::{one_at_a_time, one_at_a_time_retrying, Real};

/// An item as a user writes one: a support ticket.
const TICKET: &str = "Hello, I ordered a pair of waterproof walking boots (size 43, brown) three \
weeks ago and the tracking page has said 'in transit' for the last nine days. I am leaving for a \
hiking trip in the Highlands on the 14th and really need them before then. Could you tell me \
where the parcel actually is, and if it is lost, whether you can send a replacement by express \
delivery? My order number is on the confirmation email you sent on the 2nd.";
/// The first part of the answer to [`TICKET`], the part a cut stream delivers.
const FIRST_PART: &str = "Thank you for writing, and sorry for the wait. Your boots left our \
warehouse on the 3rd, and the courier's record shows the parcel held at the depot nearest you \
since Tuesday because of a damaged address label. ";
/// The rest of the answer.
const REST: &str = "We have asked the courier to deliver it tomorrow before noon; if it has not \
arrived by Friday, reply to this message and we will send a new pair by express delivery at \
no cost, well before your trip on the 14th.";

/// Whether the CLI made this request to go on from an answer already given (it carries the
/// model's earlier message): a continuation or a resume, not a fresh ask.
fn goes_on_from_an_answer(request: &RecordedRequest) -> bool {
    request.body["messages"]
        .as_array()
        .is_some_and(|messages| messages.iter().any(|m| m["role"] == "assistant"))
}

/// One text block ending with `stop_reason`.
fn stopped(text: impl Into<String>, stop_reason: &str) -> Reply {
    Reply::Stop {
        text: text.into(),
        stop_reason: stop_reason.into(),
    }
}

/// The mock answers the first call with `first`, every later one with `then`.
fn first_then(real: &Real, first: Reply, then: Reply) {
    let calls = AtomicUsize::new(0);
    real.api.set_reply(move |_| {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            first.clone()
        } else {
            then.clone()
        }
    });
}

/// Ask `prompt` and check it came back refused.
#[track_caller]
fn assert_refused(session: &Session, prompt: &str) {
    let error = session.query(prompt).unwrap_err();
    assert!(matches!(error, Error::Refused { .. }), "{error}");
}

/// Ask `prompt` and check its answer, `text`, came back whole from two calls, both counted.
#[track_caller]
fn assert_whole_from_two_calls(real: &Real, session: &Session, prompt: &str, text: &str) {
    let response = session.query(prompt).unwrap();
    assert_eq!(response.text, text);
    assert_eq!((response.continuations, response.api_calls), (1, 2));
    assert_eq!(real.api.request_count(), 2);
    assert_eq!(session.stats().requests, 2, "both calls counted");
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn an_answer_cut_at_max_tokens_comes_back_whole() {
    let Some(real) = Real::start("an_answer_cut_at_max_tokens_comes_back_whole") else {
        return;
    };
    let first = stopped("The first half, ", "max_tokens");
    first_then(&real, first, Reply::text("and the second half."));
    let session = one_at_a_time(real.builder());
    let whole = "The first half, and the second half.";
    assert_whole_from_two_calls(&real, &session, "write something long", whole);
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
    let session = one_at_a_time(real.builder());
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
    real.api.set_reply(|_| stopped("", "refusal"));
    let session = one_at_a_time_retrying(real.builder(), 3);
    assert_refused(&session, "something refused");
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
    // Every other call's stream is cut. Left to itself the CLI would send it again without
    // streaming (2.1.332 without a trace in its output: a call nobody counts); sealed, the cut
    // is an error the library retries, and counts.
    real.api.set_reply(move |p| {
        if seen.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
            Reply::Fault(Fault::CutStream)
        } else {
            Reply::text(format!("answer to {p}"))
        }
    });
    let session = one_at_a_time(real.builder());
    for i in 0..5 {
        let response = session.query(format!("item {i}")).unwrap();
        assert_eq!(response.text, format!("answer to item {i}"));
        assert_eq!(response.api_calls, 1, "the answer's own call");
    }
    let stats = session.stats();
    assert_eq!(real.api.request_count(), 10);
    assert_eq!(
        stats.requests, 10,
        "the calls the API received, all counted: {stats:?}"
    );
    assert_eq!(stats.retried, 5, "each cut call retried once: {stats:?}");
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_stream_that_ends_without_message_stop_comes_back_whole_or_is_asked_again() {
    let Some(real) =
        Real::start("a_stream_that_ends_without_message_stop_comes_back_whole_or_is_asked_again")
    else {
        return;
    };
    let fresh_asks = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&fresh_asks);
    // The first call's stream ends cleanly after its text, with no message_delta and no
    // message_stop: 2.1.197 answers the part as a success, 2.1.332 asks the model to resume.
    real.api.set_reply_with(move |request| {
        if goes_on_from_an_answer(request) {
            Reply::text(REST)
        } else if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Fault(Fault::EndsBeforeStop {
                text: FIRST_PART.into(),
                stop_reason: None,
            })
        } else {
            Reply::text(format!("{FIRST_PART}{REST}"))
        }
    });
    let session = one_at_a_time_retrying(real.builder(), 1);
    let response = session.query(TICKET).unwrap();
    assert_eq!(response.text, format!("{FIRST_PART}{REST}"));
    let stats = session.stats();
    let received = real.api.request_count() as u64;
    assert_eq!(stats.requests, received, "every call counted: {stats:?}");
    let resumed = real.api.requests().iter().any(goes_on_from_an_answer);
    if resumed {
        // The CLI resumed the cut answer (2.1.332): both parts, both calls, no retry.
        assert_eq!((response.continuations, response.api_calls), (1, 2));
        assert_eq!((stats.retried, received), (0, 2));
    } else {
        // The CLI took the part for the answer (2.1.197): an incomplete answer, asked again.
        assert_eq!((response.continuations, response.api_calls), (0, 1));
        assert_eq!((stats.retried, received), (1, 2));
        let reason = stats.last_retry_reason.unwrap_or_default();
        assert!(reason.contains("did not finish"), "{reason}");
    }
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_refusal_the_cli_asks_again_is_still_a_refusal() {
    let Some(real) = Real::start("a_refusal_the_cli_asks_again_is_still_a_refusal") else {
        return;
    };
    // The first answer is refused; 2.1.332 would ask again by itself (a second paid call)
    // and answer, but the seal turns that off (`CLAUDE_CODE_DISABLE_REFUSAL_RETRY`).
    let refusal = stopped("I can't help with that part of the request.", "refusal");
    first_then(&real, refusal, Reply::text(format!("{FIRST_PART}{REST}")));
    let session = one_at_a_time_retrying(real.builder(), 3);
    assert_refused(&session, TICKET);
    let stats = session.stats();
    assert_eq!(stats.retried, 0, "a refusal is never retried");
    let received = real.api.request_count() as u64;
    assert_eq!(received, 1, "a refused prompt was asked again");
    assert_eq!(stats.requests, received, "every call counted: {stats:?}");
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_paused_turn_is_an_incomplete_answer() {
    let Some(real) = Real::start("a_paused_turn_is_an_incomplete_answer") else {
        return;
    };
    real.api.set_reply(|_| stopped(FIRST_PART, "pause_turn"));
    let session = one_at_a_time_retrying(real.builder(), 0);
    match session.query(TICKET) {
        Err(
            ref error @ Error::IncompleteAnswer {
                ref stop_reason,
                ref partial,
            },
        ) => {
            assert_eq!(stop_reason.as_deref(), Some("pause_turn"));
            assert_eq!(partial, FIRST_PART);
            assert!(error.is_retryable());
        }
        other => panic!("a paused turn came back as {other:?}"),
    }
    assert_eq!(real.api.request_count(), 1);
    assert_eq!(session.stats().requests, 1);
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_continuation_under_the_same_message_id_comes_back_whole() {
    let Some(real) = Real::start("a_continuation_under_the_same_message_id_comes_back_whole")
    else {
        return;
    };
    // A gateway that gives every response the same message id.
    real.api.set_reply_with(|request| {
        if goes_on_from_an_answer(request) {
            Reply::text(REST).with_id("msg_gateway")
        } else {
            stopped(FIRST_PART, "max_tokens").with_id("msg_gateway")
        }
    });
    let session = one_at_a_time(real.builder());
    let whole = format!("{FIRST_PART}{REST}");
    assert_whole_from_two_calls(&real, &session, TICKET, &whole);
}
