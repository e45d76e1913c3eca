//! `claude_group_by`: strict categories, every category present, failures kept; on both
//! backends.

use crate::{on_both_backends, support};

use claude_rayon::prelude::*;
use claude_rayon::Error;
use rayon::prelude::*;
use support::backends::TestBackend;
use support::quick_retries;

const CATEGORIES: [&str; 3] = ["Bug report", "Feature", "Question"];

fn categories_with_odd_case_and_punctuation_are_matched_to_the_given_names(b: &TestBackend) {
    let session = b.builder().concurrency(3).build().unwrap();
    let answers = [
        "bug report",
        "FEATURE.",
        "\"Question\"",
        "**Bug Report**",
        "feature!",
        " question\n",
    ];
    let groups = answers
        .par_iter()
        .claude_group_by(&session, CATEGORIES, |a| {
            format!("[[sim:reply={}]] which?", a.replace('\n', " "))
        })
        .groups();
    assert_eq!(groups.len(), 6);
    assert!(groups.failed.is_empty(), "{:?}", groups.failed);
    assert_eq!(
        groups.get("Bug report").unwrap(),
        &[&answers[0], &answers[3]]
    );
    assert_eq!(groups.get("Feature").unwrap(), &[&answers[1], &answers[4]]);
    assert_eq!(groups.get("Question").unwrap(), &[&answers[2], &answers[5]]);
    let names: Vec<&str> = groups.iter().map(|(n, _)| n).collect();
    assert_eq!(names, CATEGORIES, "the given names, in the given order");
    let prompt = &b.prompts_seen()[0];
    assert!(
        prompt.ends_with("Allowed answers: Bug report | Feature | Question"),
        "{prompt}"
    );
}

fn an_unknown_category_is_never_created(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let groups = vec!["x", "y"]
        .into_par_iter()
        .claude_group_by(&session, CATEGORIES, |k| {
            if *k == "x" {
                "[[sim:reply=Complaint]] which?".to_string()
            } else {
                "[[sim:replies=y,Bug|Feature]] which?".to_string()
            }
        })
        .groups();
    assert_eq!(groups.groups.len(), 3);
    assert!(groups.get("Complaint").is_none());
    assert_eq!(
        groups.get("Feature").unwrap(),
        &["y"],
        "recovered on the re-prompt"
    );
    assert_eq!(groups.failed.len(), 1);
    let failed = &groups.failed[0];
    assert_eq!((failed.item, failed.attempts), ("x", 2));
    assert!(matches!(&failed.error, Error::InvalidAnswer { answer, .. } if answer == "Complaint"));
}

fn empty_input_keeps_every_category(b: &TestBackend) {
    let session = b.builder().build().unwrap();
    let groups = Vec::<String>::new()
        .into_par_iter()
        .claude_group_by(&session, CATEGORIES, |s| s.clone())
        .groups();
    assert!(groups.is_empty());
    assert_eq!(groups.groups.len(), 3);
    assert!(groups.iter().all(|(_, items)| items.is_empty()));
}

fn invalid_categories_fail_every_item_without_a_call(b: &TestBackend) {
    let session = b.builder().build().unwrap();
    for categories in [vec![], vec!["bug", "Bug."], vec!["a|b"]] {
        let groups = vec![1, 2, 3]
            .into_par_iter()
            .claude_group_by(&session, categories.clone(), |i| format!("{i}"))
            .groups();
        assert_eq!(groups.failed.len(), 3, "{categories:?}");
        assert!(groups
            .failed
            .iter()
            .all(|f| matches!(f.error, Error::InvalidConfig(_))));
    }
    assert!(b.prompts_seen().is_empty());
}

fn every_item_ends_exactly_once(b: &TestBackend) {
    let session = b
        .builder()
        .concurrency(4)
        .retry_policy(quick_retries(0))
        .build()
        .unwrap();
    let items: Vec<u32> = (0..40).collect();
    let groups = (&items)
        .par_claude_group_by(&session, ["even", "odd"], |i| {
            if **i % 10 == 3 {
                format!("[[sim:error=400]] {i}")
            } else if **i % 2 == 0 {
                format!("[[sim:reply=Even]] {i}")
            } else {
                format!("[[sim:reply=odd.]] {i}")
            }
        })
        .groups();
    assert_eq!(groups.len(), 40);
    let mut seen: Vec<u32> = groups
        .iter()
        .flat_map(|(_, items)| items.iter().map(|i| **i))
        .collect();
    seen.extend(groups.failed.iter().map(|f| *f.item));
    seen.sort();
    assert_eq!(seen, items);
    assert_eq!(groups.failed.len(), 4);
    assert_eq!(groups.get("even").unwrap().len(), 20);
}

fn a_cancel_stops_a_group_by(b: &TestBackend) {
    let cancel = claude_rayon::Cancel::new();
    let session = b.builder().concurrency(2).build().unwrap();
    let groups = std::thread::scope(|s| {
        let (watch, handle) = (session.clone(), cancel.clone());
        s.spawn(move || {
            support::wait_until(
                "a few items sorted",
                std::time::Duration::from_secs(20),
                || watch.stats().succeeded >= 3,
            );
            handle.cancel();
        });
        (0..200u32)
            .into_par_iter()
            .claude_group_by(&session, ["a", "b"], |i| {
                format!("[[sim:delay=10]] [[sim:reply=a]] {i}")
            })
            .with_cancel(&cancel)
            .groups()
    });
    assert_eq!(groups.len(), 200, "every item accounted for");
    assert!(!groups.failed.is_empty() && groups.failed.len() < 200);
    assert!(groups
        .failed
        .iter()
        .all(|f| matches!(f.error, Error::Cancelled)));
    let stats = session.stats();
    assert_eq!(stats.started, stats.succeeded + stats.failed);
    assert_eq!(stats.failed as usize, groups.failed.len());
    // The cancel belongs to that run only; resetting it lets it be used again.
    cancel.reset();
    let again = vec![1]
        .into_par_iter()
        .claude_group_by(&session, ["a"], |_| "[[sim:reply=a]]")
        .with_cancel(&cancel)
        .groups();
    assert_eq!(again.get("a").unwrap().len(), 1);
}

on_both_backends!(
    categories_with_odd_case_and_punctuation_are_matched_to_the_given_names,
    an_unknown_category_is_never_created,
    empty_input_keeps_every_category,
    invalid_categories_fail_every_item_without_a_call,
    every_item_ends_exactly_once,
    a_cancel_stops_a_group_by,
);
