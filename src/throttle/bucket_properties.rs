//! Properties of the throttle's pure bucket ([`Bucket`]), on explicit instants and no clock.
//!
//! Random limits and random traffic: requests arrive after random gaps (nanoseconds to
//! minutes), each expecting 1 to 3 API calls and an estimated number of tokens, poll in a
//! random order, sleep until the `ready_at` the bucket returns (the fake clock jumps there),
//! sometimes give up waiting, sometimes pause the bucket (as a 429 does), and settle after a
//! random time with random real usage (refunds and debt). Checked:
//!
//! - **rate**: over the admitted requests, in any window (every pair of admissions, so every
//!   window length at once), the calls and the tokens sent stay within
//!   `burst + rate × span / 1 min`, plus, for an admission larger than the burst (let in
//!   into debt when the bucket is full), what it exceeds the burst by;
//! - **liveness**: every request is admitted or gives up; a `ready_at` is never in the past.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::bucket::{Bucket, Grant, Ticket};

/// A minute in nanoseconds: a rate per minute is units per `MINUTE` nanoseconds.
const MINUTE: i128 = 60_000_000_000;

/// A wait this long means only a settle could make room.
const FOREVER: i128 = 300 * 24 * 60 * MINUTE;

/// More steps than any case needs: each step handles at least one event.
const MAX_STEPS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Requests `(per_minute, burst)`.
    requests: Option<(u64, u64)>,
    /// Tokens `(per_minute, burst)`.
    tokens: Option<(u64, u64)>,
    /// Whether requests may use less than they were granted (a refund at the settle).
    refunds: bool,
}

#[derive(Debug, Clone)]
struct Request {
    /// Nanoseconds after the previous arrival.
    gap: u64,
    /// API calls expected (what it asks the bucket for).
    calls: u64,
    /// Tokens estimated.
    tokens: u64,
    /// API calls really made: fewer is a refund, more is debt.
    actual_calls: u64,
    /// Tokens really used.
    actual_tokens: u64,
    /// Nanoseconds from admission to settle.
    lasts: u64,
    /// Gives up after waiting this long, if not admitted by then.
    patience: Option<u64>,
    /// On arrival, pauses the bucket this long (a throttled answer seen elsewhere).
    pause: Option<u64>,
}

/// A request the bucket let through: when, and what it counts for in a window.
#[derive(Debug, Clone, Copy)]
struct Admission {
    at: i128,
    /// Calls sent as far as the bucket was told: `min(actual, expected)` (more is debt,
    /// charged at the settle).
    calls: u64,
    tokens: u64,
    /// What the grant asked for, for the oversize allowance.
    granted: Grant,
}

/// `(per_minute, burst)`: the burst often the default (one minute's worth), else below it
/// (`Throttle::with_burst` refuses one above it).
fn dim(rates: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = (u64, u64)> {
    rates.prop_flat_map(|rate| {
        prop_oneof![
            1 => Just((rate, rate)),
            2 => (Just(rate), 1..=rate),
        ]
    })
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        prop::option::weighted(0.8, dim(1..=120)),
        prop::option::weighted(0.6, dim(100..=100_000)),
        any::<bool>(),
    )
        .prop_map(|(requests, tokens, refunds)| Limits {
            requests,
            tokens,
            refunds,
        })
}

/// A gap from a nanosecond to two minutes, most of them short.
fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => 0u64..1_000,
        3 => 0u64..1_000_000,
        3 => 0u64..1_000_000_000,
        2 => 0u64..120_000_000_000,
    ]
}

fn request(token_burst: u64, refunds: bool) -> impl Strategy<Value = Request> {
    // Estimates up to one and a half bursts, so some are oversized.
    let tokens = 0..=token_burst + token_burst / 2;
    // Real usage from none (all refunded) or the whole grant, up to twice it (debt).
    let least = if refunds { 0 } else { 100 };
    (
        gap(),
        1u64..=3,
        tokens,
        (least..=200u64, least..=200u64),
        prop_oneof![0u64..1_000_000, 0u64..5_000_000_000],
        prop::option::weighted(0.2, gap()),
        prop::option::weighted(0.05, 0u64..10_000_000_000),
    )
        .prop_map(
            |(gap, calls, tokens, (call_usage, usage), lasts, patience, pause)| Request {
                gap,
                calls,
                tokens,
                actual_calls: calls * call_usage / 100,
                actual_tokens: (u128::from(tokens) * u128::from(usage) / 100) as u64,
                lasts,
                patience,
                pause,
            },
        )
}

fn traffic() -> impl Strategy<Value = (Limits, Vec<Request>, u64)> {
    limits().prop_flat_map(|limits| {
        let token_burst = limits.tokens.map_or(5_000, |(_, burst)| burst);
        (
            Just(limits),
            prop::collection::vec(request(token_burst, limits.refunds), 0..200),
            any::<u64>(),
        )
    })
}

