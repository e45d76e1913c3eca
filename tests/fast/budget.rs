//! The session's spending cap: where a run stops, that nothing is sent after the stop, how far
//! concurrent items overshoot, and that a spent session stays spent until the cap is raised;
//! on both backends.

use crate::{on_both_backends, support};

use claude_rayon::prelude::*;
use claude_rayon::{Error, Outcome, Response, Session};
use rayon::prelude::*;
use support::backends::{Kind, TestBackend};

/// Prompts of one length cost the same on the fake CLI and the mock API (their costs are
/// computed from tokens).
fn prompt(i: u32) -> String {
    format!("budget item {i:04}")
}

/// A session with no cap yet, and the cost of one item learned from a first query (which also
/// seeds the budget's estimate with the real cost).
fn session_and_item_cost(b: &TestBackend, concurrency: usize) -> (Session, f64) {
    let session = b.builder().concurrency(concurrency).build().unwrap();
    let cost = session.query(prompt(9999)).unwrap().cost_usd;
    assert!(cost > 0.0);
    (session, cost)
}

fn run(session: &Session, items: std::ops::Range<u32>) -> Outcome<(u32, Response), u32> {
    items
        .into_par_iter()
        .claude_map(session, |i| prompt(*i))
        .collect()
}

fn assert_all_refused(outcome: &Outcome<(u32, Response), u32>) {
    for failed in &outcome.dead_letter {
        assert!(
            matches!(failed.error, Error::BudgetExceeded { .. }) && failed.attempts == 0,
            "item {}: {:?} after {} attempts",
            failed.item,
            failed.error,
            failed.attempts
        );
    }
}

fn one_at_a_time_the_run_stops_exactly_where_the_budget_runs_out(b: &TestBackend) {
    let (session, cost) = session_and_item_cost(b, 1);
    // Room for the first query and five items, with half an item to spare.
    let budget = cost * 6.5;
    session.set_max_budget_usd(budget);

    let outcome = run(&session, 0..12);
    let done: Vec<u32> = outcome.ok.iter().map(|(i, _)| *i).collect();
    assert_eq!(done, vec![0, 1, 2, 3, 4]);
    assert_eq!(outcome.dead_letter.len(), 7);
    assert_all_refused(&outcome);
    assert_eq!(b.prompts_seen().len(), 1 + 5, "no prompt after the stop");
    let stats = session.stats();
    assert!(stats.budget_exhausted);
    assert!(stats.cost_usd <= budget, "{} > {budget}", stats.cost_usd);

    // The session stays spent: a later run and a query fail at once, sending nothing.
    let later = run(&session, 5..8);
    assert!(later.ok.is_empty());
    assert_all_refused(&later);
    assert!(matches!(
        session.query(prompt(9998)),
        Err(Error::BudgetExceeded { .. })
    ));
    assert_eq!(b.prompts_seen().len(), 6);

    // Raised by three items' worth, it goes on for exactly three more.
    session.set_max_budget_usd(budget + cost * 3.0);
    assert!(!session.stats().budget_exhausted);
    let resumed = run(&session, 5..12);
    let done: Vec<u32> = resumed.ok.iter().map(|(i, _)| *i).collect();
    assert_eq!(done, vec![5, 6, 7]);
    assert_all_refused(&resumed);
    assert_eq!(b.prompts_seen().len(), 9);

    // Lifting the cap lets everything through.
    session.remove_max_budget();
    assert_eq!(run(&session, 8..12).ok.len(), 4);
}

fn four_at_a_time_the_overshoot_stays_within_the_items_in_flight(b: &TestBackend) {
    const CONCURRENCY: usize = 4;
    let (session, cost) = session_and_item_cost(b, CONCURRENCY);
    let budget = cost * 20.5;
    session.set_max_budget_usd(budget);

    let outcome = run(&session, 0..60);
    // Every reservation is the real cost, so exactly as many start as fit, in any order.
    assert_eq!(outcome.ok.len(), 19);
    assert_eq!(outcome.dead_letter.len(), 41);
    assert_all_refused(&outcome);
    assert_eq!(b.prompts_seen().len(), 1 + 19, "no prompt after the stop");
    let spent = session.stats().cost_usd;
    let overshoot = spent - budget;
    assert!(
        overshoot <= (CONCURRENCY - 1) as f64 * cost,
        "overshoot {overshoot} with items of {cost}"
    );
    eprintln!(
        "uniform items, concurrency {CONCURRENCY}: budget {budget:.6}, spent {spent:.6}, \
         overshoot {overshoot:+.6} USD ({:+.2} items)",
        overshoot / cost
    );
}

