//! Properties of a whole run on the fake CLI: random item counts, latencies, fault schedules,
//! cancel points and budgets, each case on a fresh fake, checked against what must hold
//! whatever the schedule: every item ends exactly once with the outcome its faults call for,
//! results come back in input order, the session's stats agree with the results and with
//! what the fake saw, and a budget is overshot by no more than its documented bound.

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use claude_rayon::prelude::*;
use claude_rayon::MapResult;
use claude_rayon::{Cancel, CliError, Error, Session};
use proptest::prelude::*;
use proptest::sample::Index;
use rayon::prelude::*;
use support::{quick_retries, Fake};

/// The session timeout of a case with a hanging item: each of its attempts costs this.
const HANG_TIMEOUT: Duration = Duration::from_millis(400);

/// A number no other case of this test binary has, for the ids and fault keys in prompts.
fn next_case() -> u64 {
    static CASE: AtomicU64 = AtomicU64::new(0);
    CASE.fetch_add(1, Ordering::Relaxed)
}

/// What the fake does with one item.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// The first `times` attempts are API errors with `status`.
    Fail {
        times: u32,
        status: u16,
    },
    /// The first `times` attempts crash the process.
    Crash {
        times: u32,
    },
    /// Every attempt hangs until the session's timeout.
    Hang,
}

#[derive(Debug, Clone, Copy)]
struct Item {
    delay_ms: u32,
    fault: Fault,
}

#[derive(Debug, Clone)]
struct Plan {
    items: Vec<Item>,
    concurrency: usize,
    max_retries: u32,
}

impl Plan {
    fn has_hang(&self) -> bool {
        self.items.iter().any(|item| item.fault == Fault::Hang)
    }

    fn session(&self, fake: &Fake) -> Session {
        let mut builder = fake
            .builder()
            .concurrency(self.concurrency)
            .retry_policy(quick_retries(self.max_retries));
        if self.has_hang() {
            builder = builder.timeout(HANG_TIMEOUT);
        }
        builder.build().unwrap()
    }
}

/// How a run is driven.
#[derive(Debug, Clone, Copy)]
enum Adaptor {
    /// `claude_map` collected from an indexed parallel iterator.
    Map,
    /// `claude_stream_map` over a plain iterator, with this reorder window if given.
    Stream { max_outstanding: Option<usize> },
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        6 => Just(Fault::None),
        2 => (1u32..=3).prop_map(|times| Fault::Fail { times, status: 429 }),
        2 => (1u32..=3).prop_map(|times| Fault::Fail { times, status: 529 }),
        1 => (1u32..=3).prop_map(|times| Fault::Crash { times }),
    ]
}

/// 0 to 39 items with small latencies and faults, at most one of them hanging.
fn plan() -> impl Strategy<Value = Plan> {
    (
        prop::collection::vec((0u32..=20, fault()), 0..40),
        1usize..=4,
        0u32..=2,
        prop::option::weighted(0.2, any::<Index>()),
    )
        .prop_map(|(items, concurrency, max_retries, hang)| {
            let mut items: Vec<Item> = items
                .into_iter()
                .map(|(delay_ms, fault)| Item { delay_ms, fault })
                .collect();
            if let (Some(hang), false) = (hang, items.is_empty()) {
                let i = hang.index(items.len());
                items[i].fault = Fault::Hang;
            }
            Plan {
                items,
                concurrency,
                max_retries,
            }
        })
}

fn adaptor() -> impl Strategy<Value = Adaptor> {
    prop_oneof![
        Just(Adaptor::Map),
        prop::option::of(1usize..=8)
            .prop_map(|max_outstanding| Adaptor::Stream { max_outstanding }),
    ]
}

/// The id that item `i` of `case` carries in its prompt, and finds in its answer.
fn id(case: u64, i: usize) -> String {
    format!("id={case}:{i};")
}

fn prompt(case: u64, i: usize, item: &Item) -> String {
    let fault = match item.fault {
        Fault::None => String::new(),
        Fault::Fail { times, status } => format!("[[sim:fail-times=c{case}i{i},{times},{status}]]"),
        Fault::Crash { times } => format!("[[sim:crash-times=c{case}i{i},{times}]]"),
        Fault::Hang => "[[sim:hang]]".to_string(),
    };
    format!("[[sim:delay={}]]{fault} {}", item.delay_ms, id(case, i))
}

