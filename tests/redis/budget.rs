//! One spending cap for two programs: together they stop at it.

use claude_rayon::prelude::*;
use claude_rayon::{Error, SharedBudget};
use rayon::prelude::*;

use crate::builder;
use crate::support;
use crate::support::mock_api::MockApi;
use crate::support::redis::RedisServer;

#[test]
fn two_programs_on_one_shared_budget_stop_at_the_cap_together() {
    let Some(redis) = RedisServer::start("two_programs_on_one_shared_budget") else {
        return;
    };
    let api = MockApi::start();
    const CAP: f64 = 0.004;
    // Each its own SharedBudget, as two programs would have: one cap by name.
    let sessions: Vec<_> = (0..2)
        .map(|_| {
            let budget = SharedBudget::redis(&redis.url(), "nightly", CAP).unwrap();
            builder(&api.url())
                .concurrency(2)
                .cost_estimate_usd(0.001)
                .shared_budget(budget)
                .build()
                .unwrap()
        })
        .collect();
    let items: Vec<String> = (0..30).map(|i| support::ticket(i, 600)).collect();
    let outcomes: Vec<(f64, usize, f64)> = sessions
        .par_iter()
        .map(|session| {
            let results: Vec<_> = items
                .par_iter()
                .claude_map(session, |t| format!("Summarise this support ticket:\n{t}"))
                .collect();
            let spent = results
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .map(|(_, response)| response.cost_usd)
                .sum::<f64>();
            let refused = results
                .iter()
                .filter(|r| matches!(r, Err(f) if matches!(f.error, Error::BudgetExceeded { .. })))
                .count();
            let largest = results
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .map(|(_, response)| response.cost_usd)
                .fold(0.0, f64::max);
            (spent, refused, largest)
        })
        .collect();
    let spent: Vec<f64> = outcomes.iter().map(|o| o.0).collect();
    let refused: Vec<usize> = outcomes.iter().map(|o| o.1).collect();
    let largest = outcomes.iter().map(|o| o.2).fold(0.0, f64::max);
    let alone: f64 = spent[0].max(spent[1]);
    let together: f64 = spent.iter().sum();
    // Each would have spent the cap alone: 30 such items cost more than it.
    assert!(
        alone > 0.0 && refused.iter().all(|&r| r > 0),
        "{spent:?} {refused:?}"
    );
    // An item may cost more than the estimate it reserved (the largest cost seen), as with a
    // session's own cap: at most one item's cost over it per item in flight (2 × 2).
    assert!(
        together <= CAP + 4.0 * largest,
        "spent {together} together, cap {CAP}, largest item {largest}"
    );
    assert!(together > CAP / 2.0, "spent only {together} of {CAP}");
    let shared = SharedBudget::redis(&redis.url(), "nightly", CAP).unwrap();
    let recorded = shared.spent_usd().unwrap();
    assert!(
        (recorded - together).abs() < 1e-9,
        "{recorded} vs {together}"
    );
}