fn an_estimate_below_the_real_cost_overshoots_by_at_most_the_difference_per_item_in_flight(
    b: &TestBackend,
) {
    const CONCURRENCY: usize = 4;
    // A short first query teaches the budget a low estimate; the items cost far more.
    let session = b.builder().concurrency(CONCURRENCY).build().unwrap();
    let low = session.query("x").unwrap().cost_usd;
    let long = |i: &u32| format!("{} {i:04}", "long ".repeat(80));
    let high = session.query(long(&9999)).unwrap().cost_usd;
    assert!(high > 10.0 * low, "{low} vs {high}");
    // A fresh session whose first estimate is the low cost, with room for 2.5 real items:
    // the first wave of four all fit on the estimate, then the real costs land.
    let fresh = TestBackend::new(b.kind());
    let session = fresh
        .builder()
        .concurrency(CONCURRENCY)
        .cost_estimate_usd(low)
        .max_budget_usd(high * 2.5)
        .build()
        .unwrap();
    let outcome: Outcome<(u32, Response), u32> = (0..20u32)
        .into_par_iter()
        .claude_map(&session, long)
        .collect();
    assert_all_refused(&outcome);
    // Two always fit; no more than the first wave runs, since once a real cost is seen the
    // items still in flight are valued at it.
    assert!(
        (2..=CONCURRENCY).contains(&outcome.ok.len()),
        "{} items ran",
        outcome.ok.len()
    );
    let spent = session.stats().cost_usd;
    let overshoot = spent - high * 2.5;
    assert!(
        overshoot <= CONCURRENCY as f64 * (high - low) + 1e-12,
        "overshoot {overshoot}"
    );
    assert_eq!(fresh.prompts_seen().len(), outcome.ok.len());
    eprintln!(
        "estimate {low:.6} below real cost {high:.6}, concurrency {CONCURRENCY}: {} items ran, \
         budget {:.6}, spent {spent:.6}, overshoot {overshoot:+.6} USD ({:+.2} items)",
        outcome.ok.len(),
        high * 2.5,
        overshoot / high
    );
}

fn a_spent_budget_stays_spent_for_later_runs_even_where_an_item_would_now_fit(b: &TestBackend) {
    // The default first estimate (0.01 USD) is a hundred times the real cost or more: with
    // four items in flight on it, the third reservation does not fit a 0.025 USD cap.
    let session = b
        .builder()
        .concurrency(4)
        .max_budget_usd(0.025)
        .build()
        .unwrap();
    // The delay keeps the first items in flight while the others ask for their reservation.
    let first: Outcome<(u32, Response), u32> = (0..8u32)
        .into_par_iter()
        .claude_map(&session, |i| format!("[[sim:delay=300]] {}", prompt(*i)))
        .collect();
    assert_eq!(first.ok.len(), 2, "{:?}", first.dead_letter);
    assert_all_refused(&first);
    let spent = session.stats().cost_usd;
    assert!(spent < 0.001, "{spent}");
    // Plenty of room now that the real cost is known, but the session said it was done.
    let later = run(&session, 8..10);
    assert!(later.ok.is_empty());
    assert_all_refused(&later);
    assert_eq!(b.prompts_seen().len(), 2);
    // Changing the cap lets it go on, reserving the cost now known.
    session.set_max_budget_usd(0.025);
    assert_eq!(run(&session, 8..20).ok.len(), 12);
}

fn an_item_too_big_for_the_budget_is_refused_before_it_is_sent(b: &TestBackend) {
    let session = b
        .builder()
        .model("sonnet")
        .max_budget_usd(1.0)
        .concurrency(1)
        .build()
        .unwrap();
    // 10 MB of prompt is about 2.6 million tokens: 7.8 USD of input on Sonnet.
    let huge = "x".repeat(10 * 1024 * 1024);
    let items = vec![huge];
    let outcome: claude_rayon::Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |s| s.to_string())
        .collect();
    let failed = &outcome.dead_letter[0];
    assert!(
        matches!(failed.error, claude_rayon::Error::ItemOverBudget { .. }),
        "{}",
        failed.error
    );
    assert_eq!(failed.attempts, 0);
    assert!(b.prompts_seen().is_empty(), "the item was sent");
}