/// What a run with no stop must give for an item: calls made, and the error if it fails.
fn predicted(item: &Item, max_retries: u32) -> (u32, Option<Fault>) {
    let tries = max_retries + 1;
    match item.fault {
        Fault::None => (1, None),
        Fault::Fail { times, .. } | Fault::Crash { times } if times < tries => (times + 1, None),
        Fault::Fail { .. } | Fault::Crash { .. } | Fault::Hang => (tries, Some(item.fault)),
    }
}

/// Whether `error` is what `fault` makes an attempt fail with.
fn is_error_of(fault: Fault, error: &Error) -> bool {
    match fault {
        Fault::Fail { status, .. } => {
            matches!(error, Error::Api { status: Some(s), .. } if *s == status)
        }
        Fault::Crash { .. } => matches!(
            error,
            Error::Cli(CliError::ProcessExited { code: Some(3), .. })
        ),
        Fault::Hang => matches!(error, Error::Timeout(_)),
        Fault::None => false,
    }
}

/// What an item may end as, given where a cancel fell.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Allowed {
    /// Exactly the predicted outcome.
    Predicted,
    /// Cancelled before its first call.
    Cancelled,
    /// Either of those, or its fault's error after fewer calls than predicted (a cancel
    /// ended its retries).
    Any,
}

/// Run `plan` on `adaptor`, cancelling at `cancel_at` if given: for `claude_map` when the
/// prompt of item `k` is built, for a stream after its `k`th result. Returns the results and
/// the first index from which every item must come back cancelled.
fn run(
    session: &Session,
    case: u64,
    plan: &Plan,
    adaptor: Adaptor,
    cancel_at: Option<usize>,
) -> (Vec<MapResult<usize>>, usize) {
    let n = plan.items.len();
    let items = Arc::new(plan.items.clone());
    let cancel = Cancel::new();
    match adaptor {
        Adaptor::Map => {
            let results = (0..n)
                .into_par_iter()
                .claude_map(session, |i| {
                    if cancel_at == Some(*i) {
                        cancel.cancel();
                    }
                    prompt(case, *i, &items[*i])
                })
                .with_cancel(&cancel)
                .collect();
            // Item k was past its stop check; at most `concurrency - 1` others were
            // taken from the queue then, all of them before k + concurrency.
            let cut = cancel_at.map_or(n, |k| k + session.concurrency());
            (results, cut)
        }
        Adaptor::Stream { max_outstanding } => {
            let prompts = Arc::clone(&items);
            let mut stream = (0..n)
                .claude_stream_map(session, move |i| prompt(case, *i, &prompts[*i]))
                .with_cancel(&cancel);
            if let Some(max) = max_outstanding {
                stream = stream.with_max_outstanding(max);
            }
            let window = stream.max_outstanding();
            if cancel_at == Some(0) {
                cancel.cancel();
            }
            let mut results = Vec::new();
            for result in stream {
                results.push(result);
                if cancel_at == Some(results.len()) {
                    cancel.cancel();
                }
            }
            // Before the kth result was yielded, at most `window` items were out of the
            // source, the (k-1)th first: nothing at or after k - 1 + window was pulled.
            let cut = match cancel_at {
                None => n,
                Some(0) => 0,
                Some(k) => k - 1 + window,
            };
            (results, cut)
        }
    }
}

