//! Real tier: a warm CLI process is retired between items after `recycle_after_items`, and
//! every item is asked of the API once and answered once, across the change of process.

use crate::support;

use std::time::Duration;

use claude_rayon::prelude::*;
use rayon::prelude::*;
use support::Real;

fn ticket(i: usize) -> String {
    format!(
        "Ticket {i}: our warehouse scanner app logs users out every few minutes since the \
         last update, so pickers have to sign in again in the middle of an order and the \
         half-scanned order is lost. It happens on every handheld, on Wi-Fi and on mobile \
         data alike. Please classify the urgency and suggest a next step for case {i}."
    )
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_process_is_recycled_after_n_items_without_losing_or_repeating_one() {
    let Some(real) =
        Real::start("a_process_is_recycled_after_n_items_without_losing_or_repeating_one")
    else {
        return;
    };
    let session = real
        .builder()
        .concurrency(1)
        .cli(|c| c.recycle_after_items(Some(3)).recycle_above_memory(None))
        .build()
        .unwrap();
    let items: Vec<usize> = (0..7).collect();
    let results: Vec<_> = items
        .par_iter()
        .claude_map(&session, |&&i| ticket(i))
        .collect();
    for (i, result) in results.iter().enumerate() {
        let (_, response) = result.as_ref().unwrap();
        assert_eq!(response.text, format!("echo: {}", ticket(i)));
    }
    let mut asked: Vec<String> = real.api.requests().into_iter().map(|r| r.prompt).collect();
    asked.sort();
    let mut expected: Vec<String> = items.iter().map(|&i| ticket(i)).collect();
    expected.sort();
    assert_eq!(asked, expected, "every item asked of the API exactly once");
    // One process at a time: 3 + 3 + 1 items.
    let stats = session.stats();
    assert_eq!(stats.processes_started, 3);
    assert_eq!(stats.processes_recycled, 2);
    assert_eq!((stats.succeeded, stats.requests), (7, 7));
    support::wait_until(
        "the retired processes are gone",
        Duration::from_secs(10),
        || real.cli_pids().len() == 1,
    );
}
