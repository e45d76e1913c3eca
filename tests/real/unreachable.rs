//! Real tier: with the API unreachable (a port with nothing listening), a run stops with one
//! clear error within seconds under default retry settings, instead of retrying every item.

use crate::support;

use std::time::{Duration, Instant};

use claude_rayon::prelude::*;
use claude_rayon::{Error, Outcome, RetryPolicy};
use rayon::prelude::*;
use support::Real;

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn an_unreachable_api_stops_the_run_within_seconds() {
    let Some(real) = Real::start("an_unreachable_api_stops_the_run_within_seconds") else {
        return;
    };
    // A port nobody listens on: bind one, then let it go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // The library's defaults: the CLI retries twice, the library three times.
    let session = real
        .bare_builder()
        .cli(|c| c.cwd(real.cwd.path()))
        .model("claude-sonnet-4-5")
        .retry_policy(RetryPolicy::default())
        .concurrency(2)
        .cli(|c| c.env("ANTHROPIC_BASE_URL", format!("http://{closed}")))
        .build()
        .unwrap();
    let started = Instant::now();
    let items: Vec<u32> = (0..39).collect();
    let outcome: Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |i| format!("item {i}"))
        .collect();
    let took = started.elapsed();
    assert_eq!(outcome.dead_letter.len(), 39);
    let error = outcome
        .dead_letter
        .iter()
        .map(|f| &f.error)
        .find(|e| matches!(e, Error::ApiUnreachable { .. }))
        .expect("one error says the API cannot be reached");
    assert!(error.to_string().contains("ANTHROPIC_BASE_URL"), "{error}");
    eprintln!("unreachable API: run stopped after {took:?}: {error}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}
