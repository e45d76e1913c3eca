//! One throttle in Redis for several programs: together they keep to the limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use claude_rayon::prelude::*;
use claude_rayon::Throttle;
use rayon::prelude::*;

use crate::support::mock_api::MockApi;
use crate::support::redis::RedisServer;
use crate::support::{self, wait_until};
use crate::{builder, captured_log, child, finished};

/// The API's limit and ours, requests per minute: 10 a second.
const RPM: u32 = 600;
/// Our bucket's burst; the mock is drained down to it before the programs start.
const BURST: u32 = 5;
const PER_PROGRAM: usize = 24;
const PROGRAM_ENV: &str = "CLAUDE_RAYON_TEST_THROTTLE_PROGRAM";

/// Leaves the mock's bucket (one minute's worth, full) with about `BURST` requests, as if
/// the key had been busy: a program that does not share the limit then gets 429s at once.
fn drain(api: &MockApi) {
    let session = builder(&api.url()).concurrency(8).build().unwrap();
    let items: Vec<String> = (0..(RPM - BURST) as usize)
        .map(|i| support::ticket(10_000 + i, 120))
        .collect();
    let drained: Vec<_> = items
        .par_iter()
        .claude_map(&session, |t| format!("Acknowledge this note:\n{t}"))
        .collect();
    assert!(drained.iter().all(|r| r.is_ok()));
    assert_eq!(api.rate_limited(), 0);
    api.clear_requests();
}

/// One program: `PER_PROGRAM` tickets through a session on the shared throttle.
fn run_program(spec: &str) {
    let mut parts = spec.split(' ');
    let (redis_url, api_url, seed) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap().parse::<usize>().unwrap(),
    );
    let throttle = Throttle::redis(redis_url, "org-key", Some(RPM), None)
        .and_then(|t| t.with_burst(Some(BURST), None))
        .unwrap();
    let session = builder(api_url)
        .concurrency(4)
        .throttle(Arc::new(throttle))
        .build()
        .unwrap();
    let items: Vec<String> = (0..PER_PROGRAM)
        .map(|i| support::ticket(seed * 1000 + i, 400))
        .collect();
    let results: Vec<_> = items
        .par_iter()
        .claude_map(&session, |t| format!("Summarise this support ticket:\n{t}"))
        .collect();
    for result in &results {
        assert!(result.is_ok(), "{result:?}");
    }
    println!("PROGRAM_DONE {}", results.len());
}

#[test]
fn three_programs_on_one_shared_throttle_keep_to_the_limit_together() {
    if let Ok(spec) = std::env::var(PROGRAM_ENV) {
        return run_program(&spec);
    }
    let Some(redis) = RedisServer::start("three_programs_on_one_shared_throttle") else {
        return;
    };
    let api = MockApi::start();
    api.set_rate_limit(Some(RPM));
    drain(&api);
    let programs: Vec<_> = (0..3)
        .map(|seed| {
            child(
                module_path!(),
                "three_programs_on_one_shared_throttle_keep_to_the_limit_together",
                &[(PROGRAM_ENV, format!("{} {} {seed}", redis.url(), api.url()))],
            )
        })
        .collect();
    for (i, program) in programs.into_iter().enumerate() {
        let out = finished(program, &format!("program {i}"));
        assert!(
            out.contains(&format!("PROGRAM_DONE {PER_PROGRAM}")),
            "{out}"
        );
    }
    assert_eq!(
        api.rate_limited(),
        0,
        "a program went past the shared limit"
    );
    // The rate after the burst: requests past the first BURST over the time they took.
    let mut arrivals: Vec<Instant> = api.requests().iter().map(|r| r.at).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 3 * PER_PROGRAM);
    let start = arrivals[BURST as usize];
    let span = arrivals.last().unwrap().duration_since(start);
    let per_minute = (arrivals.len() - 1 - BURST as usize) as f64 / span.as_secs_f64() * 60.0;
    println!("three programs together: {per_minute:.0} requests/min at a limit of {RPM}");
    assert!(
        (f64::from(RPM) * 0.9..=f64::from(RPM) * 1.1).contains(&per_minute),
        "{per_minute:.0} requests/min together, limit {RPM}"
    );
}

/// Redis stopped while items wait: nothing goes out, the throttle says why, and the run
/// goes on once Redis is back (empty: the bucket starts empty, so the limit holds).
#[test]
fn redis_stopped_mid_run_holds_requests_says_why_and_resumes() {
    let Some(mut redis) = RedisServer::start("redis_stopped_mid_run") else {
        return;
    };
    captured_log::install();
    let api = MockApi::start();
    api.set_rate_limit(Some(RPM));
    drain(&api);
    let throttle = Throttle::redis(&redis.url(), "stopped-mid-run", Some(RPM), None)
        .and_then(|t| t.with_burst(Some(BURST), None))
        .unwrap();
    let session = builder(&api.url())
        .concurrency(4)
        .throttle(Arc::new(throttle))
        .build()
        .unwrap();
    let items: Vec<String> = (0..40).map(|i| support::ticket(500 + i, 400)).collect();
    let run = std::thread::spawn(move || {
        items
            .par_iter()
            .claude_map(&session, |t| format!("Summarise this support ticket:\n{t}"))
            .filter(|r| r.is_ok())
            .count()
    });
    wait_until("some items answered", Duration::from_secs(20), || {
        api.request_count() >= 10
    });
    redis.stop();
    wait_until(
        "the throttle says Redis is away",
        Duration::from_secs(20),
        || captured_log::contains("cannot be reached"),
    );
    let warning = captured_log::lines_with("cannot be reached").remove(0);
    assert!(
        warning.contains(&redis.url()) && warning.contains("no request is sent"),
        "{warning}"
    );
    // Permits granted before Redis went away may still land: at most one per worker.
    let at_warning = api.request_count();
    wait_until(
        "the throttle has asked again",
        Duration::from_secs(20),
        || captured_log::lines_with("cannot be reached").len() == 1 && !redis.answers(),
    );
    let sent_while_down = api.request_count() - at_warning;
    assert!(
        sent_while_down <= 4,
        "{sent_while_down} requests went out while Redis was away"
    );
    redis.restart();
    let answered = run.join().unwrap();
    assert_eq!(answered, 40);
    assert!(captured_log::contains("answers again"));
    assert!(captured_log::contains("state was lost"));
    assert_eq!(
        api.rate_limited(),
        0,
        "the limit was exceeded around the restart"
    );
}
