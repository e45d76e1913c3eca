//! Real tier: an item that runs past the timeout kills its process, a new process replaces it,
//! and the next item succeeds. Skipped with a notice when no CLI is installed.

use crate::support;

use std::time::{Duration, Instant};

use claude_rayon::Error;
use support::mock_api::Reply;
use support::{pid_alive, quick_retries, wait_until, Real};

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_timed_out_item_kills_its_process_and_the_next_item_succeeds() {
    let Some(real) = Real::start("a_timed_out_item_kills_its_process_and_the_next_item_succeeds")
    else {
        return;
    };
    // Far longer than the timeout; the mock stops waiting when it is dropped.
    real.api.set_reply(|prompt| match prompt {
        "hang" => Reply::After(Duration::from_secs(120), Box::new(Reply::text("too late"))),
        p => Reply::text(format!("quick: {p}")),
    });
    // Long enough for a cold start (~1 s) on a busy machine, short enough to keep the test quick.
    let timeout = Duration::from_secs(3);
    let session = real
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(0))
        .timeout(timeout)
        .build()
        .unwrap();
    // Warm the process first, so the timeout below is spent waiting on the API alone.
    assert_eq!(session.query("warm up").unwrap().text, "quick: warm up");
    let first = real.cli_pids()[0];

    let started = Instant::now();
    let err = session.query("hang").unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, Error::Timeout(t) if t == timeout), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(3),
        "failed after {waited:?}"
    );
    assert!(
        real.api.requests().iter().any(|r| r.prompt == "hang"),
        "the slow request reached the API before the timeout"
    );
    wait_until(
        "the timed-out process is gone",
        Duration::from_secs(5),
        || !pid_alive(first),
    );

    assert_eq!(session.query("next").unwrap().text, "quick: next");
    assert_eq!(
        session.stats().processes_started,
        2,
        "a new process replaced the killed one"
    );
    assert_ne!(real.cli_pids(), [first]);
    assert_eq!(session.stats().processes_live as usize, 1);
    let last = real.api.last_request().unwrap();
    assert_eq!((last.prompt.as_str(), last.user_turns), ("next", 1));
}
