//! One spending cap for two programs: together they stop at it, and a dead one's
//! reservations come back.

use std::collections::HashMap;
use std::time::Duration;

use claude_rayon::prelude::*;
use claude_rayon::{Error, SharedBudget};
use rayon::prelude::*;

use crate::support::mock_api::MockApi;
use crate::support::redis::RedisServer;
use crate::support::{self, wait_until};
use crate::{ask_in_background, builder, gated, holder_with_calls_out, is_program_of};

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

/// The lease test's cap: the dying program's reservations leave less than one item's.
const LEASE_CAP: f64 = 0.009;
/// What every item reserves.
const ESTIMATE: f64 = 0.002;
const HELD: usize = 4;
const HOLDER_ENV: &str = "CLAUDE_RAYON_TEST_BUDGET_HOLDER";

/// The holding program: `HELD` items reserve on the shared cap and go out to an API that
/// never answers, so their reservations stay until the parent kills this process.
fn hold_reservations(spec: &str) {
    let (redis_url, api_url) = spec.split_once(' ').unwrap();
    let budget = SharedBudget::redis(redis_url, "lease", LEASE_CAP).unwrap();
    let session = builder(api_url)
        .concurrency(HELD)
        .cost_estimate_usd(ESTIMATE)
        .timeout(Duration::from_secs(600))
        .shared_budget(budget)
        .build()
        .unwrap();
    let items: Vec<String> = (0..HELD).map(|i| support::ticket(900 + i, 400)).collect();
    let _ = items
        .par_iter()
        .claude_map(&session, |t| format!("Summarise this support ticket:\n{t}"))
        .collect::<Vec<_>>();
    panic!("the holding program's calls ended: it was to be killed holding them");
}

/// `(program, USD)` of each reservation on the shared cap `name`, as Redis holds them (the
/// hash src/scale/budget.rs keeps, `program|n` → USD).
fn reservations(connection: &mut redis::Connection, name: &str) -> Vec<(String, f64)> {
    let held: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("claude-rayon:{{{name}}}:budget:held"))
        .query(connection)
        .unwrap();
    held.into_iter()
        .map(|(key, usd)| {
            let (program, _) = key.rsplit_once('|').unwrap();
            (program.to_string(), usd.parse().unwrap())
        })
        .collect()
}

/// A program killed with `kill -9` while its reservations are out does not keep the cap
/// spent: once its lease ends, another program's item, which did not fit beside them, is
/// answered, and the reservations are gone from Redis.
#[test]
fn a_program_killed_holding_reservations_gives_them_back_after_the_lease() {
    if let Ok(spec) = std::env::var(HOLDER_ENV) {
        return hold_reservations(&spec);
    }
    let Some(redis) = RedisServer::start("a_program_killed_holding_reservations") else {
        return;
    };
    let silent = MockApi::start();
    silent.set_latency(Duration::from_secs(3600));
    let api = MockApi::start();
    let (mut holder, pid, mut connection) = holder_with_calls_out(
        module_path!(),
        "a_program_killed_holding_reservations_gives_them_back_after_the_lease",
        HOLDER_ENV,
        &redis,
        &silent,
        HELD,
    );
    let held: Vec<f64> = reservations(&mut connection, "lease")
        .into_iter()
        .filter(|(program, _)| is_program_of(program, pid))
        .map(|(_, usd)| usd)
        .collect();
    assert_eq!(held.len(), HELD, "{held:?}");
    let held_usd: f64 = held.iter().sum();
    assert!(
        held_usd + ESTIMATE > LEASE_CAP,
        "an item would fit beside the dead program's {held_usd} USD"
    );
    holder.kill_9();

    let budget = SharedBudget::redis(&redis.url(), "lease", LEASE_CAP).unwrap();
    let session = builder(&api.url())
        .cost_estimate_usd(ESTIMATE)
        .shared_budget(budget.clone())
        .build()
        .unwrap();
    let prompt = format!(
        "Summarise this support ticket:\n{}",
        support::ticket(950, 400)
    );
    // Refused (over the cap, nothing sent) while the dead reservations count; answered once
    // their lease ended, 10 s after the holder's last renewal.
    let mut refused = 0;
    wait_until(
        "the dead program's reservations are given back",
        Duration::from_secs(40),
        || match session.query(&prompt) {
            Ok(_) => true,
            Err(Error::BudgetExceeded { .. }) => {
                refused += 1;
                false
            }
            Err(e) => panic!("{e}"),
        },
    );
    assert!(
        refused > 0,
        "the first item fitted beside the dead reservations"
    );
    assert_eq!(api.request_count(), 1, "a refused item went out");
    let left: Vec<_> = reservations(&mut connection, "lease")
        .into_iter()
        .filter(|(program, _)| is_program_of(program, pid))
        .collect();
    assert!(left.is_empty(), "the dead program still holds {left:?}");
    assert!(budget.spent_usd().unwrap() > 0.0);
}

