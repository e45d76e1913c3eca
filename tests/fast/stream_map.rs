//! `claude_stream_map` over plain iterators: order, laziness, the reorder bound, early drop,
//! failures in place, panics, cancel, fatal stop, threads, and nesting. On both backends but
//! for the test about thread names.

use crate::{on_both_backends, support};

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claude_rayon::prelude::*;
use claude_rayon::{Cancel, Error, Session};
use rayon::prelude::*;
use support::backends::{Kind, TestBackend};
use support::{quick_retries, wait_until, Fake};

/// A source that counts how often it handed out an item.
struct Counting<I> {
    inner: I,
    pulled: Arc<AtomicUsize>,
}

impl<I: Iterator> Iterator for Counting<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next();
        if item.is_some() {
            self.pulled.fetch_add(1, Ordering::SeqCst);
        }
        item
    }
}

fn counting<I: Iterator>(inner: I) -> (Counting<I>, Arc<AtomicUsize>) {
    let pulled = Arc::new(AtomicUsize::new(0));
    let source = Counting {
        inner,
        pulled: Arc::clone(&pulled),
    };
    (source, pulled)
}

/// Every call the session started has ended (succeeded or failed), and, when given, there
/// were `n`.
fn wait_for_calls_to_settle(session: &Session, n: Option<u64>) {
    wait_until("every started call ended", Duration::from_secs(10), || {
        let stats = session.stats();
        n.is_none_or(|n| stats.started == n) && stats.succeeded + stats.failed == stats.started
    });
}

fn results_come_back_in_source_order_under_random_latencies(b: &TestBackend) {
    let session = b.builder().concurrency(4).build().unwrap();
    let results: Vec<_> = (0..60u32)
        .claude_stream_map(&session, |i| {
            format!("[[sim:delay={}]] item {i}", (i * 37) % 23)
        })
        .collect();
    assert_eq!(results.len(), 60);
    for (i, result) in results.into_iter().enumerate() {
        let (item, response) = result.unwrap();
        assert_eq!(item as usize, i);
        assert!(
            response.text.ends_with(&format!("item {i}")),
            "{}",
            response.text
        );
    }
    assert_eq!(b.prompts_seen().len(), 60);
}

fn the_source_is_pulled_lazily(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let (source, pulled) = counting(0..1000u32);
    let mut stream = source.claude_stream_map(&session, |i| format!("item {i}"));
    let window = stream.max_outstanding();
    assert_eq!(window, 4, "the default is 2 × concurrency");
    assert_eq!(
        pulled.load(Ordering::SeqCst),
        0,
        "nothing pulled before next()"
    );

    let (first, _) = stream.next().unwrap().unwrap();
    assert_eq!(first, 0);
    let at_first = pulled.load(Ordering::SeqCst);
    assert!(
        (1..=window).contains(&at_first),
        "{at_first} items pulled for the first result"
    );
    for yielded in 2..=10 {
        let (item, _) = stream.next().unwrap().unwrap();
        assert_eq!(item as usize, yielded - 1);
        let now = pulled.load(Ordering::SeqCst);
        assert!(
            now <= yielded - 1 + window,
            "{now} pulled after {yielded} results"
        );
    }
}

/// The head item's prompt closure holds it (on a condition, not a clock) until `bound - 1`
/// items behind it have finished; the source checks, each time it is pulled, how far ahead of
/// the results it runs.
fn check_the_reorder_bound(b: &TestBackend, concurrency: usize, max_outstanding: Option<usize>) {
    let session = b.builder().concurrency(concurrency).build().unwrap();
    let bound = max_outstanding.unwrap_or(2 * concurrency);
    let yielded = Arc::new(AtomicUsize::new(0));
    let most_ahead = Arc::new(AtomicUsize::new(0));
    let (source, pulled) = counting(0..40usize);
    let source = {
        let yielded = Arc::clone(&yielded);
        let most_ahead = Arc::clone(&most_ahead);
        source.inspect(move |_| {
            let ahead = pulled.load(Ordering::SeqCst) - yielded.load(Ordering::SeqCst);
            most_ahead.fetch_max(ahead, Ordering::SeqCst);
        })
    };
    let watcher = session.clone();
    let mut stream = source.claude_stream_map(&session, move |i| {
        if *i == 0 {
            wait_until(
                "the items behind the head filled the reorder window",
                Duration::from_secs(20),
                || watcher.stats().succeeded >= (bound - 1) as u64,
            );
        }
        format!("item {i}")
    });
    if let Some(max) = max_outstanding {
        stream = stream.with_max_outstanding(max);
    }
    assert_eq!(stream.max_outstanding(), bound);
    for (i, result) in stream.enumerate() {
        let (item, _) = result.unwrap();
        assert_eq!(item, i);
        yielded.fetch_add(1, Ordering::SeqCst);
    }
    assert_eq!(yielded.load(Ordering::SeqCst), 40);
    assert_eq!(
        most_ahead.load(Ordering::SeqCst),
        bound,
        "while the head was held the source ran exactly `bound` items ahead, never more"
    );
}

