//! What the journal costs: the same runs with the journal off and on, side by side, on the
//! fake CLI. At a realistic pace (each answer takes 100 ms, concurrency 8: ~80 items/s) the
//! target is under 2% of throughput; at full speed (instant answers, thousands a second) the
//! group commit's fsyncs are what is measured. Then a rerun that takes everything from the
//! journal.
//!
//! Run: `cargo bench --bench journal`

mod common;

use std::time::Instant;

use claude_rayon::prelude::*;
use claude_rayon::{Journal, Session};
use rayon::prelude::*;

const ROUNDS: usize = 5;

fn session(latency_ms: u64, concurrency: usize) -> Session {
    common::fake_builder()
        .cli(|c| c.env("CLAUDE_RAYON_SIM_LATENCY_MS", latency_ms.to_string()))
        .concurrency(concurrency)
        .build()
        .unwrap()
}

/// Items per second of one run of `items` new items, with or without a journal.
fn run(session: &Session, items: &[String], journal: Option<&Journal>) -> f64 {
    let started = Instant::now();
    let map = items.par_iter().claude_map(session, |i| i.to_string());
    let results: Vec<_> = match journal {
        Some(journal) => map.with_journal(journal).collect(),
        None => map.collect(),
    };
    assert!(results.iter().all(Result::is_ok));
    items.len() as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn compare(label: &str, latency_ms: u64, concurrency: usize, n: usize) {
    let session = session(latency_ms, concurrency);
    // Warm the processes first.
    let warm: Vec<String> = (0..concurrency * 2).map(|i| format!("warm {i}")).collect();
    run(&session, &warm, None);
    let dir = tempfile::tempdir().unwrap();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // New prompts every round, so the journal never replays here.
        let items = |tag: &str| -> Vec<String> {
            (0..n).map(|i| format!("{tag} {round} item {i}")).collect()
        };
        off.push(run(&session, &items("off"), None));
        let journal = Journal::open(dir.path().join(format!("j{round}.jsonl"))).unwrap();
        on.push(run(&session, &items("on"), Some(&journal)));
    }
    let (off, on) = (median(off), median(on));
    println!(
        "{label:<34} off {off:>9.1} items/s   on {on:>9.1} items/s   cost {:>+6.2}%",
        (off - on) / off * 100.0
    );
}

fn replay(n: usize) {
    let session = session(100, 8);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.jsonl");
    let items: Vec<String> = (0..n).map(|i| format!("replayed item {i}")).collect();
    let first = run(&session, &items, Some(&Journal::open(&path).unwrap()));
    let journal = Journal::open(&path).unwrap();
    let started = Instant::now();
    let again = run(&session, &items, Some(&journal));
    println!(
        "rerun of {n} answered items: first run {first:.1} items/s, rerun {again:.0} items/s \
         ({:?}, {} calls)",
        started.elapsed(),
        session.stats().requests - n as u64
    );
}

fn main() {
    println!("journal off vs on, median of {ROUNDS} rounds, fake CLI");
    compare("100 ms per answer, concurrency 8", 100, 8, 400);
    compare("10 ms per answer, concurrency 8", 10, 8, 2_000);
    compare("instant answers, concurrency 4", 0, 4, 4_000);
    replay(400);
}
