//! `claude_map`: order, exactly-once accounting, panics, cancel, fatal stop, nesting, and
//! where the calls run. On both backends but for the tests about thread names.

use crate::{on_both_backends, support};

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use claude_rayon::prelude::*;
use claude_rayon::{Cancel, Error, Failed, Outcome, Response};
use rayon::prelude::*;
use support::backends::{Kind, TestBackend};
use support::{quick_retries, wait_until, Fake};

fn results_come_back_in_input_order_under_random_latencies(b: &TestBackend) {
    let session = b.builder().concurrency(4).build().unwrap();
    let items: Vec<u32> = (0..60).collect();
    let results: Vec<_> = items
        .par_iter()
        .claude_map(&session, |i| {
            format!("[[sim:delay={}]] item {i}", (**i * 37) % 23)
        })
        .collect();
    assert_eq!(results.len(), 60);
    for (i, result) in results.into_iter().enumerate() {
        let (item, response) = result.unwrap();
        assert_eq!(*item as usize, i);
        assert!(
            response.text.ends_with(&format!("item {i}")),
            "{}",
            response.text
        );
    }
}

fn every_item_ends_exactly_once_in_the_outcome(b: &TestBackend) {
    let session = b
        .builder()
        .concurrency(3)
        .retry_policy(quick_retries(0))
        .build()
        .unwrap();
    let items: Vec<String> = (0..50).map(|i| format!("doc-{i}")).collect();
    let outcome: Outcome<(String, Response), String> = items
        .clone()
        .into_par_iter()
        .claude_map(&session, |d| {
            let n: u32 = d[4..].parse().unwrap();
            if n % 7 == 0 {
                format!("[[sim:error=400]] {d}")
            } else {
                d.clone()
            }
        })
        .collect();
    assert_eq!(outcome.len(), 50);
    assert_eq!(outcome.dead_letter.len(), 8); // 0, 7, ..., 49
    let mut seen: Vec<String> = outcome.ok.iter().map(|(d, _)| d.clone()).collect();
    seen.extend(outcome.dead_letter.iter().map(|f| f.item.clone()));
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 50, "no item twice, none lost");
    for failed in &outcome.dead_letter {
        assert!(matches!(
            failed.error,
            Error::Api {
                status: Some(400),
                ..
            }
        ));
        assert_eq!(failed.attempts, 1);
    }
    // Successes and failures each keep input order.
    let ok_order: Vec<&String> = outcome.ok.iter().map(|(d, _)| d).collect();
    let mut sorted = ok_order.clone();
    sorted.sort_by_key(|d| d[4..].parse::<u32>().unwrap());
    assert_eq!(ok_order, sorted);
}

fn a_panicking_prompt_closure_fails_only_its_item(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let outcome: Outcome<_, _> = (0..20u32)
        .into_par_iter()
        .claude_map(&session, |i| {
            if *i == 5 {
                panic!("cannot build a prompt for {i}");
            }
            format!("item {i}")
        })
        .collect();
    assert_eq!(outcome.ok.len(), 19);
    let failed = &outcome.dead_letter[0];
    assert_eq!(failed.item, 5);
    assert_eq!(failed.attempts, 0);
    assert!(
        matches!(&failed.error, Error::Panicked(m) if m.contains("cannot build a prompt for 5"))
    );
}

fn cancel_from_another_thread_stops_new_items_and_hands_the_rest_back(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let cancel = Cancel::new();
    let outcome: Outcome<_, u32> = std::thread::scope(|s| {
        let watcher_session = session.clone();
        let watcher_cancel = cancel.clone();
        s.spawn(move || {
            wait_until("some items done", Duration::from_secs(20), || {
                watcher_session.stats().succeeded >= 4
            });
            watcher_cancel.cancel();
        });
        (0..200u32)
            .into_par_iter()
            .claude_map(&session, |i| format!("[[sim:delay=20]] {i}"))
            .with_cancel(&cancel)
            .collect()
    });
    assert_eq!(outcome.len(), 200);
    assert!(
        outcome.ok.len() >= 4 && outcome.ok.len() < 200,
        "{}",
        outcome.ok.len()
    );
    assert!(outcome
        .dead_letter
        .iter()
        .all(|f| matches!(f.error, Error::Cancelled) && f.attempts == 0));
    // Items in flight finished: every started item succeeded.
    let stats = session.stats();
    assert_eq!(stats.succeeded as usize, outcome.ok.len());
    assert_eq!(b.prompts_seen().len(), outcome.ok.len());
}

fn an_authentication_failure_stops_the_run_without_another_call(b: &TestBackend) {
    let session = b.builder().concurrency(1).build().unwrap();
    let results: Vec<Result<(u32, Response), Failed<u32>>> = (0..10u32)
        .into_par_iter()
        .claude_map(&session, |i| {
            if *i == 2 {
                "[[sim:error=401]]".to_string()
            } else {
                format!("item {i}")
            }
        })
        .collect();
    assert_eq!(b.prompts_seen().len(), 3, "no call after the 401");
    assert!(results[0].is_ok() && results[1].is_ok());
    assert!(matches!(
        results[2].as_ref().unwrap_err().error,
        Error::Authentication { .. }
    ));
    for result in &results[3..] {
        let failed = result.as_ref().unwrap_err();
        assert_eq!(failed.attempts, 0);
        match &failed.error {
            Error::Stopped(cause) => assert!(matches!(**cause, Error::Authentication { .. })),
            other => panic!("{other:?}"),
        }
    }
    // The next run on the same session starts afresh.
    let again: Vec<_> = vec![1u32]
        .into_par_iter()
        .claude_map(&session, |i| format!("again {i}"))
        .collect();
    assert!(again[0].is_ok());
}

