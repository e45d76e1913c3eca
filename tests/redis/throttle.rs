//! One throttle in Redis for several programs: together they keep to the limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use claude_rayon::prelude::*;
use claude_rayon::Throttle;
use rayon::prelude::*;

use crate::support::mock_api::MockApi;
use crate::support::redis::RedisServer;
use crate::support::{self, wait_until};
use crate::{
    ask_in_background, builder, captured_log, child, finished, gated, holder_with_calls_out,
    is_program_of,
};

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
    // The address (other tests of this process log too), and that items wait: nothing goes
    // out until Redis answers.
    let away = format!("shared throttle at {} cannot be reached", redis.url());
    wait_until(
        "the throttle says Redis is away",
        Duration::from_secs(20),
        || captured_log::contains(&away),
    );
    let warning = captured_log::lines_with(&away).remove(0);
    assert!(
        warning.contains("no request is sent until it answers"),
        "{warning}"
    );
    // Permits granted before Redis went away may still land: at most one per worker.
    let at_warning = api.request_count();
    {
        // Redis's port takes connections and closes them: each is the throttle trying Redis
        // again (the waiting item at the head, or the lease thread with settles to send).
        let stand_in = redis.stand_in();
        wait_until(
            "the throttle has asked Redis again several times",
            Duration::from_secs(20),
            || stand_in.tries() >= 8,
        );
        let sent_while_down = api.request_count() - at_warning;
        assert!(
            sent_while_down <= 4,
            "{sent_while_down} requests went out while Redis was away"
        );
        assert_eq!(
            captured_log::lines_with(&away).len(),
            1,
            "said more than once"
        );
    }
    redis.restart();
    wait_until(
        "the run resumes and ends once Redis is back",
        Duration::from_secs(30),
        || run.is_finished(),
    );
    let answered = run.join().unwrap();
    assert_eq!(answered, 40);
    assert!(
        captured_log::contains(&format!("shared throttle at {} answers again", redis.url())),
        "no word that Redis answers again"
    );
    assert!(captured_log::contains(&format!(
        "shared throttle at {}: its state was lost",
        redis.url()
    )));
    // The mock's limit is the throttle's, and it was left near empty by `drain`: any
    // request past the limit, over the whole run, would have been answered 429.
    assert_eq!(
        api.rate_limited(),
        0,
        "the limit was exceeded around the stop or the restart"
    );
}

/// The lease test's tokens-per-minute limit (requests unlimited).
const LEASE_TPM: u64 = 60_000;
/// What each of the dying program's items reserves on top of its prompt: together its
/// grants hold nearly the whole minute.
const HOLDER_ALLOWANCE: u64 = 14_000;
const HELD: usize = 4;
/// What the surviving program's item reserves on top of its prompt: more than the limit
/// leaves while the dead program's grants count.
const SURVIVOR_ALLOWANCE: u64 = 5_000;
const HOLDER_ENV: &str = "CLAUDE_RAYON_TEST_THROTTLE_HOLDER";

/// The holding program: `HELD` items go out on the shared throttle to an API that never
/// answers, so their grants stay in flight until the parent kills this process.
fn hold_grants(spec: &str) {
    let (redis_url, api_url) = spec.split_once(' ').unwrap();
    let throttle = Throttle::redis(redis_url, "lease", None, Some(LEASE_TPM)).unwrap();
    let session = builder(api_url)
        .concurrency(HELD)
        .output_token_allowance(HOLDER_ALLOWANCE)
        .timeout(Duration::from_secs(600))
        .throttle(Arc::new(throttle))
        .build()
        .unwrap();
    let items: Vec<String> = (0..HELD).map(|i| support::ticket(700 + i, 400)).collect();
    let _ = items
        .par_iter()
        .claude_map(&session, |t| format!("Summarise this support ticket:\n{t}"))
        .collect::<Vec<_>>();
    panic!("the holding program's calls ended: it was to be killed holding them");
}

