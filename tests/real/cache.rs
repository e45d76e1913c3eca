//! Real tier: shared instructions at the cache price. A long instruction given as the
//! appended system prompt is written to the prompt cache once and read by every other item,
//! because the first item goes alone until its answer has begun. The tests' mock API
//! emulates the cache as the API documents it.

use crate::support;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use claude_rayon::prelude::*;
use rayon::prelude::*;
use support::mock_api::Reply;
use support::Real;

const ITEMS: usize = 100;
const CONCURRENCY: usize = 4;

/// About 3,000 tokens of instruction, the same for every item.
fn rubric() -> String {
    "Grade each answer for accuracy, clarity and tone; explain the grade in one line. ".repeat(150)
}

/// (requests that wrote the shared prefix, requests that read it) for a run of `items`. With
/// the warm-up, every answer begins 500 ms after its request arrives, as a real API's first
/// token does. Without, no answer begins before the first `CONCURRENCY` requests have arrived
/// (however slowly a busy machine starts the processes), so each of them finds the cache cold.
fn run(real: &Real, warm: bool, items: usize) -> (usize, usize, f64) {
    real.api.clear_requests();
    if warm {
        real.api.set_reply(|p| {
            Reply::After(
                std::time::Duration::from_millis(500),
                Box::new(Reply::text(format!("graded: {p}"))),
            )
        });
    } else {
        let arrived = Arc::new((Mutex::new(0usize), Condvar::new()));
        real.api.set_reply(move |p| {
            let (count, all_here) = &*arrived;
            let mut count = count.lock().unwrap();
            *count += 1;
            all_here.notify_all();
            // Bounded, so that a run that never sends them all fails on its counts instead.
            let _ = all_here
                .wait_timeout_while(count, Duration::from_secs(60), |n| *n < CONCURRENCY)
                .unwrap();
            Reply::text(format!("graded: {p}"))
        });
    }
    let session = real
        .builder()
        .concurrency(CONCURRENCY)
        .cli(|c| c.max_starting_processes(CONCURRENCY))
        .append_system_prompt(rubric())
        .warm_cache(warm)
        .build()
        .unwrap();
    let results: Vec<_> = (0..items)
        .into_par_iter()
        .claude_map(&session, |i| format!("answer number {i}"))
        .collect();
    let shared = rubric().len() / 4 * 9 / 10;
    let requests = real.api.requests();
    assert_eq!(requests.len(), items);
    // Each item's own usage says what its request read and wrote, as the API billed it.
    for result in &results {
        let (i, response) = result.as_ref().unwrap();
        let request = requests
            .iter()
            .find(|r| r.prompt == format!("answer number {i}"))
            .unwrap();
        assert_eq!(
            (
                response.usage.cache_read_input_tokens as usize,
                response.usage.cache_creation_input_tokens as usize
            ),
            (request.cache_read, request.cache_write),
            "item {i}"
        );
    }
    let writes = requests.iter().filter(|r| r.cache_write >= shared).count();
    let reads = requests.iter().filter(|r| r.cache_read >= shared).count();
    (writes, reads, session.stats().cache_read_share())
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_shared_instruction_is_written_once_and_read_by_every_other_item() {
    let Some(real) =
        Real::start("a_shared_instruction_is_written_once_and_read_by_every_other_item")
    else {
        return;
    };
    let (writes, reads, share) = run(&real, true, ITEMS);
    assert_eq!((writes, reads), (1, ITEMS - 1), "warmed first");
    assert!(share > 0.8, "{share}");

    // Cold again (a fresh mock cache), without the warm-up: the first items, sent together,
    // each write their own entry.
    let cold = Real::start("a_shared_instruction_is_written_once_and_read_by_every_other_item")
        .expect("the CLI was found above");
    let (writes, reads, _) = run(&cold, false, 12);
    assert!(writes >= CONCURRENCY, "{writes} writes without the warm-up");
    assert_eq!(writes + reads, 12);
}