// CLI only, as the other tests about thread names.
#[test]
fn calls_run_on_the_sessions_own_threads_whoever_drives() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(2).build().unwrap();
    let prefix = support::thread_prefix(&session);
    let names = Mutex::new(Vec::new());
    let run = || {
        let _: Vec<_> = (0..6u32)
            .into_par_iter()
            .claude_map(&session, |i| {
                names
                    .lock()
                    .unwrap()
                    .push(std::thread::current().name().unwrap_or("").to_string());
                format!("{i}")
            })
            .collect();
    };
    run(); // from the test thread
    std::thread::spawn(|| ()).join().unwrap();
    std::thread::scope(|s| {
        s.spawn(run); // from a plain thread
    });
    rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap()
        .install(run); // from another pool
    rayon::spawn(|| ());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 18);
    assert!(names.iter().all(|n| n.starts_with(&prefix)), "{names:?}");
}

// CLI only: thread names.
#[test]
fn chained_adaptors_on_two_sessions_each_use_their_own_threads() {
    let fake_a = Fake::new();
    let fake_b = Fake::new();
    let a = fake_a.builder().concurrency(2).build().unwrap();
    let b = fake_b.builder().concurrency(3).build().unwrap();
    let (prefix_a, prefix_b) = (support::thread_prefix(&a), support::thread_prefix(&b));
    assert_ne!(prefix_a, prefix_b);
    let on_a = AtomicUsize::new(0);
    let on_b = AtomicUsize::new(0);
    let results: Vec<_> = (0..12u32)
        .into_par_iter()
        .claude_map(&a, |i| {
            let name = std::thread::current().name().unwrap_or("").to_string();
            if name.starts_with(&prefix_a) {
                on_a.fetch_add(1, Ordering::SeqCst);
            }
            format!("first {i}")
        })
        .map(|r| r.unwrap().1.text)
        .claude_map(&b, |text| {
            let name = std::thread::current().name().unwrap_or("").to_string();
            if name.starts_with(&prefix_b) {
                on_b.fetch_add(1, Ordering::SeqCst);
            }
            format!("second ({text})")
        })
        .collect();
    assert_eq!(on_a.load(Ordering::SeqCst), 12);
    assert_eq!(on_b.load(Ordering::SeqCst), 12);
    assert_eq!(
        results[3].as_ref().unwrap().1.text,
        "echo: second (echo: first 3)"
    );
    // Each session also answered the one item that told its thread names.
    assert_eq!(fake_a.prompts().len(), 13);
    assert_eq!(fake_b.prompts().len(), 13);
}

fn a_prompt_closure_that_uses_claude_itself_does_not_deadlock(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let inner_session = session.clone();
    std::thread::spawn(move || {
        let results: Vec<_> = (0..6u32)
            .into_par_iter()
            .claude_map(&inner_session, |i| {
                // Nested: a whole run on the same session inside the prompt closure.
                let inner: Vec<_> = (0..3u32)
                    .into_par_iter()
                    .claude_map(&inner_session, |j| format!("inner {i}.{j}"))
                    .collect();
                let summary = inner.len();
                let direct = inner_session.query(format!("direct {i}")).unwrap();
                format!("outer {i} after {summary} inner and {}", direct.text)
            })
            .collect();
        tx.send(results).unwrap();
    });
    let results = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("nested use finished (no deadlock)");
    assert_eq!(results.len(), 6);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(b.prompts_seen().len(), 6 + 18 + 6);
}

fn empty_input_and_sequential_outcome(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let none: Vec<_> = Vec::<u32>::new()
        .into_par_iter()
        .claude_map(&session, |i| format!("{i}"))
        .collect();
    assert!(none.is_empty());
    assert!(b.prompts_seen().is_empty(), "no call for no work");
    if b.kind() == Kind::Cli {
        assert_eq!(
            session.stats().processes_started,
            0,
            "no process for no work"
        );
    }
    let outcome: Outcome<u32, u32> = vec![
        Ok(1),
        Err(Failed {
            item: 2,
            error: Error::Cancelled,
            attempts: 0,
        }),
    ]
    .into_iter()
    .collect();
    assert_eq!((outcome.ok, outcome.dead_letter.len()), (vec![1], 1));
}

fn an_unindexed_base_works_too(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let results: Vec<_> = (0..30u32)
        .into_par_iter()
        .filter(|i| i % 3 == 0)
        .claude_map(&session, |i| format!("n{i}"))
        .collect();
    let texts: Vec<String> = results.into_iter().map(|r| r.unwrap().1.text).collect();
    let expected: Vec<String> = (0..30)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("echo: n{i}"))
        .collect();
    assert_eq!(texts, expected);
}

on_both_backends!(
    results_come_back_in_input_order_under_random_latencies,
    every_item_ends_exactly_once_in_the_outcome,
    a_panicking_prompt_closure_fails_only_its_item,
    cancel_from_another_thread_stops_new_items_and_hands_the_rest_back,
    an_authentication_failure_stops_the_run_without_another_call,
    a_prompt_closure_that_uses_claude_itself_does_not_deadlock,
    empty_input_and_sequential_outcome,
    an_unindexed_base_works_too,
);
