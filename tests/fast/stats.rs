//! `Session::stats()`: item counters, tokens and cost summed, latency percentiles, throttle
//! waits; on both backends.

use crate::{on_both_backends, support};

use std::time::Duration;

use claude_rayon::prelude::*;
use claude_rayon::{Failed, Response};
use rayon::prelude::*;
use support::backends::TestBackend;
use support::quick_retries;

fn counters_tokens_cost_and_latency_percentiles_add_up(b: &TestBackend) {
    let session = b
        .builder()
        .concurrency(3)
        .retry_policy(quick_retries(2))
        .build()
        .unwrap();
    let before = session.stats();
    assert_eq!(before.latency_p50, None, "no latency before any answer");
    assert_eq!(before.time_to_first_result, None);

    // Spread latencies; two items fail once first, one fails for good.
    let results: Vec<Result<(u32, Response), Failed<u32>>> = (0..40u32)
        .into_par_iter()
        .claude_map(&session, |i| match i {
            7 | 8 => format!("[[sim:fail-times=s{i},1,529]] item {i}"),
            9 => "[[sim:error=400]] item 9".to_string(),
            _ => format!("[[sim:delay={}]] item {i}", (i % 10) * 4),
        })
        .collect();
    let ok: Vec<&Response> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|(_, response)| response))
        .collect();
    assert_eq!(ok.len(), 39);

    let stats = session.stats();
    assert_eq!((stats.started, stats.succeeded, stats.failed), (40, 39, 1));
    assert_eq!(stats.retried, 2);
    assert_eq!(stats.requests, 42);
    let input: u64 = ok.iter().map(|r| r.usage.input_tokens).sum();
    let output: u64 = ok.iter().map(|r| r.usage.output_tokens).sum();
    assert!(input > 0 && output > 0);
    assert_eq!(stats.usage.input_tokens, input);
    assert_eq!(stats.usage.output_tokens, output);
    assert_eq!(stats.total_tokens(), input + output);
    let cost: f64 = ok.iter().map(|r| r.cost_usd).sum();
    assert!(
        (stats.cost_usd - cost).abs() < 1e-9,
        "{} vs {cost}",
        stats.cost_usd
    );

    let p50 = stats.latency_p50.expect("p50");
    let p90 = stats.latency_p90.expect("p90");
    let p99 = stats.latency_p99.expect("p99");
    let max = stats.latency_max.expect("max");
    assert!(p50 <= p90 && p90 <= p99 && p99 <= max, "{stats:?}");
    // The slowest items waited 36 ms inside the fake CLI or the mock API.
    assert!(max >= Duration::from_millis(36), "{max:?}");
    let slowest = ok.iter().map(|r| r.duration).max().unwrap();
    assert!(
        max >= slowest.mul_f64(0.99) && max <= slowest,
        "{max:?} vs {slowest:?}"
    );
    assert!(stats.time_to_first_result.is_some());
    assert!(stats.backoff_pauses >= 1, "the 529s paused the throttle");
}

fn throttle_waits_are_counted_with_their_time(b: &TestBackend) {
    // One request every 100 ms and no burst: four workers asking at once queue up.
    let session = b
        .builder()
        .concurrency(4)
        .requests_per_minute(600)
        .burst(1)
        .build()
        .unwrap();
    let results: Vec<_> = (0..6u32)
        .into_par_iter()
        .claude_map(&session, |i| format!("item {i}"))
        .collect();
    assert!(results.iter().all(Result::is_ok));
    let stats = session.stats();
    // Six requests, one free: the other five waited 100 ms apart after the first.
    assert!(stats.throttle_waits >= 4, "{stats:?}");
    assert!(
        stats.throttle_wait >= Duration::from_millis(400),
        "{:?}",
        stats.throttle_wait
    );
    assert_eq!(stats.backoff_pauses, 0);
}

on_both_backends!(
    counters_tokens_cost_and_latency_percentiles_add_up,
    throttle_waits_are_counted_with_their_time,
);
