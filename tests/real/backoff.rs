//! Real tier: the library's throttle allows twice what the API does, so the API answers 429s;
//! the shared back-off and the retries carry the batch through. The mock Messages API refuses
//! requests beyond a token bucket of R per minute (capacity R); the library allows 2R.
//! About 20 s: the items beyond the API's burst go at one per 2 s.
//! Skipped with a notice when no CLI is installed.

use crate::support;

use std::time::{Duration, Instant};

use claude_rayon::prelude::*;
use claude_rayon::RetryPolicy;
use rayon::prelude::*;
use support::Real;

const R: u32 = 30;
const ITEMS: usize = 40;

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_batch_over_the_apis_rate_limit_completes_through_back_off_and_retries() {
    let test = "a_batch_over_the_apis_rate_limit_completes_through_back_off_and_retries";
    let Some(real) = Real::start(test) else {
        return;
    };
    real.api.set_rate_limit(Some(R));
    // One CLI retry (Real::builder turns them off): its api_retry line carries the API's
    // retry-after, which pauses the shared throttle for exactly that long. With none, every
    // 429 comes back without a delay and the cooldown has to probe for it: measured, about
    // twice the 429s (34-39 against 20-22 here), and an item can use up its 8 retries.
    let session = real
        .builder()
        .concurrency(2)
        .requests_per_minute(2 * R)
        .cli(|c| c.cli_max_retries(Some(1)))
        .retry_policy(
            RetryPolicy::default()
                .max_retries(8)
                .initial_backoff(Duration::from_millis(200))
                .max_backoff(Duration::from_secs(5)),
        )
        .build()
        .unwrap();

    let started = Instant::now();
    let results: Vec<_> = (0..ITEMS)
        .into_par_iter()
        .claude_map(&session, |i| format!("item {i}"))
        .collect();
    let elapsed = started.elapsed();

    let stats = session.stats();
    let limited = real.api.rate_limited();
    eprintln!(
        "real back-off: {ITEMS} items in {elapsed:?}, {} failed; API 429s {limited}, API \
         requests {}, ours {}, retried {}, CLI retries {}, back-off pauses {}, throttle waits \
         {} ({:?})",
        stats.failed,
        real.api.request_count(),
        stats.requests,
        stats.retried,
        stats.cli_api_retries,
        stats.backoff_pauses,
        stats.throttle_waits,
        stats.throttle_wait,
    );
    assert_eq!(results.len(), ITEMS);
    for (i, result) in results.iter().enumerate() {
        let (item, response) = result.as_ref().unwrap_or_else(|f| panic!("item {i}: {f}"));
        assert_eq!(*item, i);
        assert_eq!(response.text, format!("echo: item {i}"));
    }
    assert_eq!(stats.succeeded, ITEMS as u64);
    assert!(
        limited >= 1,
        "the API never refused: the test proves nothing"
    );
    assert!(stats.backoff_pauses >= 1, "{stats:?}");
    assert!(
        stats.cli_api_retries >= 1,
        "the CLI's early signal: {stats:?}"
    );
    assert!(stats.retried >= 1, "{stats:?}");
    // Every API call is accounted for: ours, or a retry the CLI announced.
    assert_eq!(
        real.api.request_count() as u64,
        stats.requests + stats.cli_api_retries
    );
    assert_eq!(stats.requests, ITEMS as u64 + stats.retried);
}
