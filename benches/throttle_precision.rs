//! How closely the throttle holds a requests-per-minute limit over two minutes.
//!
//! An instant fake CLI, `requests_per_minute(120)` with a burst of 1 and concurrency 4, and
//! more items than two minutes allow, through `claude_map`. The fake records when each prompt
//! arrived (`t_ms`); from that:
//! - the achieved rate over the first two minutes, as a share of the limit (target >= 95 %);
//! - the most requests in any 60-second window, ends included (target <= R + 1).
//!
//! Run: `cargo bench --bench throttle_precision` (about two minutes).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use claude_rayon::prelude::*;
use rayon::prelude::*;

/// Requests per minute.
const R: u32 = 120;
const RUN: Duration = Duration::from_secs(120);
const WINDOW_MS: u64 = 60_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("record.jsonl");
    let session = common::fake_builder()
        .cli(|c| {
            c.env(
                "CLAUDE_RAYON_SIM_RECORD",
                record.to_str().expect("utf-8 path"),
            )
        })
        .concurrency(4)
        .requests_per_minute(R)
        .burst(1)
        .build()
        .expect("session");
    let minutes = RUN.as_secs() / 60;
    // Enough to keep the throttle busy past the end of the measured two minutes.
    let items = (u64::from(R) * minutes + 4) as usize;
    println!(
        "throttle precision: R = {R}/min, burst 1, concurrency 4, instant fake CLI, {items} items (~{} s)",
        RUN.as_secs() + 2
    );

    let t0 = now_ms();
    let started = Instant::now();
    let results: Vec<_> = (0..items)
        .into_par_iter()
        .claude_map(&session, |i| format!("bench item {i}"))
        .collect();
    let elapsed = started.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(failed, 0, "every item should succeed on the fake CLI");

    let mut times: Vec<u64> = std::fs::read_to_string(&record)
        .expect("the fake's record")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "prompt")
        .map(|e| e["t_ms"].as_u64().expect("t_ms in the record"))
        .collect();
    times.sort_unstable();
    assert_eq!(times.len(), items, "one prompt per item");

    let run_ms = RUN.as_millis() as u64;
    let in_run = times
        .iter()
        .filter(|&&t| t >= t0 && t < t0 + run_ms)
        .count();
    let allowed = u64::from(R) * minutes;
    let achieved = in_run as f64 / allowed as f64 * 100.0;

    // Most arrivals in a window [t, t + 60 s] that starts at an arrival (where a maximum is).
    let mut max_window = 0;
    let mut end = 0;
    for (i, &t) in times.iter().enumerate() {
        while end < times.len() && times[end] <= t + WINDOW_MS {
            end += 1;
        }
        max_window = max_window.max(end - i);
    }

    let mut gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    let stats = session.stats();

    println!(
        "  run: {:.1} s, {} requests, {} throttle waits ({:.1} s waited in all)",
        elapsed.as_secs_f64(),
        stats.requests,
        stats.throttle_waits,
        stats.throttle_wait.as_secs_f64()
    );
    println!(
        "  gap between arrivals: min {} ms, median {} ms, max {} ms (ideal {} ms)",
        gaps[0],
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1],
        60_000 / u64::from(R)
    );
    println!(
        "  achieved rate over the first {} s: {in_run} of {allowed} = {achieved:.1} % of R (target >= 95 %): {}",
        RUN.as_secs(),
        if achieved >= 95.0 { "ok" } else { "MISSED" }
    );
    println!(
        "  most requests in any 60 s window: {max_window} (R + 1 = {}; target <= R + 1): {}",
        R + 1,
        if max_window as u64 <= u64::from(R) + 1 {
            "ok"
        } else {
            "MISSED"
        }
    );
    session.close().expect("close");
}