fn a_slow_head_item_holds_back_at_most_the_reorder_bound(b: &TestBackend) {
    check_the_reorder_bound(b, 2, None);
}

fn a_chosen_reorder_bound_is_enforced_too(b: &TestBackend) {
    check_the_reorder_bound(b, 3, Some(5));
}

fn dropping_after_take_stops_pulling_the_source(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let (source, pulled) = counting(0..100u32);
    let stream = source.claude_stream_map(&session, |i| format!("item {i}"));
    let window = stream.max_outstanding();
    let first: Vec<u32> = stream.take(3).map(|r| r.unwrap().0).collect();
    assert_eq!(first, [0, 1, 2]);
    let at_drop = pulled.load(Ordering::SeqCst);
    assert!(
        (3..=2 + window).contains(&at_drop),
        "{at_drop} pulled for 3 results"
    );
    wait_for_calls_to_settle(&session, None);
    assert_eq!(
        pulled.load(Ordering::SeqCst),
        at_drop,
        "not pulled after the drop"
    );
    let prompts = b.prompts_seen().len();
    assert!(
        (3..=at_drop).contains(&prompts),
        "{prompts} prompts for {at_drop} pulled"
    );
}

fn dropping_cancels_items_that_have_not_started_their_call(b: &TestBackend) {
    // One request now, the next in a minute: items after the first wait on the throttle.
    let session = b
        .builder()
        .concurrency(3)
        .requests_per_minute(1)
        .burst(1)
        .build()
        .unwrap();
    let (source, pulled) = counting(0..100u32);
    let watcher = session.clone();
    let mut stream = source.claude_stream_map(&session, move |i| {
        if *i > 0 {
            // Item 0 takes the one request there is; the others then queue on the throttle.
            wait_until("item 0 answered", Duration::from_secs(20), || {
                watcher.stats().succeeded >= 1
            });
        }
        format!("item {i}")
    });
    let (first, _) = stream.next().unwrap().unwrap();
    assert_eq!(first, 0);
    assert_eq!(
        pulled.load(Ordering::SeqCst),
        3,
        "one item per unit of concurrency"
    );
    drop(stream);
    // Without the cancel on drop, items 1 and 2 would wait a minute for the throttle.
    wait_for_calls_to_settle(&session, Some(3));
    let stats = session.stats();
    assert_eq!((stats.succeeded, stats.failed), (1, 2));
    assert_eq!(
        pulled.load(Ordering::SeqCst),
        3,
        "not pulled after the drop"
    );
    assert_eq!(
        b.prompts_seen(),
        ["item 0"],
        "nothing reached the model after the drop"
    );
}

fn a_failure_in_the_middle_comes_back_in_its_place_with_its_item(b: &TestBackend) {
    let session = b
        .builder()
        .concurrency(3)
        .retry_policy(quick_retries(0))
        .build()
        .unwrap();
    let words: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
    let results: Vec<_> = words
        .clone()
        .into_iter()
        .claude_stream_map(&session, |w| {
            if w == "w7" {
                format!("[[sim:error=400]] {w}")
            } else {
                w.clone()
            }
        })
        .collect();
    assert_eq!(results.len(), 20);
    for (i, result) in results.iter().enumerate() {
        if i == 7 {
            let failed = result.as_ref().unwrap_err();
            assert_eq!(failed.item, "w7");
            assert_eq!(failed.attempts, 1);
            assert!(
                matches!(
                    failed.error,
                    Error::Api {
                        status: Some(400),
                        ..
                    }
                ),
                "{:?}",
                failed.error
            );
        } else {
            let (word, response) = result.as_ref().unwrap();
            assert_eq!(word, &words[i]);
            assert_eq!(response.text, format!("echo: {word}"));
        }
    }
}

