//! `Pipeline` on an instant fake CLI, in two parts:
//! 1. Throughput against `claude_map` on the same items and session: 5,000 items at
//!    concurrency 2 and 4, median of 3 rounds each; items/s for both and their ratio.
//! 2. Memory over a never-ending source: 1,000,000 items (or as many as fit in the time
//!    limit), peak RSS of this process (VmHWM, not the CLI processes) at 100k items and at the
//!    end, and the library's own most-in-flight and most-buffered gauges.
//!
//! Run: `cargo bench --bench pipeline` (both), or `-- throughput` / `-- memory` for one part;
//! `-- memory --items N --minutes M` changes part 2's size and time limit.

mod common;

use std::time::{Duration, Instant};

use claude_rayon::pipeline::Pipeline;
use claude_rayon::prelude::*;
use claude_rayon::Session;
use rayon::prelude::*;

const ROUNDS: usize = 3;
const ITEMS: u64 = 5_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = |part: &str| {
        let named = ["throughput", "memory"];
        !args.iter().any(|a| named.contains(&a.as_str())) || args.iter().any(|a| a == part)
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    // Memory first: VmHWM is a peak over the whole process, so nothing before may raise it.
    if only("memory") {
        memory(
            flag("--items").unwrap_or(1_000_000),
            Duration::from_secs(60 * flag("--minutes").unwrap_or(2)),
        );
    }
    if only("throughput") {
        for concurrency in [2, 4] {
            throughput(concurrency);
        }
    }
}

fn warm(session: &Session) {
    let _: Vec<_> = (0..session.concurrency() * 4)
        .into_par_iter()
        .claude_map(session, |i| format!("warm {i}"))
        .collect();
}

fn items_per_second(n: u64, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn throughput(concurrency: usize) {
    let session = common::fake_builder()
        .concurrency(concurrency)
        .build()
        .unwrap();
    warm(&session);
    let (mut map_times, mut pipeline_times) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let results: Vec<_> = (0..ITEMS)
            .into_par_iter()
            .claude_map(&session, |i| format!("item {i}"))
            .collect();
        map_times.push(started.elapsed());
        assert!(results.iter().all(Result::is_ok));

        let started = Instant::now();
        let stats = Pipeline::builder(&session)
            .source(0..ITEMS)
            .prompt(|i: &u64| format!("item {i}"))
            .batch_size(100)
            .on_batch(|_| {})
            .run()
            .unwrap();
        pipeline_times.push(started.elapsed());
        assert_eq!((stats.batched_items, stats.failed), (ITEMS, 0));
    }
    let map = items_per_second(ITEMS, common::median(map_times));
    let pipeline = items_per_second(ITEMS, common::median(pipeline_times));
    println!(
        "throughput, {ITEMS} items, concurrency {concurrency}: claude_map {map:.0} items/s, \
         pipeline {pipeline:.0} items/s, pipeline/claude_map {:.3}",
        pipeline / map
    );
}

/// This process's peak resident memory (children are other processes, not counted).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn memory(target: u64, limit: Duration) {
    let concurrency = 4;
    let batch_size = 100;
    let session = common::fake_builder()
        .concurrency(concurrency)
        .build()
        .unwrap();
    warm(&session);
    let before = peak_rss_kib();
    let started = Instant::now();
    let handle = Pipeline::builder(&session)
        .source((0u64..).map(|i| format!("record {i}")))
        .prompt(|record: &String| format!("Summarise: {record}"))
        .batch_size(batch_size)
        .on_batch(|batch| {
            std::hint::black_box(batch);
        })
        .start()
        .unwrap();
    let mut at_100k = None;
    let mut reached = 0;
    loop {
        let stats = handle.stats();
        reached = reached.max(stats.handled());
        if at_100k.is_none() && reached >= 100_000 {
            at_100k = Some((peak_rss_kib(), started.elapsed()));
        }
        if reached >= target || started.elapsed() >= limit {
            break;
        }
        // Polling only reads counters; the pipeline never waits on it.
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = handle.stop();
    let took = started.elapsed();
    let at_end = peak_rss_kib();
    let cut_short = if stats.handled() < target {
        format!(" (cut short by the {} s limit)", limit.as_secs())
    } else {
        String::new()
    };
    println!(
        "memory, never-ending source, concurrency {concurrency}, batch_size {batch_size}: {} items \
         in {:.1} s ({:.0} items/s){cut_short}",
        stats.handled(),
        took.as_secs_f64(),
        items_per_second(stats.handled(), took)
    );
    println!("  peak RSS before the run       {before} KiB");
    match at_100k {
        Some((kib, when)) => println!(
            "  peak RSS at 100,000 items     {kib} KiB (after {:.1} s)",
            when.as_secs_f64()
        ),
        None => println!("  peak RSS at 100,000 items     (not reached)"),
    }
    println!(
        "  peak RSS at the end ({} items) {at_end} KiB",
        stats.handled()
    );
    // The defaults: 4 × concurrency in flight; past the batcher, what it took at once (one
    // per slot) and four batches' worth.
    let max_in_flight = 4 * concurrency;
    println!(
        "  most in flight {} (limit {max_in_flight}), most buffered {} (bound {})",
        stats.max_in_flight,
        stats.max_buffered,
        max_in_flight + 4 * batch_size
    );
    assert!(stats.is_settled());
}