/// Check a finished run against `allowed(i)` for each item, and the session's stats and the
/// fake's record against the results.
fn check(
    fake: &Fake,
    session: &Session,
    case: u64,
    plan: &Plan,
    results: &[MapResult<usize>],
    allowed: impl Fn(usize) -> Allowed,
) -> Result<(), TestCaseError> {
    let n = plan.items.len();
    // Every item exactly once, in input order.
    prop_assert_eq!(results.len(), n);
    let mut calls = vec![0u32; n];
    for (p, _) in fake.prompts() {
        let i = (0..n).find(|i| p.ends_with(&id(case, *i)));
        let i = i.ok_or_else(|| TestCaseError::fail(format!("a prompt of no item: {p:?}")))?;
        calls[i] += 1;
    }
    let (mut ok, mut failed, mut retried) = (0u64, 0u64, 0u64);
    for (i, result) in results.iter().enumerate() {
        let item = &plan.items[i];
        let (want_calls, want_error) = predicted(item, plan.max_retries);
        let allowed = allowed(i);
        retried += u64::from(calls[i].saturating_sub(1));
        match result {
            Ok((got, response)) => {
                ok += 1;
                prop_assert_eq!(*got, i, "out of order");
                prop_assert_eq!(
                    &response.text,
                    &format!("echo: {}", prompt(case, i, item)),
                    "item {} got another item's answer",
                    i
                );
                prop_assert!(
                    allowed != Allowed::Cancelled,
                    "item {} ran after the cancel",
                    i
                );
                prop_assert!(want_error.is_none(), "item {} should fail: {:?}", i, item);
                prop_assert_eq!(calls[i], want_calls, "calls for item {}", i);
            }
            Err(f) => {
                failed += 1;
                prop_assert_eq!(f.item, i, "out of order");
                prop_assert_eq!(f.attempts, calls[i], "item {}: attempts vs calls seen", i);
                let cancelled = matches!(f.error, Error::Cancelled) && f.attempts == 0;
                let exact = want_error.is_some_and(|fault| is_error_of(fault, &f.error))
                    && f.attempts == want_calls;
                let short = is_error_of(item.fault, &f.error) && f.attempts < want_calls;
                let fits = match allowed {
                    Allowed::Predicted => exact,
                    Allowed::Cancelled => cancelled,
                    Allowed::Any => exact || cancelled || (f.attempts >= 1 && short),
                };
                prop_assert!(
                    fits,
                    "item {} ({:?}, {:?}) ended as {:?} after {} attempts",
                    i,
                    item,
                    allowed,
                    f.error,
                    f.attempts
                );
            }
        }
    }
    let stats = session.stats();
    prop_assert_eq!(
        (stats.started, stats.succeeded, stats.failed),
        (n as u64, ok, failed),
        "stats vs results"
    );
    prop_assert_eq!(
        stats.requests,
        calls.iter().map(|c| u64::from(*c)).sum::<u64>()
    );
    // Exact, with or without a cancel: a retry stopped on the throttle after its backoff is
    // never sent, and not counted.
    prop_assert_eq!(stats.retried, retried, "retries counted vs made");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// With no stop, every item ends exactly once with the outcome its fault schedule calls
    /// for (success after its failures, or its last error after max_retries + 1 calls), in
    /// input order, with its own answer, and the stats count what the fake saw.
    #[test]
    fn every_item_ends_once_in_order_as_its_faults_say(plan in plan(), adaptor in adaptor()) {
        let fake = Fake::new();
        let session = plan.session(&fake);
        let case = next_case();
        let (results, _) = run(&session, case, &plan, adaptor, None);
        check(&fake, &session, case, &plan, &results, |_| Allowed::Predicted)?;
    }

    /// A cancel at any point: every item still ends exactly once and in order; items before
    /// it end as predicted, items past the reach of the work already started come back
    /// cancelled with no call made, and none is lost.
    #[test]
    fn a_cancel_at_any_point_loses_no_item(
        plan in plan(),
        adaptor in adaptor(),
        at in any::<Index>(),
    ) {
        let fake = Fake::new();
        let session = plan.session(&fake);
        let case = next_case();
        let n = plan.items.len();
        let k = at.index(n + 1);
        let (results, cut) = run(&session, case, &plan, adaptor, Some(k));
        let allowed = |i: usize| match adaptor {
            // The stream yielded the first k before the cancel.
            Adaptor::Stream { .. } if i < k => Allowed::Predicted,
            // The item whose prompt set the cancel had made no call yet: it makes none.
            Adaptor::Map if i == k => Allowed::Cancelled,
            _ if i >= cut => Allowed::Cancelled,
            _ => Allowed::Any,
        };
        check(&fake, &session, case, &plan, &results, allowed)?;
    }
}

/// A fixed-width prompt: every item of a case costs the same on the fake, whose cost comes
/// from the prompt's length.
fn uniform_prompt(case: u64, i: usize, delay_ms: u32) -> String {
    format!("[[sim:delay={delay_ms:02}]] id={case:06}:{i:03};")
}

/// What one prompt costs on the fake, learned from a session of its own.
fn cost_of(fake: &Fake, prompt: &str) -> f64 {
    let probe = fake.builder().concurrency(1).build().unwrap();
    let cost = probe.query(prompt).unwrap().cost_usd;
    assert!(cost > 0.0);
    cost
}