fn a_panicking_prompt_closure_fails_only_its_item(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let results: Vec<_> = (0..12u32)
        .claude_stream_map(&session, |i| {
            if *i == 5 {
                panic!("cannot build a prompt for {i}");
            }
            format!("item {i}")
        })
        .collect();
    assert_eq!(results.len(), 12);
    for (i, result) in results.iter().enumerate() {
        if i == 5 {
            let failed = result.as_ref().unwrap_err();
            assert_eq!((failed.item, failed.attempts), (5, 0));
            assert!(
                matches!(&failed.error, Error::Panicked(m) if m.contains("cannot build a prompt for 5"))
            );
        } else {
            assert_eq!(result.as_ref().unwrap().0 as usize, i);
        }
    }
    assert_eq!(b.prompts_seen().len(), 11);
}

fn an_authentication_failure_stops_the_rest_without_another_call(b: &TestBackend) {
    let session = b.builder().concurrency(1).build().unwrap();
    let results: Vec<_> = (0..10u32)
        .claude_stream_map(&session, |i| {
            if *i == 2 {
                "[[sim:error=401]]".to_string()
            } else {
                format!("item {i}")
            }
        })
        .collect();
    assert_eq!(results.len(), 10, "every item comes back");
    assert_eq!(b.prompts_seen().len(), 3, "no call after the 401");
    assert!(results[0].is_ok() && results[1].is_ok());
    assert!(matches!(
        results[2].as_ref().unwrap_err().error,
        Error::Authentication { .. }
    ));
    for (i, result) in results.iter().enumerate().skip(3) {
        let failed = result.as_ref().unwrap_err();
        assert_eq!((failed.item as usize, failed.attempts), (i, 0));
        match &failed.error {
            Error::Stopped(cause) => assert!(matches!(**cause, Error::Authentication { .. })),
            other => panic!("{other:?}"),
        }
    }
}

fn cancel_stops_new_items_and_hands_the_rest_back(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let cancel = Cancel::new();
    let stream = (0..30u32)
        .claude_stream_map(&session, |i| format!("item {i}"))
        .with_cancel(&cancel);
    let window = stream.max_outstanding();
    let mut ok = 0;
    let mut all = Vec::new();
    for result in stream {
        match &result {
            Ok(_) => ok += 1,
            Err(failed) => {
                assert!(matches!(failed.error, Error::Cancelled), "{failed}");
                assert_eq!(failed.attempts, 0);
            }
        }
        all.push(result);
        if all.len() == 5 {
            cancel.cancel();
        }
    }
    assert_eq!(all.len(), 30, "every item comes back");
    let order: Vec<u32> = all
        .iter()
        .map(|r| match r {
            Ok((i, _)) => *i,
            Err(failed) => failed.item,
        })
        .collect();
    assert_eq!(order, (0..30).collect::<Vec<_>>());
    // Those pulled before the cancel may finish; none pulled after it makes a call.
    assert!((5..=5 + window).contains(&ok), "{ok} succeeded");
    assert_eq!(b.prompts_seen().len(), ok);
}

// CLI only, as the other tests about thread names.
#[test]
fn the_source_is_pulled_on_the_callers_thread_and_calls_run_on_the_sessions() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(2).build().unwrap();
    let prefix = support::thread_prefix(&session);
    let caller = std::thread::current().id();
    let source_threads = Arc::new(Mutex::new(Vec::new()));
    let prompt_threads = Arc::new(Mutex::new(Vec::new()));
    let source = {
        let source_threads = Arc::clone(&source_threads);
        (0..8u32).inspect(move |_| {
            source_threads
                .lock()
                .unwrap()
                .push(std::thread::current().id())
        })
    };
    let names = Arc::clone(&prompt_threads);
    let results: Vec<_> = source
        .claude_stream_map(&session, move |i| {
            let name = std::thread::current().name().unwrap_or("").to_string();
            names.lock().unwrap().push(name);
            format!("item {i}")
        })
        .collect();
    assert!(results.iter().all(Result::is_ok));
    let source_threads = source_threads.lock().unwrap();
    assert_eq!(source_threads.len(), 8);
    assert!(source_threads.iter().all(|t| *t == caller));
    let prompt_threads = prompt_threads.lock().unwrap();
    assert_eq!(prompt_threads.len(), 8);
    assert!(
        prompt_threads.iter().all(|n| n.starts_with(&prefix)),
        "{prompt_threads:?}"
    );
}

