//! `claude_filter`: strict yes/no verdicts, the one re-prompt, and nothing silently dropped;
//! on both backends.

use crate::{on_both_backends, support};

use claude_rayon::prelude::*;
use claude_rayon::{Error, Failed};
use rayon::prelude::*;
use serde_json::json;
use support::backends::TestBackend;
use support::quick_retries;

fn accepted_verdict_forms_keep_or_drop(b: &TestBackend) {
    let session = b.builder().concurrency(3).build().unwrap();
    let answers = [
        ("Yes.", true),
        ("NO", false),
        (" true", true),
        ("False", false),
        ("**yes**", true),
        ("\"no\"", false),
        ("yes!", true),
    ];
    let items: Vec<(usize, &str, bool)> = answers
        .iter()
        .enumerate()
        .map(|(i, (a, keep))| (i, *a, *keep))
        .collect();
    type Case<'a> = (usize, &'a str, bool);
    let kept: Vec<Result<Case, Failed<Case>>> = items
        .clone()
        .into_par_iter()
        .claude_filter(&session, |(_, answer, _)| {
            format!("[[sim:reply={answer}]] keep?")
        })
        .collect();
    let kept: Vec<usize> = kept.into_iter().map(|r| r.unwrap().0).collect();
    let expected: Vec<usize> = items.iter().filter(|i| i.2).map(|i| i.0).collect();
    assert_eq!(kept, expected);
    // One call per item: no re-prompt was needed.
    assert_eq!(b.prompts_seen().len(), answers.len());
    // The instruction and the allowed set went with the question.
    let first = &b.prompts_seen()[0];
    assert!(first.ends_with("Allowed answers: yes | no"), "{first}");
}

fn refusals_and_ambiguous_answers_fail_after_one_reprompt_quoting_the_answer(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let bad = [
        "Yes and no",
        "I cannot determine that from the text.",
        "not found",
        "Y",
    ];
    let results: Vec<_> = bad
        .par_iter()
        .claude_filter(&session, |answer| format!("[[sim:reply={answer}]] judge"))
        .collect();
    assert_eq!(results.len(), bad.len(), "a failed item is never dropped");
    for (result, answer) in results.iter().zip(bad) {
        let failed = result.as_ref().unwrap_err();
        assert_eq!(failed.item, &answer);
        assert_eq!(failed.attempts, 2, "the re-prompt counts as an attempt");
        match &failed.error {
            Error::InvalidAnswer {
                answer: quoted,
                allowed,
            } => {
                assert_eq!(quoted, answer);
                assert_eq!(allowed, &vec!["yes".to_string(), "no".to_string()]);
            }
            other => panic!("{other:?}"),
        }
    }
    let prompts = b.prompts_with_context();
    assert_eq!(prompts.len(), 8, "one re-prompt per item");
    let reminder = prompts
        .iter()
        .find(|(p, _)| p.contains("Yes and no\", which is not an allowed answer"))
        .expect("the re-prompt quotes the bad answer");
    assert!(reminder.0.ends_with("Allowed answers: yes | no"));
    assert_eq!(reminder.1, 1, "the re-prompt has fresh context");
    let stats = session.stats();
    assert_eq!((stats.started, stats.failed, stats.requests), (4, 4, 8));
}

fn the_reminder_path_recovers_on_a_good_second_answer(b: &TestBackend) {
    let session = b.builder().concurrency(1).build().unwrap();
    let results: Vec<_> = vec!["a", "b"]
        .into_par_iter()
        .claude_filter(&session, |k| {
            format!(
                "[[sim:replies={k},Well, it depends|{}]] q",
                if *k == "a" { "Yes" } else { "no." }
            )
        })
        .collect();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].as_ref().unwrap(), &"a");
    let stats = session.stats();
    assert_eq!((stats.started, stats.succeeded, stats.requests), (2, 2, 4));
    assert!(stats.cost_usd > 0.0);
}

fn empty_input_and_api_failures_come_back_with_their_items(b: &TestBackend) {
    let session = b
        .builder()
        .concurrency(2)
        .retry_policy(quick_retries(0))
        .build()
        .unwrap();
    let none: Vec<Result<u32, Failed<u32>>> = Vec::<u32>::new()
        .into_par_iter()
        .claude_filter(&session, |i| format!("{i}"))
        .collect();
    assert!(none.is_empty());
    let results: Vec<_> = (0..10u32)
        .into_par_iter()
        .claude_filter(&session, |i| {
            if i % 4 == 0 {
                format!("[[sim:error=500]] {i}")
            } else {
                format!("[[sim:reply=yes]] {i}")
            }
        })
        .collect();
    assert_eq!(results.len(), 10);
    let failed: Vec<u32> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|f| f.item))
        .collect();
    assert_eq!(failed, vec![0, 4, 8]);
}

fn a_session_with_a_json_schema_is_refused_without_a_call(b: &TestBackend) {
    let session = b
        .builder()
        .json_schema(json!({"type": "object"}))
        .build()
        .unwrap();
    let results: Vec<_> = vec![1, 2]
        .into_par_iter()
        .claude_filter(&session, |i| format!("{i}"))
        .collect();
    assert_eq!(results.len(), 2);
    for result in results {
        let failed = result.unwrap_err();
        assert!(matches!(&failed.error, Error::InvalidConfig(m) if m.contains("json_schema")));
    }
    assert!(b.prompts_seen().is_empty());
}

fn par_claude_filter_borrows_or_consumes(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let docs: Vec<String> = vec!["[[sim:reply=yes]] a".into(), "[[sim:reply=no]] b".into()];
    let borrowed: Vec<_> = (&docs)
        .par_claude_filter(&session, |d| d.to_string())
        .collect();
    assert_eq!(borrowed.len(), 1);
    assert_eq!(*borrowed[0].as_ref().unwrap(), &docs[0]);
    let consumed: Vec<_> = docs.par_claude_filter(&session, |d| d.clone()).collect();
    assert_eq!(consumed[0].as_ref().unwrap(), "[[sim:reply=yes]] a");
    let mapped: Vec<_> = vec![1, 2]
        .par_claude_map(&session, |i| format!("m{i}"))
        .collect();
    assert_eq!(mapped[1].as_ref().unwrap().1.text, "echo: m2");
}

on_both_backends!(
    accepted_verdict_forms_keep_or_drop,
    refusals_and_ambiguous_answers_fail_after_one_reprompt_quoting_the_answer,
    the_reminder_path_recovers_on_a_good_second_answer,
    empty_input_and_api_failures_come_back_with_their_items,
    a_session_with_a_json_schema_is_refused_without_a_call,
    par_claude_filter_borrows_or_consumes,
);