fn all_refused_once(results: &[MapResult<usize>]) -> Result<(u64, u64), TestCaseError> {
    let mut ok = 0;
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok((got, _)) => {
                prop_assert_eq!(*got, i);
                ok += 1;
            }
            Err(f) => {
                prop_assert_eq!(f.item, i);
                // Refused before it was sent: the budget is spent, or this item alone is more
                // than the whole budget (which spends nothing).
                prop_assert!(
                    matches!(
                        f.error,
                        Error::BudgetExceeded { .. } | Error::ItemOverBudget { .. }
                    ) && f.attempts == 0,
                    "item {}: {:?} after {} attempts",
                    i,
                    f.error,
                    f.attempts
                );
            }
        }
    }
    Ok((ok, results.len() as u64 - ok))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Uniform items and a first estimate equal to their cost: exactly as many items run as
    /// the cap holds (cap = m + ½ items), the spend never exceeds the cap, nothing is sent
    /// after the stop, and every other item is refused before any call.
    #[test]
    fn a_uniform_budget_with_a_known_cost_is_never_exceeded(
        delays in prop::collection::vec(0u32..=20, 0..40),
        concurrency in 1usize..=4,
        room in any::<Index>(),
    ) {
        let fake = Fake::new();
        let case = next_case();
        let n = delays.len();
        let cost = cost_of(&fake, &uniform_prompt(case, 999, 0));
        let m = room.index(n + 3);
        let cap = cost * (m as f64 + 0.5);
        let session = fake
            .builder()
            .concurrency(concurrency)
            .cost_estimate_usd(cost)
            .max_budget_usd(cap)
            .build()
            .unwrap();
        let results: Vec<MapResult<usize>> = (0..n)
            .into_par_iter()
            .claude_map(&session, |i| uniform_prompt(case, *i, delays[*i]))
            .collect();
        prop_assert_eq!(results.len(), n);
        let (ok, refused) = all_refused_once(&results)?;
        prop_assert_eq!(ok as usize, n.min(m));
        let stats = session.stats();
        prop_assert!(stats.cost_usd <= cap, "spent {} of {}", stats.cost_usd, cap);
        prop_assert_eq!((stats.started, stats.succeeded, stats.failed), (n as u64, ok, refused));
        // The probe's prompt, then one per item that ran.
        prop_assert_eq!(fake.prompts().len() as u64, 1 + ok);
    }

    /// Items of different costs and any first estimate: the spend exceeds the cap by at most
    /// concurrency × (largest item cost − the smallest estimate an item can be admitted on),
    /// the bound in src/budget.rs.
    #[test]
    fn the_budget_overshoot_stays_within_its_bound(
        items in prop::collection::vec((0u32..=20, 0usize..400), 0..40),
        concurrency in 1usize..=4,
        // Items cost 1.5e-4 to 2e-3 USD: estimates below all of them, and among them.
        first_estimate in prop_oneof![1e-6f64..1.5e-4, 1.5e-4f64..3e-3],
        cap in 0f64..0.02,
    ) {
        let fake = Fake::new();
        let case = next_case();
        let n = items.len();
        let session = fake
            .builder()
            .concurrency(concurrency)
            .cost_estimate_usd(first_estimate)
            .max_budget_usd(cap)
            .build()
            .unwrap();
        let results: Vec<MapResult<usize>> = (0..n)
            .into_par_iter()
            .claude_map(&session, |i| {
                let (delay, pad) = items[*i];
                format!("[[sim:delay={delay}]] {} {}", "x".repeat(pad), id(case, *i))
            })
            .collect();
        prop_assert_eq!(results.len(), n);
        let (ok, refused) = all_refused_once(&results)?;
        let costs: Vec<f64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|(_, response)| response.cost_usd))
            .collect();
        let spent = session.stats().cost_usd;
        prop_assert!((spent - costs.iter().sum::<f64>()).abs() < 1e-12);
        let largest = costs.iter().copied().fold(0.0, f64::max);
        // Every reservation is at least the first estimate or a cost already seen.
        let lowest_estimate = costs.iter().copied().fold(first_estimate, f64::min);
        let bound = concurrency as f64 * (largest - lowest_estimate).max(0.0);
        prop_assert!(
            spent - cap <= bound + 1e-12,
            "spent {} of {}: overshoot {} above the bound {}",
            spent,
            cap,
            spent - cap,
            bound
        );
        let stats = session.stats();
        prop_assert_eq!((stats.started, stats.succeeded, stats.failed), (n as u64, ok, refused));
        prop_assert_eq!(fake.prompts().len() as u64, ok, "a refused item was sent");
    }
}
