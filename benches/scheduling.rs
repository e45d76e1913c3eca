//! Scheduling and overhead of `claude_map`, in one run:
//! 1. 64 items with fake latencies spread from 10 to 400 ms in shuffled order (five orders),
//!    concurrency 8: wall time against the ideal max(sum/8, longest), against first-in-first-out
//!    greedy scheduling with zero overhead (computed), and against a plain 8-thread
//!    shared-queue reference calling `Session::query` on the same session.
//! 2. The library's own CPU per item (this process, not the CLI) with instant answers.
//!
//! Run: `cargo bench --bench scheduling`

mod common;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use claude_rayon::prelude::*;
use rayon::prelude::*;

const ROUNDS: usize = 3;
/// Several shuffles, so no single lucky or unlucky order decides the figure.
const SEEDS: [u64; 5] = [
    0x2545_f491_4f6c_dd1d,
    0x9e37_79b9_7f4a_7c15,
    0xd1b5_4a32_d192_ed03,
    0x8cb9_2ba7_2f3d_8dd7,
    0x5851_f42d_4c95_7f2d,
];

/// 64 latencies spread evenly over 10..=400 ms, shuffled by a seeded permutation.
fn latencies(seed: u64) -> Vec<u64> {
    let mut values: Vec<u64> = (0..64).map(|i| 10 + i * 390 / 63).collect();
    let mut state = seed;
    for i in (1..values.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        values.swap(i, (state % (i as u64 + 1)) as usize);
    }
    values
}

/// What first-in-first-out greedy scheduling gives on this order with zero overhead: the best
/// any shared queue can do without knowing the latencies in advance.
fn fifo_greedy(delays: &[u64]) -> Duration {
    let mut free_at = [0u64; 8];
    for &ms in delays {
        let earliest = free_at.iter_mut().min().unwrap();
        *earliest += ms;
    }
    Duration::from_millis(*free_at.iter().max().unwrap())
}

fn pct(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0
}

fn main() {
    let session = common::fake_builder().concurrency(8).build().unwrap();
    // Warm all eight processes so both sides start equal.
    let _: Vec<_> = (0..8)
        .into_par_iter()
        .claude_map(&session, |i| format!("[[sim:delay=50]] warm {i}"))
        .collect();
    println!(
        "scheduling: 64 items, 10-400 ms shuffled, concurrency 8, median of {ROUNDS} rounds per order"
    );
    println!("  order  ideal ms  FIFO ms  claude_map ms  queue ms  vs ideal  vs queue  vs FIFO");
    let (mut vs_ideal, mut vs_queue, mut vs_fifo) = (Vec::new(), Vec::new(), Vec::new());
    for (n, seed) in SEEDS.iter().enumerate() {
        let delays = latencies(*seed);
        let sum: u64 = delays.iter().sum();
        let longest = *delays.iter().max().unwrap();
        let ideal = Duration::from_millis((sum / 8).max(longest));
        let fifo = fifo_greedy(&delays);
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
            let queue = Mutex::new(delays.iter().copied().collect::<VecDeque<u64>>());
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
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "  {n:>5}  {:>8.1}  {:>7.1}  {:>13.1}  {:>8.1}  {:>+7.1}%  {:>+7.1}%  {:>+6.1}%",
            ms(ideal),
            ms(fifo),
            ms(a),
            ms(r),
            pct(a, ideal),
            pct(a, r),
            pct(a, fifo)
        );
        vs_ideal.push(pct(a, ideal));
        vs_queue.push(pct(a, r));
        vs_fifo.push(pct(a, fifo));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "  median over orders: {:+.1}% vs ideal (target <= 10%), {:+.1}% vs the shared queue (target <= 5%), {:+.1}% vs FIFO greedy",
        median(vs_ideal),
        median(vs_queue),
        median(vs_fifo)
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