fn a_source_that_is_not_send_works(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    // Like `std::io::stdin().lines()`, whose lock cannot leave its thread.
    let local = Rc::new(vec!["alpha", "beta", "gamma"]);
    let source = (0..3).map(move |i| local[i].to_string());
    let texts: Vec<String> = source
        .claude_stream_map(&session, |w| w.clone())
        .map(|r| r.unwrap().1.text)
        .collect();
    assert_eq!(texts, ["echo: alpha", "echo: beta", "echo: gamma"]);
}

fn a_stream_over_a_send_source_can_be_iterated_on_another_thread(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let words = vec!["one".to_string(), "two".to_string(), "three".to_string()];
    let mut stream = words.into_iter().claude_stream_map(&session, |w| w.clone());
    let (first, _) = stream.next().unwrap().unwrap();
    // Started here, finished there.
    let rest =
        std::thread::spawn(move || stream.map(|r| r.unwrap().1.text).collect::<Vec<String>>())
            .join()
            .unwrap();
    assert_eq!(first, "one");
    assert_eq!(rest, ["echo: two", "echo: three"]);
}

fn a_stream_inside_a_prompt_closure_on_the_same_session_does_not_deadlock(b: &TestBackend) {
    // One thread and one process: the inner stream must not wait for the thread it is on.
    let session = b.builder().concurrency(1).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let outer = session.clone();
    std::thread::spawn(move || {
        let inner = outer.clone();
        let results: Vec<_> = (0..3u32)
            .into_par_iter()
            .claude_map(&outer, move |i| {
                let i = *i;
                let answers: Vec<String> = (0..3u32)
                    .claude_stream_map(&inner, move |j| format!("inner {i}.{j}"))
                    .map(|r| r.unwrap().1.text)
                    .collect();
                format!("outer {i} after {}", answers.join(", "))
            })
            .collect();
        tx.send(results).unwrap();
    });
    let results = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("nested use finished (no deadlock)");
    assert_eq!(
        results[1].as_ref().unwrap().1.text,
        "echo: outer 1 after echo: inner 1.0, echo: inner 1.1, echo: inner 1.2"
    );
    assert_eq!(b.prompts_seen().len(), 3 + 9);
}

fn an_empty_source_yields_nothing_and_starts_no_process(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let mut stream = std::iter::empty::<u32>().claude_stream_map(&session, |i| format!("{i}"));
    assert!(stream.next().is_none());
    assert!(stream.next().is_none(), "fused");
    assert!(b.prompts_seen().is_empty(), "no call for no work");
    if b.kind() == Kind::Cli {
        assert_eq!(
            session.stats().processes_started,
            0,
            "no process for no work"
        );
    }
    let stream = (0..5u32).claude_stream_map(&session, |i| format!("{i}"));
    assert_eq!(stream.size_hint(), (5, Some(5)));
    assert_eq!(stream.count(), 5);
}

on_both_backends!(
    results_come_back_in_source_order_under_random_latencies,
    the_source_is_pulled_lazily,
    a_slow_head_item_holds_back_at_most_the_reorder_bound,
    a_chosen_reorder_bound_is_enforced_too,
    dropping_after_take_stops_pulling_the_source,
    dropping_cancels_items_that_have_not_started_their_call,
    a_failure_in_the_middle_comes_back_in_its_place_with_its_item,
    a_panicking_prompt_closure_fails_only_its_item,
    an_authentication_failure_stops_the_rest_without_another_call,
    cancel_stops_new_items_and_hands_the_rest_back,
    a_source_that_is_not_send_works,
    a_stream_over_a_send_source_can_be_iterated_on_another_thread,
    a_stream_inside_a_prompt_closure_on_the_same_session_does_not_deadlock,
    an_empty_source_yields_nothing_and_starts_no_process,
);
