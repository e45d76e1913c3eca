//! Retries: which faults are retried and how often, the shared back-off after a 429 or 529,
//! a cancel during a retry's wait, and a seeded fault schedule over 1,000 items; on both
//! backends, each with the faults it can meet.

use crate::{on_both_backends, support};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claude_rayon::prelude::*;
use claude_rayon::{Cancel, CliError, Error, Failed, Outcome, Response, RetryPolicy, Throttle};
use rayon::prelude::*;
use serde_json::json;
use support::backends::{Kind, TestBackend};
use support::{quick_retries, wait_until};

/// What each retryable fault must end as once its retries are used up.
fn expected_error(fault: &str, error: &Error) -> bool {
    match fault {
        "529" | "429" | "500" => {
            matches!(error, Error::Api { status: Some(s), .. } if s.to_string() == fault)
        }
        "none" => matches!(error, Error::Api { status: None, .. }),
        "crash" => matches!(
            error,
            Error::Cli(CliError::ProcessExited { code: Some(3), .. })
        ),
        "garbage" => matches!(error, Error::Cli(CliError::Protocol { .. })),
        "timeout" => matches!(error, Error::Timeout(_)),
        other => panic!("unknown fault {other}"),
    }
}

fn every_retryable_fault_is_retried_up_to_max_retries_then_dead_lettered(b: &TestBackend) {
    let default_retries = RetryPolicy::default().max_retries;
    assert_eq!(default_retries, 3, "the documented default");
    // The test builders keep the default max_retries; only the waits are tiny.
    let session = b
        .builder()
        .concurrency(4)
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let faults = match b.kind() {
        Kind::Cli => vec!["529", "429", "500", "none", "crash", "garbage", "timeout"],
        // A process's crash or garbage on its stdout has no HTTP equivalent.
        Kind::Api => vec!["529", "429", "500", "none", "timeout"],
    };
    let outcome: Outcome<(&str, Response), &str> = faults
        .clone()
        .into_par_iter()
        .claude_map(&session, |fault| match *fault {
            "crash" => "[[sim:crash]]".to_string(),
            "garbage" => "[[sim:garbage]]".to_string(),
            "timeout" => "[[sim:hang]]".to_string(),
            status => format!("[[sim:error={status}]]"),
        })
        .collect();
    assert!(outcome.ok.is_empty());
    assert_eq!(outcome.dead_letter.len(), faults.len());
    for failed in &outcome.dead_letter {
        assert_eq!(
            failed.attempts,
            default_retries + 1,
            "{}: {:?}",
            failed.item,
            failed.error
        );
        assert!(
            expected_error(failed.item, &failed.error),
            "{}: {:?}",
            failed.item,
            failed.error
        );
    }
    let stats = session.stats();
    let n = faults.len() as u64;
    assert_eq!(stats.retried, n * u64::from(default_retries));
    assert_eq!(stats.requests, n * u64::from(default_retries + 1));
    assert_eq!(b.prompts_seen().len() as u64, stats.requests);
    assert_eq!((stats.started, stats.failed, stats.succeeded), (n, n, 0));
}

fn max_retries_is_configurable(b: &TestBackend) {
    let session = b
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(5))
        .build()
        .unwrap();
    let results: Vec<Result<(u32, Response), Failed<u32>>> = vec![1u32]
        .into_par_iter()
        .claude_map(&session, |_| "[[sim:error=529]]")
        .collect();
    assert_eq!(results[0].as_ref().unwrap_err().attempts, 6);
    assert_eq!(session.stats().retried, 5);
}

fn non_retryable_errors_fail_at_the_first_attempt(b: &TestBackend) {
    let session = b
        .builder()
        .concurrency(2)
        .json_schema(json!({"type": "object", "properties": {"n": {"type": "integer"}}}))
        .build()
        .unwrap();
    let mut faults = vec!["[[sim:error=400]]", "[[sim:no-structured]]"];
    if b.kind() == Kind::Cli {
        // The CLI's own turn limit; the API backend makes one call a turn.
        faults.push("[[sim:max-turns]]");
    }
    let results: Vec<Result<(&str, Response), Failed<&str>>> = faults
        .clone()
        .into_par_iter()
        .claude_map(&session, |prompt| *prompt)
        .collect();
    let errors: Vec<&Failed<&str>> = results.iter().map(|r| r.as_ref().unwrap_err()).collect();
    assert!(matches!(
        errors[0].error,
        Error::Api {
            status: Some(400),
            ..
        }
    ));
    assert!(
        matches!(errors[1].error, Error::StructuredOutputMissing { .. }),
        "{:?}",
        errors[1].error
    );
    if let Some(max_turns) = errors.get(2) {
        assert!(matches!(
            max_turns.error,
            Error::Cli(CliError::MaxTurns { .. })
        ));
    }
    assert!(errors.iter().all(|f| f.attempts == 1), "{errors:?}");

    // A 401 is fatal as well as not retryable: its own run, so it stops nothing else here.
    let auth: Vec<Result<(u32, Response), Failed<u32>>> = vec![1u32]
        .into_par_iter()
        .claude_map(&session, |_| "[[sim:error=401]]")
        .collect();
    let failed = auth[0].as_ref().unwrap_err();
    assert!(matches!(failed.error, Error::Authentication { .. }));
    assert_eq!(failed.attempts, 1);

    let n = faults.len() as u64 + 1;
    let stats = session.stats();
    assert_eq!((stats.retried, stats.requests, stats.failed), (0, n, n));
    assert_eq!(b.prompts_seen().len() as u64, n);
}