/// Redis loses the cap's keys mid-run (FLUSHALL: what a restart without persistence or an
/// eviction leaves): the program that had seen the cap does not count again from zero. Every
/// further item comes back failed with its item and an error naming the cap and the
/// address; nothing more goes out.
#[test]
fn a_budget_whose_state_redis_lost_refuses_further_items() {
    let Some(redis) = RedisServer::start("a_budget_whose_state_redis_lost") else {
        return;
    };
    crate::captured_log::install();
    let api = MockApi::start();
    const CAP: f64 = 0.003;
    let budget = SharedBudget::redis(&redis.url(), "flushed", CAP).unwrap();
    let session = builder(&api.url())
        .cost_estimate_usd(0.001)
        .shared_budget(budget.clone())
        .build()
        .unwrap();
    // Items until the cap is nearly spent, one at a time.
    let mut seed = 1200;
    while budget.spent_usd().unwrap() < CAP / 2.0 {
        session
            .query(format!(
                "Summarise this support ticket:\n{}",
                support::ticket(seed, 600)
            ))
            .unwrap();
        seed += 1;
    }
    let sent = api.request_count();

    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut connection).unwrap();

    let items: Vec<String> = (0..6).map(|i| support::ticket(1300 + i, 600)).collect();
    let results: Vec<_> = items
        .par_iter()
        .claude_map(&session, |t| format!("Summarise this support ticket:\n{t}"))
        .collect();
    for (result, item) in results.iter().zip(&items) {
        let failed = result.as_ref().expect_err("an item went out on a lost cap");
        assert_eq!(failed.item, item, "the failed item is not the one given");
        let lost = match &failed.error {
            Error::Stopped(cause) => cause.as_ref(),
            other => other,
        };
        match lost {
            Error::SharedBudgetLost { name, address } => {
                assert_eq!(name, "flushed");
                assert_eq!(*address, redis.url());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(api.request_count(), sent, "an item went out after the loss");
    assert!(
        budget.spent_usd().is_err(),
        "a lost cap reads as zero spent"
    );
    assert!(crate::captured_log::contains(&format!(
        "shared budget `flushed` at {}: its state was lost",
        redis.url()
    )));
}

/// What Redis holds as spent on the cap `name`.
fn recorded_spent(redis: &RedisServer, name: &str) -> Option<f64> {
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let spent: Option<String> = redis::cmd("GET")
        .arg(format!("claude-rayon:{{{name}}}:budget:spent"))
        .query(&mut connection)
        .unwrap();
    spent.map(|s| s.parse().unwrap())
}

/// An item answered while Redis is away keeps its settle to send later; a program that then
/// drops its budget (it ends) waits for Redis a few seconds and sends it, so the cap counts
/// what the item cost.
#[test]
fn a_dropped_budget_sends_the_settles_it_kept_while_redis_was_away() {
    let Some(mut redis) = RedisServer::start("a_dropped_budget_sends_the_settles") else {
        return;
    };
    let api = MockApi::start();
    let (arrivals, release) = gated(&api);
    let budget = SharedBudget::redis(&redis.url(), "kept", 1.0).unwrap();
    let session = builder(&api.url())
        .cost_estimate_usd(0.001)
        .shared_budget(budget.clone())
        .build()
        .unwrap();
    let asked = ask_in_background(session, 1400, 600);
    arrivals
        .recv_timeout(Duration::from_secs(30))
        .expect("the item went out");
    // Redis goes away keeping what it holds (saved, then loaded again on restart).
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SAVE").query(&mut connection).unwrap();
    redis.stop();
    release.send(()).unwrap();
    let (answer, session) = asked.join().unwrap();
    let cost = answer.unwrap().cost_usd;
    assert!(cost > 0.0);

    // The program ends while Redis is away: dropping the budget waits for it. Redis comes
    // back only once the drop has asked for it several times (or has ended without waiting).
    let stand_in = redis.stand_in();
    let before = stand_in.tries();
    let ending = std::thread::spawn(move || {
        drop(session);
        drop(budget);
    });
    wait_until(
        "the dropped budget asks for Redis again, or ends",
        Duration::from_secs(20),
        || ending.is_finished() || stand_in.tries() >= before + 3,
    );
    drop(stand_in);
    redis.restart();
    ending.join().unwrap();
    let spent = recorded_spent(&redis, "kept").expect("the cap's state was saved");
    assert!(
        (spent - cost).abs() < 1e-9,
        "Redis counts {spent} USD spent, the item cost {cost}"
    );
}
