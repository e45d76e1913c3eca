//! One `Arc<Throttle>` shared by several sessions on the fake CLI: together they stay under
//! its request and token limits, waits show in the stats, and a 429 pauses every session.
//!
//! Limits are checked on when the fake CLI received each prompt (the `t_ms` of its record),
//! never on how fast this machine is: for every window between two arrivals, what arrived must
//! fit in the burst plus the rate times the window, give or take one request. A slow machine
//! only spreads the arrivals out.

use crate::support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use claude_rayon::prelude::*;
use claude_rayon::{Cancel, Error, RetryPolicy, Session, Throttle};
use rayon::prelude::*;
use support::{wait_until, Fake};

/// When the fake CLI received each prompt containing `marker`: `(prompt, t_ms)`, by time.
fn arrivals(fake: &Fake, marker: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = fake
        .events()
        .iter()
        .filter(|e| e["event"] == "prompt")
        .filter_map(|e| {
            let prompt = e["prompt"].as_str()?;
            prompt.contains(marker).then(|| {
                let t = e["t_ms"].as_u64().expect("the fake records t_ms");
                (prompt.to_string(), t)
            })
        })
        .collect();
    out.sort_by_key(|(_, t)| *t);
    out
}

/// Checks that every window `[t_i, t_j]` of the arrivals `(t_ms, cost)`, sorted by time,
/// holds at most `burst + per_ms * (t_j - t_i) + tolerance` of cost.
fn assert_within_limit(arrivals: &[(u64, f64)], burst: f64, per_ms: f64, tolerance: f64) {
    for (i, &(start, _)) in arrivals.iter().enumerate() {
        let mut sum = 0.0;
        for (j, &(end, cost)) in arrivals.iter().enumerate().skip(i) {
            sum += cost;
            let allowed = burst + per_ms * (end - start) as f64 + tolerance;
            assert!(
                sum <= allowed,
                "arrivals {i}..={j} within {} ms cost {sum}, more than {allowed} \
                 (burst {burst} + {per_ms}/ms + tolerance {tolerance}); arrivals: {arrivals:?}",
                end - start
            );
        }
    }
}