/// xorshift64*, for the order in which waiters poll.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

struct Waiting {
    ticket: Ticket,
    request: usize,
    gives_up_at: Option<i128>,
    ready_at: i128,
}

/// Run the traffic through a bucket on a fake clock; the admissions in time order.
fn simulate(
    limits: Limits,
    requests: &[Request],
    seed: u64,
) -> Result<Vec<Admission>, TestCaseError> {
    let t0 = Instant::now();
    let at = |ns: i128| t0 + Duration::from_nanos(u64::try_from(ns).expect("within u64"));
    let mut bucket = Bucket::new(t0, limits.requests, limits.tokens);
    let mut rng = Rng(seed | 1);
    let mut arrivals = Vec::with_capacity(requests.len());
    let mut t = 0i128;
    for r in requests {
        t += i128::from(r.gap);
        arrivals.push(t);
    }
    let mut next_arrival = 0;
    let mut waiting: Vec<Waiting> = Vec::new();
    // (settles at, request, grant)
    let mut in_flight: Vec<(i128, usize, Grant)> = Vec::new();
    let mut admissions = Vec::new();
    let mut gave_up = 0;
    let mut now = 0i128;

    // Every waiter polls once, in a random order; true if any was admitted.
    let mut poll = |now: i128,
                    bucket: &mut Bucket,
                    waiting: &mut Vec<Waiting>,
                    in_flight: &mut Vec<(i128, usize, Grant)>,
                    admissions: &mut Vec<Admission>|
     -> Result<bool, TestCaseError> {
        let mut order: Vec<usize> = (0..waiting.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut admitted = Vec::new();
        for i in order {
            let w = &mut waiting[i];
            match bucket.try_acquire(at(now), w.ticket) {
                Ok(grant) => {
                    let r = &requests[w.request];
                    prop_assert_eq!((grant.requests, grant.tokens), (r.calls, r.tokens));
                    admissions.push(Admission {
                        at: now,
                        calls: r.actual_calls.min(grant.requests),
                        tokens: r.actual_tokens.min(grant.tokens),
                        granted: grant,
                    });
                    in_flight.push((now + i128::from(r.lasts), w.request, grant));
                    admitted.push(i);
                }
                Err(ready) => {
                    let ready = i128::try_from(ready.duration_since(t0).as_nanos()).unwrap();
                    prop_assert!(ready > now, "ready_at {} is not after now {}", ready, now);
                    w.ready_at = ready;
                }
            }
        }
        admitted.sort_unstable();
        for i in admitted.iter().rev() {
            waiting.swap_remove(*i);
        }
        Ok(!admitted.is_empty())
    };

    for step in 0.. {
        prop_assert!(step < MAX_STEPS, "no end after {} steps", MAX_STEPS);
        // Settles due, in the order they happen.
        in_flight.sort_by_key(|(t, ..)| std::cmp::Reverse(*t));
        while in_flight.last().is_some_and(|(t, ..)| *t <= now) {
            let (t, request, grant) = in_flight.pop().unwrap();
            let r = &requests[request];
            bucket.settle_calls(at(t), grant, r.actual_tokens, r.actual_calls);
        }
        // Arrivals due.
        while next_arrival < requests.len() && arrivals[next_arrival] <= now {
            let r = &requests[next_arrival];
            if let Some(pause) = r.pause {
                bucket.pause_until(at(now + i128::from(pause)));
            }
            let ticket = bucket.join_calls(r.tokens, r.calls);
            waiting.push(Waiting {
                ticket,
                request: next_arrival,
                gives_up_at: r.patience.map(|p| now + i128::from(p)),
                ready_at: now,
            });
            next_arrival += 1;
        }
        // One round of polls; then those out of patience leave (a grant made on their behalf
        // by another's poll goes back); then the rest poll until nobody more gets in.
        poll(
            now,
            &mut bucket,
            &mut waiting,
            &mut in_flight,
            &mut admissions,
        )?;
        waiting.retain(|w| {
            let leaves = w.gives_up_at.is_some_and(|t| t <= now);
            if leaves {
                bucket.cancel(at(now), w.ticket);
                gave_up += 1;
            }
            !leaves
        });
        while poll(
            now,
            &mut bucket,
            &mut waiting,
            &mut in_flight,
            &mut admissions,
        )? {}

        let next_ready = waiting.iter().map(|w| w.ready_at).min();
        let next = [
            arrivals.get(next_arrival).copied(),
            in_flight.iter().map(|(t, ..)| *t).min(),
            waiting.iter().filter_map(|w| w.gives_up_at).min(),
            next_ready,
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { break };
        prop_assert!(
            next - now < FOREVER,
            "stuck at {} ns: {} waiting and nothing else to come",
            now,
            waiting.len()
        );
        // A call that lasts no time settles at the instant it was admitted, in the next step.
        prop_assert!(next >= now);
        now = next;
    }
    prop_assert!(waiting.is_empty() && in_flight.is_empty());
    prop_assert_eq!(bucket.waiters(), 0);
    prop_assert_eq!(admissions.len() + gave_up, requests.len());
    Ok(admissions)
}

/// In every window of admissions (from the ath to the bth, in time order), the units sent
/// stay within `burst + rate × span / 1 min + allowance + 1`: the `+ 1` of the bound the
/// throttle promises (a refund landing inside a window can be worth a few nanoseconds of
/// refill more than charging the real cost up front would have left).
fn check_windows(
    what: &str,
    (rate, burst): (u64, u64),
    admissions: &[Admission],
    units: impl Fn(&Admission) -> u64,
    allowance: u64,
) -> Result<(), TestCaseError> {
    let mut prefix = vec![0i128];
    for a in admissions {
        prefix.push(prefix.last().unwrap() + i128::from(units(a)));
    }
    for first in 0..admissions.len() {
        for last in first..admissions.len() {
            let sent = prefix[last + 1] - prefix[first];
            let span = admissions[last].at - admissions[first].at;
            let most = i128::from(burst + allowance + 1) * MINUTE + i128::from(rate) * span;
            prop_assert!(
                sent * MINUTE <= most,
                "{} {} sent in {} ns (admissions {}..={}) at {}/min, burst {}, allowance {}",
                sent,
                what,
                span,
                first,
                last,
                rate,
                burst,
                allowance
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the traffic, every request ends, and no window sees more calls or tokens
    /// than the burst plus the window's refill (plus an oversized admission's excess),
    /// refunds included.
    #[test]
    fn no_window_admits_more_than_the_burst_and_the_refill((limits, requests, seed) in traffic()) {
        let admissions = simulate(limits, &requests, seed)?;
        let bound = |dim: (u64, u64)| dim;
        if let Some(dim @ (_, burst)) = limits.requests {
            let oversize = admissions.iter().map(|a| a.granted.requests.saturating_sub(burst)).max();
            check_windows("calls", bound(dim), &admissions, |a| a.calls, oversize.unwrap_or(0))?;
        }
        if let Some(dim @ (_, burst)) = limits.tokens {
            let oversize = admissions.iter().map(|a| a.granted.tokens.saturating_sub(burst)).max();
            check_windows("tokens", bound(dim), &admissions, |a| a.tokens, oversize.unwrap_or(0))?;
        }
    }
}

// Two bugs the property found. Refunds stacked above the burst: fixed in `bucket.rs` (a
// refund is worth nothing once the level has been full since its grant), and kept here as an
// example. A burst above one minute's worth starved a request larger than a minute's worth:
// `Throttle::with_burst` now refuses such a burst (the API's bucket holds no more), tested
// in `throttle/mod.rs`.

/// With a burst below one minute's worth, a grant refunded at its settle gives back room
/// that the refill already made up while it was in flight, so refunds stack on top of a full
/// bucket and more than the burst goes at once. (Never more than one minute's worth: the API
/// does not refuse; only the burst the user asked for is exceeded.)
#[test]
fn refunds_stack_on_top_of_a_burst_below_the_rate() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    // 6,000 tokens a minute (100 a second), a burst of 1,000 (as `SessionBuilder`'s
    // `requests_per_minute(60).tokens_per_minute(6_000).burst(10)` makes).
    let mut b = Bucket::new(t0, None, Some((6_000, 1_000)));
    // Three long calls of 1,000 estimated tokens, ten seconds apart: each takes the refilled
    // burst.
    let mut held = Vec::new();
    for s in [0, 10, 20] {
        let ticket = b.join(1_000);
        held.push(b.try_acquire(at(s), ticket).expect("the refilled burst"));
    }
    // At 30 s the burst has refilled again and goes out; then the three long calls end
    // having used 100 tokens each, and each refund lets another 900 through at once.
    let mut sent = 0;
    let ticket = b.join(1_000);
    sent += b
        .try_acquire(at(30), ticket)
        .expect("the refilled burst")
        .tokens;
    for grant in held {
        b.settle(at(30), grant, 100);
        let ticket = b.join(900);
        match b.try_acquire(at(30), ticket) {
            Ok(grant) => sent += grant.tokens,
            Err(_) => b.cancel(at(30), ticket),
        }
    }
    assert!(
        sent <= 1_000 + 1,
        "{sent} tokens admitted at one instant with a burst of 1,000"
    );
}
