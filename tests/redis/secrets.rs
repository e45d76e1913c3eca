//! A password in the Redis address never shows: not in errors (Display or Debug), not in
//! Debug output, not in logs, wherever the address carries it and whatever it holds.

use std::sync::Arc;
use std::time::Duration;

use claude_rayon::{SharedBudget, Throttle};

use crate::support::mock_api::MockApi;
use crate::support::redis::RedisServer;
use crate::support::{self, wait_until};
use crate::{builder, captured_log};

/// A password with the characters that once ended the cut early: `)`, `"` and a space.
const PASSWORD: &str = "s3cr)t\"pa ss";
/// [`PASSWORD`] as it goes in a URL.
const ENCODED: &str = "s3cr%29t%22pa%20ss";

/// What must never show: the password's pieces, plain or encoded.
fn leaks(text: &str) -> Vec<&'static str> {
    ["s3cr", "t\"pa", "pa ss", "pa%20ss", "%29t", "hunter2"]
        .into_iter()
        .filter(|piece| text.contains(piece))
        .collect()
}

#[test]
fn a_password_in_the_address_is_not_in_errors_whatever_its_form() {
    for url in [
        // The socket's password rides in the query.
        "redis+unix:///nonexistent/redis.sock?pass=hunter2",
        "unix:///nonexistent/redis.sock?user=bob&pass=hunter2&db=2",
        // Nothing listens on port 1.
        "redis://bob:hunter2@127.0.0.1:1/",
        &format!("redis://:{ENCODED}@127.0.0.1:1/"),
        &format!("redis://bob:{PASSWORD}@127.0.0.1:1/3"),
        // Not an address this build can open (no TLS), or not one at all.
        "rediss://bob:hunter2@127.0.0.1:1/",
        &format!("redis://bob:{PASSWORD}@127.0.0.1:notaport/"),
    ] {
        let throttle = Throttle::redis(url, "secrets", Some(60), None).unwrap_err();
        let budget = SharedBudget::redis(url, "secrets", 1.0).unwrap_err();
        for shown in [
            throttle.to_string(),
            format!("{throttle:?}"),
            budget.to_string(),
            format!("{budget:?}"),
        ] {
            assert!(leaks(&shown).is_empty(), "{url} → {shown}");
        }
    }
}

#[test]
fn a_password_in_the_address_is_not_in_debug_output_nor_logs() {
    let Some(mut redis) = RedisServer::start("a_password_in_the_address_is_not_in_logs") else {
        return;
    };
    captured_log::install();
    let require_password = |redis: &RedisServer| {
        let mut connection = redis::Client::open(redis.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg(PASSWORD)
            .query(&mut connection)
            .unwrap();
    };
    require_password(&redis);
    let shown = redis.url();
    // As a user would write it, not encoded: the redis crate reads it all the same.
    let url = shown.replacen("redis://", &format!("redis://default:{PASSWORD}@"), 1);
    // A wrong password is refused, without saying it.
    let wrong = url.replace("s3cr", "s4cr");
    let refused = Throttle::redis(&wrong, "secrets", Some(600), None).unwrap_err();
    let refused = format!("{refused} {refused:?}");
    assert!(refused.contains(&shown), "{refused}");
    assert!(leaks(&refused.replace("s4cr", "")).is_empty(), "{refused}");

    let api = MockApi::start();
    let throttle = Arc::new(Throttle::redis(&url, "secrets", Some(600), None).unwrap());
    let budget = SharedBudget::redis(&url, "secrets", 10.0).unwrap();
    let debug = format!("{throttle:?} {budget:?}");
    assert!(debug.contains(&shown), "{debug}");
    assert!(leaks(&debug).is_empty(), "{debug}");
    let session = builder(&api.url())
        .throttle(Arc::clone(&throttle))
        .shared_budget(budget.clone())
        .build()
        .unwrap();
    let prompt = |seed| {
        format!(
            "Summarise this support ticket:\n{}",
            support::ticket(seed, 400)
        )
    };
    session.query(prompt(4200)).unwrap();

    // Redis goes away while an item waits: both say so, naming the address. It keeps what
    // it holds (saved, then loaded again on restart), as a budget's store must.
    let mut connection = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SAVE").query(&mut connection).unwrap();
    redis.stop();
    let waiting = std::thread::spawn(move || session.query(prompt(4201)));
    let away = format!("at {shown} cannot be reached");
    wait_until(
        "the store is said to be away",
        Duration::from_secs(20),
        || captured_log::contains(&away),
    );
    redis.restart();
    require_password(&redis);
    wait_until("the waiting item goes out", Duration::from_secs(30), || {
        waiting.is_finished()
    });
    waiting.join().unwrap().unwrap();
    let logged = captured_log::lines_with("").join("\n");
    assert!(leaks(&logged).is_empty(), "{logged}");
}