fn a_cancel_cuts_a_retry_wait_short_and_the_item_keeps_its_last_error(b: &TestBackend) {
    // The 529 pauses the throttle for the cooldown's first step (30 s, no jitter): no second
    // call can happen during the test, so an early return can only come from the cancel.
    let session = b
        .builder()
        .concurrency(1)
        .retry_policy(
            RetryPolicy::default()
                .max_retries(10)
                .initial_backoff(Duration::from_secs(30))
                .max_backoff(Duration::from_secs(30)),
        )
        .build()
        .unwrap();
    let cancel = Cancel::new();
    let (results, cancelled_at) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            wait_until(
                "the first call failed and its retry waits",
                Duration::from_secs(20),
                || session.stats().throttle_waits + session.stats().backoff_pauses >= 1,
            );
            cancel.cancel();
            Instant::now()
        });
        let results: Vec<Result<(u32, Response), Failed<u32>>> = vec![1u32, 2]
            .into_par_iter()
            .claude_map(&session, |_| "[[sim:error=529]]")
            .with_cancel(&cancel)
            .collect();
        (results, watcher.join().unwrap())
    });
    let waited_after_cancel = cancelled_at.elapsed();
    assert!(
        waited_after_cancel < Duration::from_secs(5),
        "the retry wait ended {waited_after_cancel:?} after the cancel"
    );
    let first = results[0].as_ref().unwrap_err();
    assert_eq!(first.attempts, 1);
    assert!(
        matches!(
            first.error,
            Error::Api {
                status: Some(529),
                ..
            }
        ),
        "{:?}",
        first.error
    );
    let second = results[1].as_ref().unwrap_err();
    assert!(matches!(second.error, Error::Cancelled) && second.attempts == 0);
    assert_eq!(b.prompts_seen().len(), 1);
    // The retry was never sent, so it is not counted.
    assert_eq!(session.stats().retried, 0);
}

/// How long the shared throttle stays paused from now.
fn remaining_pause(throttle: &Throttle) -> Duration {
    throttle
        .paused_until()
        .map(|until| until.saturating_duration_since(Instant::now()))
        .unwrap_or_default()
}

fn a_throttled_result_pauses_every_session_on_the_throttle_with_an_exponential_cooldown(
    b: &TestBackend,
) {
    let step = Duration::from_millis(400);
    let shared = Arc::new(Throttle::unlimited());
    let hit = b
        .builder()
        .concurrency(1)
        .throttle(Arc::clone(&shared))
        .retry_policy(
            RetryPolicy::none()
                .initial_backoff(step)
                .max_backoff(step * 8),
        )
        .build()
        .unwrap();
    let other = b
        .builder()
        .concurrency(1)
        .throttle(Arc::clone(&shared))
        .build()
        .unwrap();
    let within = |what: &str, ceiling: Duration| {
        let left = remaining_pause(&shared);
        // The result came back a moment ago, so most of the pause is still ahead.
        assert!(
            left > ceiling / 2 && left <= ceiling,
            "{what}: {left:?} left of {ceiling:?}"
        );
    };

    hit.query("[[sim:error=429]]").unwrap_err();
    within("first 429", step);
    // Another session on the same throttle waits out the pause.
    other.query("meanwhile").unwrap();
    let waited = other.stats().throttle_wait;
    assert!(
        other.stats().throttle_waits == 1 && waited > step / 2,
        "waited {waited:?}"
    );
    // Still throttled after the pause: the next pause is twice as long.
    hit.query("[[sim:error=529]]").unwrap_err();
    within("second throttled result", step * 2);
    hit.query("[[sim:error=429]]").unwrap_err();
    within("third throttled result", step * 4);
    // A success sent after the pause resets the cooldown.
    hit.query("fine").unwrap();
    hit.query("[[sim:error=429]]").unwrap_err();
    within("a 429 after a success", step);
    let stats = hit.stats();
    assert_eq!(stats.backoff_pauses, 4);
    assert_eq!(stats.retried, 0);
    assert_eq!(other.stats().backoff_pauses, 0, "counted where it was seen");
}