fn items_that_hold_a_reservation_are_sent_after_the_budget_stops_the_rest(b: &TestBackend) {
    // Three reservations fit, the fourth does not. The throttle lets one request through
    // at a time (60 a minute, burst 1): two items wait on it, holding their reservations,
    // when the fourth is refused and stops the run. They were admitted: they go. Each item
    // really costs about the estimate (a ticket and its echo: 2,400 characters at the fake
    // CLI's prices, 6,400 at Haiku's on the mock API), so the fourth is refused even when a
    // busy machine starts it after the first has finished.
    let ticket_len = match b.kind() {
        Kind::Cli => 2_400,
        Kind::Api => 6_400,
    };
    let session = b
        .builder()
        .concurrency(4)
        .requests_per_minute(60)
        .burst(1)
        .cost_estimate_usd(0.01)
        .max_budget_usd(0.035)
        .build()
        .unwrap();
    let results: Vec<_> = (0..4u32)
        .into_par_iter()
        .claude_map(&session, |i| support::ticket(*i as usize, ticket_len))
        .collect();
    for (_, response) in results.iter().flatten() {
        assert!(
            (0.00875..0.0116).contains(&response.cost_usd),
            "three items must fit in 0.035 USD and four not: {}",
            response.cost_usd
        );
    }
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(f) if matches!(f.error, Error::BudgetExceeded { .. })))
        .count();
    let cancelled = results
        .iter()
        .filter(|r| matches!(r, Err(f) if matches!(f.error, Error::Cancelled)))
        .count();
    assert_eq!(cancelled, 0, "nobody cancelled this run: {results:?}");
    assert_eq!(refused, 1, "{results:?}");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
}

fn one_oversize_item_fails_alone_and_the_budget_goes_on(b: &TestBackend) {
    let session = b
        .builder()
        .model("sonnet")
        .max_budget_usd(1.0)
        .concurrency(2)
        .build()
        .unwrap();
    // 10 MB of prompt is about 2.6 million tokens: 7.8 USD of input on Sonnet, refused before
    // it is sent. The other items cost a tiny part of the dollar.
    let huge = format!("Summarise this export: {}", "row of data; ".repeat(800_000));
    let mut items: Vec<String> = (0..6)
        .map(|i| format!("Summarise the meeting notes of week {i} in one paragraph for the team."))
        .collect();
    items.insert(3, huge.clone());
    let outcome: Outcome<(String, Response), String> = items
        .into_par_iter()
        .claude_map(&session, |s| s.clone())
        .collect();
    assert_eq!(
        outcome.ok.len(),
        6,
        "{:?}",
        outcome
            .dead_letter
            .iter()
            .map(|f| &f.error)
            .collect::<Vec<_>>()
    );
    assert_eq!(outcome.dead_letter.len(), 1);
    let failed = &outcome.dead_letter[0];
    assert_eq!(
        failed.item.len(),
        huge.len(),
        "the oversize item is the one that failed"
    );
    assert_eq!(failed.attempts, 0);
    assert!(
        matches!(failed.error, Error::ItemOverBudget { .. }) && !failed.error.is_fatal(),
        "{}",
        failed.error
    );
    assert!(
        failed.error.to_string().contains("this item"),
        "{}",
        failed.error
    );
    assert!(
        !b.prompts_seen().iter().any(|p| p.len() > 1_000_000),
        "the oversize item was sent"
    );
    // Refused is not spent: the session goes on, for later runs and queries too.
    assert!(!session.stats().budget_exhausted);
    assert_eq!(run(&session, 0..4).ok.len(), 4);
    session
        .query("And one more question after the big one.")
        .unwrap();
    assert_eq!(b.prompts_seen().len(), 6 + 4 + 1);
}

on_both_backends!(
    one_at_a_time_the_run_stops_exactly_where_the_budget_runs_out,
    four_at_a_time_the_overshoot_stays_within_the_items_in_flight,
    an_estimate_below_the_real_cost_overshoots_by_at_most_the_difference_per_item_in_flight,
    a_spent_budget_stays_spent_for_later_runs_even_where_an_item_would_now_fit,
    an_item_too_big_for_the_budget_is_refused_before_it_is_sent,
    items_that_hold_a_reservation_are_sent_after_the_budget_stops_the_rest,
    one_oversize_item_fails_alone_and_the_budget_goes_on,
);