/// Warms both processes of a concurrency-2 session, so process starts do not skew arrival
/// times later (its prompts carry `warm`, which the checks leave out).
fn warm(session: &Session, k: usize) {
    let results: Vec<_> = (0..2)
        .into_par_iter()
        .claude_map(session, |i| format!("[[sim:delay=300]] warm s{k} {i}"))
        .collect();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

#[test]
fn sessions_sharing_a_throttle_stay_under_its_request_limit_together() {
    const RPM: u32 = 600; // 10 per second
    const BURST: u32 = 2;
    const ITEMS: [usize; 3] = [9, 8, 8];
    let shared = Arc::new(
        Throttle::new(Some(RPM), None)
            .and_then(|t| t.with_burst(Some(BURST), None))
            .unwrap(),
    );
    let fake = Fake::new();
    let sessions: Vec<Session> = (0..3)
        .map(|_| {
            fake.builder()
                .throttle(Arc::clone(&shared))
                .concurrency(2)
                .build()
                .unwrap()
        })
        .collect();
    for session in &sessions {
        assert!(Arc::ptr_eq(session.throttle(), &shared));
    }

    std::thread::scope(|s| {
        for (k, session) in sessions.iter().enumerate() {
            s.spawn(move || {
                warm(session, k);
                let results: Vec<_> = (0..ITEMS[k])
                    .into_par_iter()
                    .claude_map(session, |i| format!("rpm s{k} item {i}"))
                    .collect();
                assert_eq!(results.len(), ITEMS[k]);
                assert!(results.iter().all(Result::is_ok), "{results:?}");
            });
        }
    });

    let times: Vec<(u64, f64)> = arrivals(&fake, "rpm s")
        .into_iter()
        .map(|(_, t)| (t, 1.0))
        .collect();
    assert_eq!(times.len(), ITEMS.iter().sum::<usize>());
    // Warm-up arrivals count against the same bucket, so they belong in the check too.
    let all: Vec<(u64, f64)> = arrivals(&fake, "")
        .into_iter()
        .map(|(_, t)| (t, 1.0))
        .collect();
    assert_eq!(all.len(), times.len() + 6);
    assert_within_limit(&all, f64::from(BURST), f64::from(RPM) / 60_000.0, 1.0);

    let requests: u64 = sessions.iter().map(|s| s.stats().requests).sum();
    assert_eq!(requests, all.len() as u64, "one prompt sent, one request");
}

#[test]
fn sessions_sharing_a_throttle_stay_under_its_token_limit_together() {
    const TPM: u64 = 6_000_000; // 100 tokens per millisecond
    const BURST: u64 = 25_000;
    const PER_SESSION: usize = 10;
    let shared = Arc::new(
        Throttle::new(None, Some(TPM))
            .and_then(|t| t.with_burst(None, Some(BURST)))
            .unwrap(),
    );
    let fake = Fake::new();
    let sessions: Vec<Session> = (0..2)
        .map(|_| {
            fake.builder()
                .throttle(Arc::clone(&shared))
                .concurrency(2)
                .output_token_allowance(0)
                .build()
                .unwrap()
        })
        .collect();
    // About 10,000 tokens each, so the burst holds two and the rate ten a second; the reply
    // is tiny, so the estimate (prompt / 4 + overhead) is a little above the real usage.
    let padding = "x".repeat(40_000);
    let prompt = |k: usize, i: usize| format!("[[sim:reply=ok]] tpm s{k} item {i} {padding}");

    let usage: HashMap<String, u64> = std::thread::scope(|s| {
        let handles: Vec<_> = sessions
            .iter()
            .enumerate()
            .map(|(k, session)| {
                s.spawn(move || {
                    warm(session, k);
                    let results: Vec<_> = (0..PER_SESSION)
                        .into_par_iter()
                        .claude_map(session, |i| prompt(k, *i))
                        .collect();
                    results
                        .into_iter()
                        .map(|r| {
                            let (i, response) = r.expect("every item succeeds");
                            (prompt(k, i), response.usage.total())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(usage.len(), 2 * PER_SESSION);
    let largest = *usage.values().max().unwrap();
    assert!(
        largest > 9_000,
        "prompts should cost ~10,000 tokens: {largest}"
    );

    let costs: Vec<(u64, f64)> = arrivals(&fake, "tpm s")
        .into_iter()
        .map(|(p, t)| (t, usage[&p] as f64))
        .collect();
    assert_eq!(costs.len(), 2 * PER_SESSION);
    // Tolerance: one request, which also covers the estimate-minus-usage refunds of the few
    // requests in flight when a window opens.
    assert_within_limit(&costs, BURST as f64, TPM as f64 / 60_000.0, largest as f64);
}

#[test]
fn a_wait_on_the_throttle_shows_in_the_stats() {
    // 1,000 tokens a minute, all taken by the first session's slow item (its estimate is
    // over 1,000 with this allowance): the second session's query waits until it is settled.
    let shared = Arc::new(Throttle::new(None, Some(1_000)).unwrap());
    let fake = Fake::new();
    let holder = fake
        .builder()
        .throttle(Arc::clone(&shared))
        .concurrency(1)
        .output_token_allowance(1_000)
        .build()
        .unwrap();
    let session = fake
        .builder()
        .throttle(Arc::clone(&shared))
        .concurrency(1)
        .output_token_allowance(0)
        .build()
        .unwrap();
    assert_eq!(session.stats().throttle_waits, 0);

    std::thread::scope(|s| {
        let holding = s.spawn(|| holder.query("[[sim:delay=1500]] hold"));
        wait_until("the holder's call", Duration::from_secs(10), || {
            fake.prompts().iter().any(|(p, _)| p.contains("hold"))
        });
        let query = s.spawn(|| session.query("hello"));
        // Refilling the ~300 tokens it needs would take ~18 s; the holder's refund frees them.
        wait_until(
            "the query to block on the throttle",
            Duration::from_secs(10),
            || session.stats().waiting_on_throttle == 1,
        );
        assert_eq!(session.stats().requests, 0, "nothing sent while waiting");
        holding.join().unwrap().unwrap();
        let response = query.join().unwrap().unwrap();
        assert_eq!(response.text, "echo: hello");
    });
    assert_eq!(session.stats().waiting_on_throttle, 0);

    let stats = session.stats();
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.throttle_waits, 1);
    assert!(stats.throttle_wait > Duration::ZERO, "{stats:?}");

    // An admission without waiting is not counted.
    let session = fake
        .builder()
        .throttle(Arc::new(Throttle::unlimited()))
        .build()
        .unwrap();
    session.query("again").unwrap();
    assert_eq!(session.stats().throttle_waits, 0);
    assert_eq!(session.stats().throttle_wait, Duration::ZERO);
}

#[test]
fn a_shared_throttle_and_own_limits_are_rejected_together() {
    let fake = Fake::new();
    let shared = || Arc::new(Throttle::unlimited());
    for builder in [
        fake.builder().throttle(shared()).requests_per_minute(60),
        fake.builder().requests_per_minute(60).throttle(shared()),
        fake.builder().throttle(shared()).tokens_per_minute(10_000),
        fake.builder().throttle(shared()).burst(5),
    ] {
        let err = builder.build().unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    }
    assert!(
        fake.starts().is_empty(),
        "no process starts for a bad config"
    );
}

/// Cancels on drop, so a failing assertion never leaves a thread waiting out an hour's pause.
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[test]
fn a_429_pauses_every_session_on_the_shared_throttle() {
    let shared = Arc::new(Throttle::new(Some(6_000), None).unwrap());
    let fake = Fake::new();
    // The first 429 pauses for 200 ms, the second (after the one retry) for an hour.
    let a = fake
        .builder()
        .throttle(Arc::clone(&shared))
        .concurrency(1)
        .retry_policy(
            RetryPolicy::default()
                .max_retries(1)
                .initial_backoff(Duration::from_millis(200))
                .max_backoff(Duration::from_secs(3600))
                .multiplier(100_000.0),
        )
        .build()
        .unwrap();
    let b = fake
        .builder()
        .throttle(Arc::clone(&shared))
        .concurrency(1)
        .build()
        .unwrap();
    assert!(shared.paused_until().is_none());

    let err = a.query("[[sim:error=429]] a").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Api {
                status: Some(429),
                ..
            }
        ),
        "{err:?}"
    );
    let paused = shared
        .paused_until()
        .expect("a 429 pauses the shared throttle");
    assert!(
        paused > Instant::now() + Duration::from_secs(1800),
        "the second 429 in a row pauses for the longer, exponential cooldown"
    );
    let stats = a.stats();
    assert_eq!((stats.requests, stats.retried), (2, 1), "{stats:?}");
    assert!(stats.backoff_pauses >= 1, "{stats:?}");

    // The other session is held by the same pause: it sends nothing until cancelled.
    let cancel = Cancel::new();
    let results = std::thread::scope(|s| {
        let guard = CancelOnDrop(cancel.clone());
        let run = s.spawn(|| {
            vec!["b"]
                .into_par_iter()
                .claude_map(&b, |p| p.to_string())
                .with_cancel(&cancel)
                .collect::<Vec<_>>()
        });
        wait_until(
            "the other session to wait on the pause",
            Duration::from_secs(10),
            || b.stats().waiting_on_throttle == 1,
        );
        assert_eq!(b.stats().requests, 0);
        drop(guard);
        run.join().unwrap()
    });
    assert_eq!(results.len(), 1);
    let failed = results.into_iter().next().unwrap().unwrap_err();
    assert!(matches!(failed.error, Error::Cancelled), "{failed:?}");
    assert_eq!(failed.attempts, 0);
    assert_eq!(b.stats().requests, 0);
    assert_eq!(
        b.stats().backoff_pauses,
        0,
        "only the session that saw the 429"
    );
    let prompts: Vec<String> = fake.prompts().into_iter().map(|(p, _)| p).collect();
    assert_eq!(prompts, ["[[sim:error=429]] a", "[[sim:error=429]] a"]);
}