/// `program → (requests, tokens)` in flight on the shared throttle `name`, as Redis holds
/// them (the hash src/scale/throttle.rs keeps).
fn in_flight(connection: &mut redis::Connection, name: &str) -> Vec<(String, u64, u64)> {
    let flights: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("claude-rayon:{{{name}}}:throttle:flight"))
        .query(connection)
        .unwrap();
    flights
        .into_iter()
        .map(|(program, held)| {
            let (requests, tokens) = held.split_once(' ').unwrap();
            (program, requests.parse().unwrap(), tokens.parse().unwrap())
        })
        .collect()
}

/// A program killed with `kill -9` while its grants are in flight does not shrink the
/// shared limit for good: once its lease ends, another program is admitted an item that
/// did not fit beside the dead one's share, and the share is gone from Redis.
#[test]
fn a_program_killed_holding_grants_gives_its_share_back_after_the_lease() {
    if let Ok(spec) = std::env::var(HOLDER_ENV) {
        return hold_grants(&spec);
    }
    let Some(redis) = RedisServer::start("a_program_killed_holding_grants") else {
        return;
    };
    let silent = MockApi::start();
    silent.set_latency(Duration::from_secs(3600));
    let api = MockApi::start();
    let (mut holder, pid, mut connection) = holder_with_calls_out(
        module_path!(),
        "a_program_killed_holding_grants_gives_its_share_back_after_the_lease",
        HOLDER_ENV,
        &redis,
        &silent,
        HELD,
    );
    let held: Vec<_> = in_flight(&mut connection, "lease")
        .into_iter()
        .filter(|(program, ..)| is_program_of(program, pid))
        .collect();
    assert!(
        matches!(held[..], [(_, requests, tokens)]
            if requests == HELD as u64 && tokens >= HELD as u64 * HOLDER_ALLOWANCE),
        "the holding program's grants are not in flight in Redis: {held:?}"
    );
    let held_tokens = held[0].2;
    assert!(
        held_tokens + SURVIVOR_ALLOWANCE > LEASE_TPM,
        "an item of the survivor's would fit beside the dead share"
    );
    holder.kill_9();

    let throttle = Throttle::redis(&redis.url(), "lease", None, Some(LEASE_TPM)).unwrap();
    let session = builder(&api.url())
        .output_token_allowance(SURVIVOR_ALLOWANCE)
        .throttle(Arc::new(throttle))
        .build()
        .unwrap();
    let run = std::thread::spawn(move || {
        session.query(format!(
            "Summarise this support ticket:\n{}",
            support::ticket(800, 400)
        ))
    });
    // While the dead share counted, the item could never be admitted: it waits for the lease
    // to end (10 s after the holder's last renewal), then for the bucket to refill.
    wait_until(
        "the dead program's share is given back",
        Duration::from_secs(40),
        || run.is_finished(),
    );
    let answer = run.join().unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    let left: Vec<_> = in_flight(&mut connection, "lease")
        .into_iter()
        .filter(|(program, ..)| is_program_of(program, pid))
        .collect();
    assert!(left.is_empty(), "the dead program still holds {left:?}");
}

/// An item answered while Redis is away keeps its settle to send later; a throttle dropped
/// (its program ends) while Redis stays away waits a few seconds for it, then says in an
/// error what the other programs will not count.
#[test]
fn a_throttle_dropped_with_settles_unsent_says_what_was_not_recorded() {
    let Some(mut redis) = RedisServer::start("a_throttle_dropped_with_settles_unsent") else {
        return;
    };
    captured_log::install();
    let api = MockApi::start();
    let (arrivals, release) = gated(&api);
    let throttle =
        Arc::new(Throttle::redis(&redis.url(), "unsent", None, Some(LEASE_TPM)).unwrap());
    let session = builder(&api.url())
        .throttle(Arc::clone(&throttle))
        .build()
        .unwrap();
    let asked = ask_in_background(session, 1500, 400);
    arrivals
        .recv_timeout(Duration::from_secs(30))
        .expect("the item went out");
    redis.stop();
    release.send(()).unwrap();
    let (answer, session) = asked.join().unwrap();
    let used = answer.unwrap().usage;
    drop(session);
    drop(throttle);
    let lost = captured_log::lines_with(&format!(
        "shared throttle at {}: {} tokens and 1 requests used were not recorded",
        redis.url(),
        used.input_tokens + used.output_tokens
    ));
    assert_eq!(lost.len(), 1, "{lost:?}");
}
