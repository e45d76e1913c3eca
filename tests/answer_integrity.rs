//! Fast tier: answers that are not whole or not answers come back typed, and the calls a
//! turn really made are counted. The real CLI's side is in `real_answer_integrity.rs`.

mod support;

use claude_rayon::prelude::*;
use claude_rayon::{Error, Outcome};
use rayon::prelude::*;
use support::{quick_retries, Fake};

/// An item as a user writes one, after a directive for the simulator (which echoes it).
fn ticket(directive: &str) -> String {
    format!(
        "{directive} Hello, I ordered a pair of waterproof walking boots three weeks ago and the \
         tracking page has said 'in transit' for nine days. I am leaving for a hiking trip on \
         the 14th and need them before then. Could you tell me where the parcel is, and if it \
         is lost, whether you can send a replacement by express delivery?"
    )
}

#[test]
fn an_answer_the_cli_continued_comes_back_whole() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
    let prompt = "[[sim:continue=First part, |second part, ]] x";
    let response = session.query(prompt).unwrap();
    assert_eq!(
        response.text,
        format!("First part, second part, echo: {prompt}")
    );
    assert_eq!((response.continuations, response.api_calls), (2, 3));
    assert_eq!(response.stop_reason.as_deref(), Some("end_turn"));
    // Every call counts as a request.
    assert_eq!(session.stats().requests, 3);
    let plain = session.query("plain").unwrap();
    assert_eq!(
        (plain.text.as_str(), plain.continuations, plain.api_calls),
        ("echo: plain", 0, 1)
    );
}

#[test]
fn an_answer_cut_at_the_output_limit_is_an_error_that_keeps_the_part() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
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
    let session = fake
        .builder()
        .retry_policy(quick_retries(3))
        .concurrency(1)
        .build()
        .unwrap();
    let items = vec!["[[sim:stop=refusal]] bad"];
    let outcome: Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |s| s.to_string())
        .collect();
    let failed = &outcome.dead_letter[0];
    assert!(
        matches!(failed.error, Error::Refused { .. }),
        "{}",
        failed.error
    );
    assert_eq!(failed.attempts, 1);
    assert_eq!(fake.prompts().len(), 1);
}

#[test]
fn a_model_that_does_not_exist_stops_the_run() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(2).build().unwrap();
    let items: Vec<u32> = (0..40).collect();
    let outcome: Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |i| format!("[[sim:error=404]] {i}"))
        .collect();
    assert!(outcome.ok.is_empty());
    assert_eq!(outcome.dead_letter.len(), 40);
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
    let session = fake.builder().concurrency(1).build().unwrap();
    session.query("[[sim:retry=529,2]] x").unwrap();
    let stats = session.stats();
    assert_eq!(stats.cli_api_retries, 2);
    assert!(stats.backoff_pauses >= 1, "{stats:?}");
}

#[test]
fn an_unreachable_api_stops_the_run_with_one_clear_error() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(2).build().unwrap();
    let items: Vec<u32> = (0..40).collect();
    let outcome: Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |i| format!("[[sim:error=unreachable]] {i}"))
        .collect();
    assert_eq!(outcome.dead_letter.len(), 40);
    let calls = fake.prompts().len();
    assert!(calls <= 6, "{calls} calls to an API that cannot be reached");
    let unreachable = outcome
        .dead_letter
        .iter()
        .find(|f| matches!(f.error, Error::ApiUnreachable { .. }))
        .expect("one item says the API cannot be reached");
    assert!(unreachable.error.to_string().contains("HTTPS_PROXY"));
    // A success in between resets the count: a blip is not an outage.
    let session = fake
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(0))
        .build()
        .unwrap();
    for i in 0..6 {
        let _ = session.query(format!("[[sim:error=unreachable]] blip {i}"));
        session.query("fine").unwrap();
    }
}

#[test]
fn a_message_that_did_not_end_at_the_limit_is_not_part_of_the_answer() {
    // A stream cut after its text, sent again whole: the first message is not a part.
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
    let prompt = "[[sim:repeat=partial]] same";
    let response = session.query(prompt).unwrap();
    assert_eq!(response.text, format!("echo: {prompt}"));
    assert_eq!((response.continuations, response.api_calls), (0, 2));
}

#[test]
fn an_answer_whose_stream_ended_early_is_incomplete_and_asked_again() {
    // The CLI (2.1.197) took a stream that ended without a stop reason for the answer.
    let fake = Fake::new();
    let session = fake
        .builder()
        .retry_policy(quick_retries(2))
        .concurrency(1)
        .build()
        .unwrap();
    let items = vec![ticket("[[sim:ends-early]]")];
    let outcome: Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |s| s.to_string())
        .collect();
    let failed = &outcome.dead_letter[0];
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
    let session = fake.builder().concurrency(1).build().unwrap();
    let prompt = ticket("[[sim:resumed=Thank you for writing; the boots left on the 3rd, ]]");
    let response = session.query(&prompt).unwrap();
    assert_eq!(
        response.text,
        format!("Thank you for writing; the boots left on the 3rd, echo: {prompt}")
    );
    assert_eq!((response.continuations, response.api_calls), (1, 2));
    assert_eq!(session.stats().requests, 2);
}

#[test]
fn continuations_under_one_message_id_come_back_whole() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
    let prompt = ticket("[[sim:same-ids]] [[sim:continue=First part, |second part, ]]");
    let response = session.query(&prompt).unwrap();
    assert_eq!(
        response.text,
        format!("First part, second part, echo: {prompt}")
    );
    assert_eq!((response.continuations, response.api_calls), (2, 3));
    let prompt = ticket("[[sim:same-ids]] [[sim:resumed=The boots left on the 3rd, ]]");
    let response = session.query(&prompt).unwrap();
    assert_eq!(
        response.text,
        format!("The boots left on the 3rd, echo: {prompt}")
    );
    assert_eq!((response.continuations, response.api_calls), (1, 2));
    assert_eq!(session.stats().requests, 5);
}

#[test]
fn a_refusal_the_cli_asked_again_is_still_a_refusal() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .retry_policy(quick_retries(3))
        .concurrency(1)
        .build()
        .unwrap();
    let items = vec![ticket("[[sim:refused-first]]")];
    let outcome: Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |s| s.to_string())
        .collect();
    let failed = &outcome.dead_letter[0];
    assert!(
        matches!(failed.error, Error::Refused { .. }),
        "{}",
        failed.error
    );
    assert_eq!(failed.attempts, 1);
    assert_eq!(fake.prompts().len(), 1);
    // Both calls the CLI made are counted.
    assert_eq!(session.stats().requests, 2);
}

#[test]
fn a_paused_turn_is_an_incomplete_answer() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .retry_policy(quick_retries(0))
        .concurrency(1)
        .build()
        .unwrap();
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
