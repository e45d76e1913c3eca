//! Starting many processes: time to the first answer and to the whole batch, with processes
//! started a few at a time (the default, `max_starting_processes` = the number of cores) and
//! all at once, for 2, 8 and 32 processes, side by side in one run, on the real CLI against
//! an instant loopback mock API.
//!
//! Run: `CLAUDE_CODE_BIN=/path/to/claude cargo bench --bench startup`

mod common;

use std::time::{Duration, Instant};

use claude_rayon::prelude::*;
use claude_rayon::SessionBuilder;
use rayon::prelude::*;

/// (time to the first answer, time to the last) for `2 × concurrency` items.
fn run(builder: SessionBuilder, concurrency: usize) -> (Duration, Duration) {
    let session = builder.concurrency(concurrency).build().expect("session");
    let started = Instant::now();
    let results: Vec<_> = (0..2 * concurrency)
        .into_par_iter()
        .claude_map(&session, |i| format!("item {i}"))
        .collect();
    let whole = started.elapsed();
    assert!(results.iter().all(Result::is_ok), "every item must succeed");
    let first = session
        .stats()
        .time_to_first_result
        .expect("an answer came");
    drop(session);
    (first, whole)
}

fn main() {
    let Some(cli) = common::real_cli() else {
        println!("startup: skipped (set CLAUDE_CODE_BIN to the claude executable)");
        return;
    };
    let api = claude_rayon_mock_api::MockApi::start();
    let home = tempfile::tempdir().unwrap();
    let env = api.cli_env(home.path());
    let make = || common::real_builder(&cli, &env, claude_rayon_mock_api::CLI_ENV_REMOVE);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("{cores} cores; items = 2 x processes; times in seconds");
    println!("processes  first answer: at once  staggered   whole batch: at once  staggered");
    for n in [2usize, 8, 32] {
        let (first_at_once, whole_at_once) = run(make().max_starting_processes(n), n);
        let (first_staggered, whole_staggered) = run(make(), n);
        println!(
            "{n:>9}  {:>20.2}  {:>9.2}  {:>20.2}  {:>9.2}",
            first_at_once.as_secs_f64(),
            first_staggered.as_secs_f64(),
            whole_at_once.as_secs_f64(),
            whole_staggered.as_secs_f64()
        );
    }
}
