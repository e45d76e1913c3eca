//! Real tier: claude_map over 50 items through the mock API, each result carrying its own
//! item's answer, in input order.

use crate::support;

use std::time::Duration;

use claude_rayon::prelude::*;
use claude_rayon::Outcome;
use rayon::prelude::*;
use support::mock_api::Reply;
use support::Real;

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn fifty_items_each_get_their_own_answer() {
    let Some(real) = Real::start("fifty_items_each_get_their_own_answer") else {
        return;
    };
    // Some answers are slower, so items finish out of order.
    real.api.set_reply(|prompt| {
        let n: u64 = prompt.trim_start_matches("item ").parse().unwrap_or(0);
        let answer = Reply::text(format!("answer for {n}: {}", n * n));
        if n % 5 == 0 {
            Reply::After(Duration::from_millis(150), Box::new(answer))
        } else {
            answer
        }
    });
    let session = real.builder().concurrency(2).build().unwrap();
    let items: Vec<u64> = (0..50).collect();
    let outcome: Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |n| format!("item {n}"))
        .collect();
    assert!(outcome.dead_letter.is_empty(), "{:?}", outcome.dead_letter);
    assert_eq!(outcome.ok.len(), 50);
    for (i, (item, response)) in outcome.ok.iter().enumerate() {
        assert_eq!(**item, i as u64, "input order");
        assert_eq!(response.text, format!("answer for {i}: {}", i * i));
        assert!(response.usage.output_tokens > 0 && response.cost_usd > 0.0);
    }
    let requests = real.api.requests();
    assert_eq!(requests.len(), 50, "one API call per item");
    assert!(requests.iter().all(|r| r.user_turns == 1));
    let stats = session.close().unwrap();
    assert_eq!((stats.succeeded, stats.processes_started), (50, 2));
}
