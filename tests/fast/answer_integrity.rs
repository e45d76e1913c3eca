//! Fast tier: answers that are not whole or not answers come back typed, and the calls a
//! turn really made are counted. The real CLI's side is in `tests/real/answer_integrity.rs`.

use crate::support;

use claude_rayon::prelude::*;
use claude_rayon::{Error, Failed, Outcome, Response, Session};
use rayon::prelude::*;
use support::{one_at_a_time, one_at_a_time_retrying, Fake};

/// An item as a user writes one, after a directive for the simulator (which echoes it).
fn ticket(directive: &str) -> String {
    format!(
        "{directive} Hello, I ordered a pair of waterproof walking boots three weeks ago and the \
         tracking page has said 'in transit' for nine days. I am leaving for a hiking trip on \
         the 14th and need them before then. Could you tell me where the parcel is, and if it \
         is lost, whether you can send a replacement by express delivery?"
    )
}

/// Ask `prompt` and check its answer came back whole: `before`, then the simulator's echo of
/// the prompt, from `continuations` continuations in `api_calls` calls.
#[track_caller]
fn assert_whole(
    session: &Session,
    prompt: &str,
    before: &str,
    (continuations, api_calls): (u32, u32),
) -> Response {
    let response = session.query(prompt).unwrap();
    assert_eq!(response.text, format!("{before}echo: {prompt}"));
    assert_eq!(
        (response.continuations, response.api_calls),
        (continuations, api_calls)
    );
    response
}

/// Run the one item `item` through `claude_map` and take its failure.
#[track_caller]
fn the_failure(session: &Session, item: impl Into<String>) -> Failed<String> {
    let outcome: Outcome<_, _> = vec![item.into()]
        .into_par_iter()
        .claude_map(session, |s| s.to_string())
        .collect();
    outcome
        .dead_letter
        .into_iter()
        .next()
        .expect("the item failed")
}

/// A refusal fails its item at once: one call, no retry.
#[track_caller]
fn assert_refused_at_once(fake: &Fake, failed: &Failed<String>) {
    assert!(
        matches!(failed.error, Error::Refused { .. }),
        "{}",
        failed.error
    );
    assert_eq!(failed.attempts, 1);
    assert_eq!(fake.prompts().len(), 1);
}

/// Forty items through `claude_map` on two processes, each prompt `directive` and the item's
/// number; every one must fail.
#[track_caller]
fn forty_failing_items(fake: &Fake, directive: &str) -> Outcome<(u32, Response), u32> {
    let session = fake.builder().concurrency(2).build().unwrap();
    let outcome: Outcome<_, _> = (0..40u32)
        .into_par_iter()
        .claude_map(&session, |i| format!("{directive} {i}"))
        .collect();
    assert_eq!(outcome.dead_letter.len(), 40);
    outcome
}

#[test]
fn an_answer_the_cli_continued_comes_back_whole() {
    let fake = Fake::new();
    let session = one_at_a_time(fake.builder());
    let prompt = "[[sim:continue=First part, |second part, ]] x";
    let response = assert_whole(&session, prompt, "First part, second part, ", (2, 3));
    assert_eq!(response.stop_reason.as_deref(), Some("end_turn"));
    // Every call counts as a request.
    assert_eq!(session.stats().requests, 3);
    assert_whole(&session, "plain", "", (0, 1));
}

#[test]
fn an_answer_cut_at_the_output_limit_is_an_error_that_keeps_the_part() {
    let fake = Fake::new();
    let session = one_at_a_time(fake.builder());
    match session.query("[[sim:stop=max_tokens]] long") {
        Err(Error::Truncated {
            stop_reason,
            partial,
        }) => {
            assert_eq!(stop_reason, "max_tokens");
            assert!(partial.starts_with("echo: "), "{partial}");
        }
        other => panic!("{other:?}"),
    }
    // Not retried: the same item would be cut again.
    assert_eq!(fake.prompts().len(), 1);
}

#[test]
fn a_refusal_fails_at_once_without_retries() {
    let fake = Fake::new();
    let session = one_at_a_time_retrying(fake.builder(), 3);
    let failed = the_failure(&session, "[[sim:stop=refusal]] bad");
    assert_refused_at_once(&fake, &failed);
}

#[test]
fn a_model_that_does_not_exist_stops_the_run() {
    let fake = Fake::new();
    let outcome = forty_failing_items(&fake, "[[sim:error=404]]");
    assert!(outcome.ok.is_empty());
    let calls = fake.prompts().len();
    assert!(calls <= 2, "{calls} calls for a model that does not exist");
    let first = outcome
        .dead_letter
        .iter()
        .find(|f| f.attempts > 0)
        .expect("one item was tried");
    assert!(matches!(first.error, Error::ModelNotFound { .. }));
    assert!(first.error.to_string().contains("SessionBuilder::model"));
}