fn a_burst_of_throttled_results_in_flight_together_escalates_once(b: &TestBackend) {
    let step = Duration::from_millis(400);
    let session = b
        .builder()
        .concurrency(4)
        // All four processes start together, so the four requests are in flight at once (the
        // API backend has no start-up: its four calls go at once anyway).
        .cli(|c| c.max_starting_processes(4))
        .retry_policy(
            RetryPolicy::none()
                .initial_backoff(step)
                .max_backoff(step * 16),
        )
        .build()
        .unwrap();
    // Four requests in flight at once, all refused: one episode, one step of cooldown.
    let results: Vec<_> = (0..4u32)
        .into_par_iter()
        .claude_map(&session, |_| "[[sim:delay=300]] [[sim:error=429]]")
        .collect();
    assert!(results.iter().all(Result::is_err));
    let left = remaining_pause(session.throttle());
    assert!(
        left <= step,
        "{left:?}: escalated per result, not per episode"
    );
    assert_eq!(session.stats().requests, 4);
}

/// splitmix64: a small deterministic generator, so the schedule is the same on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn a_seeded_fault_schedule_over_1000_items_ends_every_item_exactly_once(b: &TestBackend) {
    const ITEMS: u32 = 1000;
    let mut rng = SplitMix(0x5EED_2024);
    // The fault that kills a call's connection: the CLI process crashes, the API's stream is
    // cut.
    let broken = match b.kind() {
        Kind::Cli => "crash",
        Kind::Api => "none",
    };
    // Per item: how many times it fails (0-3) and how.
    let schedule: Vec<(u32, &str)> = (0..ITEMS)
        .map(|_| {
            let failures = (rng.next() % 4) as u32;
            let kind = ["529", "429", "500", broken][(rng.next() % 4) as usize];
            (failures, kind)
        })
        .collect();
    let failures: u64 = schedule.iter().map(|(n, _)| u64::from(*n)).sum();
    let crashes: u64 = schedule
        .iter()
        .filter(|(_, kind)| *kind == broken)
        .map(|(n, _)| u64::from(*n))
        .sum();

    let session = b
        .builder()
        .concurrency(4)
        .retry_policy(quick_retries(3))
        .build()
        .unwrap();
    let started = Instant::now();
    let outcome: Outcome<(u32, Response), u32> = (0..ITEMS)
        .into_par_iter()
        .claude_map(&session, |i| {
            let (n, kind) = schedule[*i as usize];
            let fault = match (n, kind) {
                (0, _) => String::new(),
                (n, "crash") => format!("[[sim:crash-times=item{i},{n}]]"),
                // `none` (a cut stream) as a status of `fail-times`.
                (n, status) => format!("[[sim:fail-times=item{i},{n},{status}]]"),
            };
            format!("{fault} item {i}")
        })
        .collect();
    let elapsed = started.elapsed();

    assert_eq!(outcome.ok.len(), ITEMS as usize);
    assert!(outcome.dead_letter.is_empty(), "{:?}", outcome.dead_letter);
    let items: HashSet<u32> = outcome.ok.iter().map(|(i, _)| *i).collect();
    assert_eq!(items, (0..ITEMS).collect::<HashSet<_>>());
    for (i, response) in &outcome.ok {
        assert!(
            response.text.ends_with(&format!(" item {i}")),
            "item {i} got {:?}",
            response.text
        );
    }
    let stats = session.stats();
    assert_eq!(stats.retried, failures);
    assert_eq!(stats.requests, u64::from(ITEMS) + failures);
    assert_eq!(
        (stats.started, stats.succeeded, stats.failed),
        (u64::from(ITEMS), u64::from(ITEMS), 0)
    );
    // What the model saw: each item exactly its failures plus one answered attempt.
    let mut sent: HashMap<u32, u32> = HashMap::new();
    for prompt in b.prompts_seen() {
        let i: u32 = prompt.rsplit(' ').next().unwrap().parse().unwrap();
        *sent.entry(i).or_default() += 1;
    }
    for (i, (n, _)) in schedule.iter().enumerate() {
        assert_eq!(sent.get(&(i as u32)), Some(&(n + 1)), "item {i}");
    }
    if b.kind() == Kind::Cli {
        // A crash costs the process: one replacement per crash, plus the first four.
        assert!(stats.processes_started >= crashes, "{stats:?}");
    }
    eprintln!(
        "1000-item fault schedule ({}): {failures} scheduled failures ({crashes} {broken}), \
         {} requests, {} retried, {} processes, {} back-off pauses, wall {elapsed:?}",
        b.name(),
        stats.requests,
        stats.retried,
        stats.processes_started,
        stats.backoff_pauses
    );
}

on_both_backends!(
    every_retryable_fault_is_retried_up_to_max_retries_then_dead_lettered,
    max_retries_is_configurable,
    non_retryable_errors_fail_at_the_first_attempt,
    a_cancel_cuts_a_retry_wait_short_and_the_item_keeps_its_last_error,
    a_throttled_result_pauses_every_session_on_the_throttle_with_an_exponential_cooldown,
    a_burst_of_throttled_results_in_flight_together_escalates_once,
    a_seeded_fault_schedule_over_1000_items_ends_every_item_exactly_once,
);
