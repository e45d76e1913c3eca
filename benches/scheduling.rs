//! Scheduling and overhead of `claude_map`, in one run:
//! 1. 64 items with fake latencies spread from 10 to 400 ms in shuffled order, concurrency 8:
//!    wall time against the ideal max(sum/8, longest) and against a plain 8-thread
//!    shared-queue reference calling `Session::query` on the same session.
//! 2. The library's own CPU per item (this process, not the CLI) with instant answers.
//!
//! Run: `cargo bench --bench scheduling`

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use claude_rayon::prelude::*;
use rayon::prelude::*;

const ROUNDS: usize = 5;

fn latencies() -> Vec<u64> {
    // 64 values spread evenly over 10..=400 ms, shuffled by a fixed permutation.
    let mut values: Vec<u64> = (0..64).map(|i| 10 + i * 390 / 63).collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in (1..values.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        values.swap(i, (state % (i as u64 + 1)) as usize);
    }
    values
}

fn main() {
    let delays = latencies();
    let sum: u64 = delays.iter().sum();
    let longest = *delays.iter().max().unwrap();
    let ideal = Duration::from_millis((sum / 8).max(longest));
    // What first-in-first-out greedy scheduling gives on this order with zero overhead: the
    // best any shared queue can do without knowing the latencies in advance.
    let mut free_at = [0u64; 8];
    for &ms in &delays {
        let earliest = free_at.iter_mut().min().unwrap();
        *earliest += ms;
    }
    let fifo = Duration::from_millis(*free_at.iter().max().unwrap());
    let session = common::fake_builder().concurrency(8).build().unwrap();
    // Warm all eight processes so both sides start equal.
    let _: Vec<_> = (0..8)
        .into_par_iter()
        .claude_map(&session, |i| format!("[[sim:delay=50]] warm {i}"))
        .collect();

    let mut adaptor = Vec::new();
    let mut reference = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let results: Vec<_> = delays
            .par_iter()
            .claude_map(&session, |ms| format!("[[sim:delay={ms}]]"))
            .collect();
        assert!(results.iter().all(Result::is_ok));
        adaptor.push(started.elapsed());

        // Same order as the adaptor takes them: first in, first out.
        let queue = Mutex::new(
            delays
                .iter()
                .copied()
                .collect::<std::collections::VecDeque<u64>>(),
        );
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| loop {
                    let Some(ms) = queue.lock().unwrap().pop_front() else {
                        break;
                    };
                    session.query(format!("[[sim:delay={ms}]]")).unwrap();
                });
            }
        });
        reference.push(started.elapsed());
    }
    let (a, r) = (common::median(adaptor), common::median(reference));
    println!("scheduling: 64 items, 10-400 ms shuffled, concurrency 8, median of {ROUNDS} rounds");
    println!(
        "  ideal max(sum/8, longest)   {:>8.1} ms",
        ideal.as_secs_f64() * 1e3
    );
    println!(
        "  FIFO greedy, zero overhead  {:>8.1} ms  (computed)",
        fifo.as_secs_f64() * 1e3
    );
    println!(
        "  claude_map                  {:>8.1} ms  ({:+.1}% vs ideal)",
        a.as_secs_f64() * 1e3,
        (a.as_secs_f64() / ideal.as_secs_f64() - 1.0) * 100.0
    );
    println!(
        "  8-thread shared queue       {:>8.1} ms  (claude_map {:+.1}% vs it)",
        r.as_secs_f64() * 1e3,
        (a.as_secs_f64() / r.as_secs_f64() - 1.0) * 100.0
    );
    println!(
        "  claude_map vs FIFO greedy   {:+.1}% (the library's own scheduling overhead)",
        (a.as_secs_f64() / fifo.as_secs_f64() - 1.0) * 100.0
    );

    // Overhead: instant answers, so what remains is the library (and the pipes).
    let items = 4000;
    let session = common::fake_builder().concurrency(2).build().unwrap();
    let _: Vec<_> = (0..4)
        .into_par_iter()
        .claude_map(&session, |i| format!("warm {i}"))
        .collect();
    let cpu_before = common::own_cpu_time();
    let started = Instant::now();
    let results: Vec<_> = (0..items)
        .into_par_iter()
        .claude_map(&session, |i| format!("item {i}"))
        .collect();
    let wall = started.elapsed();
    let cpu = common::own_cpu_time() - cpu_before;
    assert!(results.iter().all(Result::is_ok));
    println!("\noverhead: {items} items, instant fake CLI, concurrency 2");
    println!(
        "  library CPU per item {:.1} µs; {:.0} items/s wall",
        cpu.as_secs_f64() * 1e6 / items as f64,
        items as f64 / wall.as_secs_f64()
    );
}
