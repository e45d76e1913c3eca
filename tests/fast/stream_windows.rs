//! `claude_windows`: window boundaries (overlapping, gapped, short last window), one prompt
//! per window in order, failures in place, laziness, and invalid sizes; on both backends.

use crate::{on_both_backends, support};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use claude_rayon::prelude::*;
use claude_rayon::stream::Window;
use claude_rayon::Error;
use support::backends::TestBackend;
use support::quick_retries;

fn prompt_of(items: &[u32]) -> String {
    let list: Vec<String> = items.iter().map(u32::to_string).collect();
    // A latency that varies from window to window, so that windows finish out of order.
    let delay = items.iter().sum::<u32>() * 7 % 13;
    format!("[[sim:delay={delay}]] items {}", list.join(","))
}

/// The windows of `0..n` as (start, items), and that each answer is its own window's.
fn windows_of(b: &TestBackend, n: u32, size: usize, step: usize) -> Vec<(usize, Vec<u32>)> {
    let session = b.builder().concurrency(3).build().unwrap();
    (0..n)
        .claude_windows(&session, size, step, |items: &[u32]| prompt_of(items))
        .map(|result| {
            let (window, response) = result.unwrap();
            assert_eq!(response.text, format!("echo: {}", prompt_of(&window.items)));
            assert_eq!(window.end(), window.start + window.items.len());
            (window.start, window.items)
        })
        .collect()
}

fn w(start: usize, items: std::ops::Range<u32>) -> (usize, Vec<u32>) {
    (start, items.collect())
}

fn overlapping_windows_end_without_repeating_the_last_one(b: &TestBackend) {
    // step 1: the last full window already holds every later item.
    let expected: Vec<_> = (0..8).map(|s| w(s, s as u32..s as u32 + 3)).collect();
    assert_eq!(windows_of(b, 10, 3, 1), expected);
    assert_eq!(
        windows_of(b, 10, 4, 2),
        [w(0, 0..4), w(2, 2..6), w(4, 4..8), w(6, 6..10)]
    );
}

fn a_source_that_ends_mid_window_gives_one_shorter_last_window(b: &TestBackend) {
    // 11 items, size 4, step 3: 9..11 holds item 10, which no earlier window had.
    assert_eq!(
        windows_of(b, 11, 4, 3),
        [w(0, 0..4), w(3, 3..7), w(6, 6..10), w(9, 9..11)]
    );
    // Adjacent windows, 10 items: the last window holds item 9 alone.
    assert_eq!(
        windows_of(b, 10, 3, 3),
        [w(0, 0..3), w(3, 3..6), w(6, 6..9), w(9, 9..10)]
    );
    // A source shorter than one window.
    assert_eq!(windows_of(b, 2, 5, 1), [w(0, 0..2)]);
    // An exact fit gives no extra window.
    assert_eq!(windows_of(b, 5, 5, 5), [w(0, 0..5)]);
}

fn a_step_larger_than_the_size_skips_the_items_between_windows(b: &TestBackend) {
    assert_eq!(
        windows_of(b, 10, 2, 4),
        [w(0, 0..2), w(4, 4..6), w(8, 8..10)]
    );
    // Item 10 falls in a gap: no window for it.
    assert_eq!(
        windows_of(b, 11, 2, 4),
        [w(0, 0..2), w(4, 4..6), w(8, 8..10)]
    );
    // Item 8 starts a window the source cuts short.
    assert_eq!(windows_of(b, 9, 2, 4), [w(0, 0..2), w(4, 4..6), w(8, 8..9)]);
}

fn an_empty_source_gives_no_window(b: &TestBackend) {
    assert!(windows_of(b, 0, 3, 1).is_empty());
}

fn a_failing_window_comes_back_in_its_place_with_its_items(b: &TestBackend) {
    let session = b
        .builder()
        .concurrency(2)
        .retry_policy(quick_retries(0))
        .build()
        .unwrap();
    let lines: Vec<String> = (0..12)
        .map(|i| {
            if i == 7 {
                "[[sim:error=400]]".to_string()
            } else {
                format!("line {i}")
            }
        })
        .collect();
    let results: Vec<_> = lines
        .clone()
        .into_iter()
        .claude_windows(&session, 3, 3, |items: &[String]| items.join("\n"))
        .collect();
    assert_eq!(results.len(), 4);
    for (k, result) in results.into_iter().enumerate() {
        let expected = Window {
            items: lines[k * 3..k * 3 + 3].to_vec(),
            start: k * 3,
        };
        match result {
            Ok((window, response)) => {
                assert_ne!(k, 2);
                assert_eq!(
                    response.text,
                    format!("echo: {}", expected.items.join("\n"))
                );
                assert_eq!(window, expected);
            }
            Err(failed) => {
                assert_eq!(k, 2, "only the window holding line 7 fails");
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
                assert_eq!(failed.attempts, 1);
                assert_eq!(failed.item, expected);
            }
        }
    }
}

fn windows_pull_the_source_lazily(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let source = (0..1000u32).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let (size, step) = (20, 10);
    let mut windows = source.claude_windows(&session, size, step, |items: &[u32]| {
        format!("{} items", items.len())
    });
    let most = windows.max_outstanding();
    assert_eq!(
        pulled.load(Ordering::SeqCst),
        0,
        "nothing pulled before next()"
    );
    for yielded in 1..=5 {
        let (window, _) = windows.next().unwrap().unwrap();
        assert_eq!(window.start, (yielded - 1) * step);
        // At most `most` windows were out when this one was yielded, and window k needs the
        // source read up to k * step + size.
        let limit = (yielded - 1 + most - 1) * step + size;
        let now = pulled.load(Ordering::SeqCst);
        assert!(now <= limit, "{now} items pulled after {yielded} windows");
    }
}

fn a_zero_size_panics_with_a_clear_message(b: &TestBackend) {
    let session = b.builder().build().unwrap();
    let _ = (0..10u32).claude_windows(&session, 0, 1, |items: &[u32]| format!("{items:?}"));
}

fn a_zero_step_panics_with_a_clear_message(b: &TestBackend) {
    let session = b.builder().build().unwrap();
    let _ = (0..10u32).claude_windows(&session, 3, 0, |items: &[u32]| format!("{items:?}"));
}

on_both_backends!(
    overlapping_windows_end_without_repeating_the_last_one,
    a_source_that_ends_mid_window_gives_one_shorter_last_window,
    a_step_larger_than_the_size_skips_the_items_between_windows,
    an_empty_source_gives_no_window,
    a_failing_window_comes_back_in_its_place_with_its_items,
    windows_pull_the_source_lazily,
    #[should_panic(expected = "claude_windows: size must be at least 1")]
    a_zero_size_panics_with_a_clear_message,
    #[should_panic(expected = "claude_windows: step must be at least 1")]
    a_zero_step_panics_with_a_clear_message,
);