#[test]
fn the_clis_own_backoff_pauses_the_shared_throttle() {
    // The CLI prints its jittered delay as a float; it must not read as zero.
    let fake = Fake::new();
    let session = one_at_a_time(fake.builder());
    session.query("[[sim:retry=529,2]] x").unwrap();
    let stats = session.stats();
    assert_eq!(stats.cli_api_retries, 2);
    assert!(stats.backoff_pauses >= 1, "{stats:?}");
}

#[test]
fn an_unreachable_api_stops_the_run_with_one_clear_error() {
    let fake = Fake::new();
    let outcome = forty_failing_items(&fake, "[[sim:error=unreachable]]");
    let calls = fake.prompts().len();
    assert!(calls <= 6, "{calls} calls to an API that cannot be reached");
    let unreachable = outcome
        .dead_letter
        .iter()
        .find(|f| matches!(f.error, Error::ApiUnreachable { .. }))
        .expect("one item says the API cannot be reached");
    assert!(unreachable.error.to_string().contains("HTTPS_PROXY"));
    // A success in between resets the count: a blip is not an outage.
    let session = one_at_a_time_retrying(fake.builder(), 0);
    for i in 0..6 {
        let _ = session.query(format!("[[sim:error=unreachable]] blip {i}"));
        session.query("fine").unwrap();
    }
}

#[test]
fn a_message_that_did_not_end_at_the_limit_is_not_part_of_the_answer() {
    // A stream cut after its text, sent again whole: the first message is not a part.
    let fake = Fake::new();
    let session = one_at_a_time(fake.builder());
    assert_whole(&session, "[[sim:repeat=partial]] same", "", (0, 2));
}

#[test]
fn an_answer_whose_stream_ended_early_is_incomplete_and_asked_again() {
    // The CLI (2.1.197) took a stream that ended without a stop reason for the answer.
    let fake = Fake::new();
    let session = one_at_a_time_retrying(fake.builder(), 2);
    let failed = the_failure(&session, ticket("[[sim:ends-early]]"));
    match &failed.error {
        Error::IncompleteAnswer {
            stop_reason: None,
            partial,
        } => assert!(partial.starts_with("echo: [[sim:ends-early]]"), "{partial}"),
        other => panic!("{other:?}"),
    }
    assert!(failed.error.is_retryable());
    assert_eq!(failed.attempts, 3);
    assert_eq!(fake.prompts().len(), 3);
    assert_eq!(session.stats().requests, 3);
}

#[test]
fn a_stream_the_cli_resumed_comes_back_whole() {
    let fake = Fake::new();
    let session = one_at_a_time(fake.builder());
    let before = "Thank you for writing; the boots left on the 3rd, ";
    let prompt = ticket(&format!("[[sim:resumed={before}]]"));
    assert_whole(&session, &prompt, before, (1, 2));
    assert_eq!(session.stats().requests, 2);
}

#[test]
fn continuations_under_one_message_id_come_back_whole() {
    let fake = Fake::new();
    let session = one_at_a_time(fake.builder());
    let prompt = ticket("[[sim:same-ids]] [[sim:continue=First part, |second part, ]]");
    assert_whole(&session, &prompt, "First part, second part, ", (2, 3));
    let prompt = ticket("[[sim:same-ids]] [[sim:resumed=The boots left on the 3rd, ]]");
    assert_whole(&session, &prompt, "The boots left on the 3rd, ", (1, 2));
    assert_eq!(session.stats().requests, 5);
}

#[test]
fn a_refusal_the_cli_asked_again_is_still_a_refusal() {
    let fake = Fake::new();
    let session = one_at_a_time_retrying(fake.builder(), 3);
    let failed = the_failure(&session, ticket("[[sim:refused-first]]"));
    assert_refused_at_once(&fake, &failed);
    // Both calls the CLI made are counted.
    assert_eq!(session.stats().requests, 2);
}

#[test]
fn a_paused_turn_is_an_incomplete_answer() {
    let fake = Fake::new();
    let session = one_at_a_time_retrying(fake.builder(), 0);
    match session.query(ticket("[[sim:stop=pause_turn]]")) {
        Err(Error::IncompleteAnswer {
            stop_reason,
            partial,
        }) => {
            assert_eq!(stop_reason.as_deref(), Some("pause_turn"));
            assert!(partial.starts_with("echo: "), "{partial}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(session.stats().requests, 1);
}
