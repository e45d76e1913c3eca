//! Real tier: with the library's throttle at the API's own limit, a batch larger than the
//! burst gets no 429. The mock Messages API refuses requests beyond a token bucket of R per
//! minute (capacity R), the same shape as the library's default (burst = one minute's worth).
//! Slow by design: the 15 items beyond the burst go at one per 2 s, so about 30 s.
//! Skipped with a notice when no CLI is installed.

use crate::support;

use claude_rayon::prelude::*;
use rayon::prelude::*;
use support::Real;

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_batch_at_the_apis_rate_limit_gets_no_429() {
    const R: u32 = 30;
    const ITEMS: usize = 45;
    let Some(real) = Real::start("a_batch_at_the_apis_rate_limit_gets_no_429") else {
        return;
    };
    real.api.set_rate_limit(Some(R));
    let session = real
        .builder()
        .concurrency(2)
        .requests_per_minute(R)
        .build()
        .unwrap();

    let results: Vec<_> = (0..ITEMS)
        .into_par_iter()
        .claude_map(&session, |i| format!("item {i}"))
        .collect();

    assert_eq!(real.api.rate_limited(), 0, "the API answered 429");
    assert_eq!(results.len(), ITEMS);
    for (i, result) in results.iter().enumerate() {
        let (item, response) = result.as_ref().unwrap_or_else(|f| panic!("item {i}: {f}"));
        assert_eq!(*item, i);
        assert_eq!(response.text, format!("echo: item {i}"));
    }
    // One prompt, one API call: what the throttle counts is what the API counts.
    assert_eq!(real.api.request_count(), ITEMS);
    let stats = session.stats();
    assert_eq!(stats.requests, ITEMS as u64);
    assert_eq!(stats.cli_api_retries, 0);
    assert_eq!(stats.retried, 0);
    // The mock's bucket is the same as ours, so the items beyond the burst had to wait.
    assert!(stats.throttle_waits > 0, "{stats:?}");
}

/// The CLI re-asks the model inside one turn when an answer under a `json_schema` is plain
/// text: two API calls per item. The throttle learns it and charges items for both, so a run
/// at the API's limit still gets no 429. About 20 s: 40 calls at R = 30 per minute.
#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn items_that_make_two_calls_each_still_get_no_429() {
    const R: u32 = 30;
    const ITEMS: usize = 20;
    let Some(real) = Real::start("items_that_make_two_calls_each_still_get_no_429") else {
        return;
    };
    real.api.set_rate_limit(Some(R));
    real.api.set_reply_with(|request| {
        if request
            .body
            .to_string()
            .contains("structured-output-enforce")
        {
            support::mock_api::Reply::StructuredOutput(serde_json::json!({ "ok": true }))
        } else {
            support::mock_api::Reply::text("plain text first")
        }
    });
    let session = real
        .builder()
        .concurrency(2)
        .requests_per_minute(R)
        .json_schema(serde_json::json!({
            "type": "object",
            "properties": { "ok": { "type": "boolean" } },
            "required": ["ok"]
        }))
        .build()
        .unwrap();
    let results: Vec<_> = (0..ITEMS)
        .into_par_iter()
        .claude_map(&session, |i| format!("item {i}"))
        .collect();
    for result in &results {
        let (_, response) = result.as_ref().unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(response.api_calls, 2);
    }
    let seen: Vec<String> = real
        .api
        .requests()
        .iter()
        .map(|r| {
            format!(
                "{} {:?} {} max_tokens={}",
                r.status, r.prompt, r.model, r.body["max_tokens"]
            )
        })
        .collect();
    // Every call the API received is one the library counted and charged: a call the CLI
    // sent by itself unseen (the non-streaming re-send of a failed stream, off in the seal)
    // would spend the API's allowance behind the throttle's back.
    assert_eq!(
        real.api.rate_limited(),
        0,
        "the API answered 429: {seen:#?}"
    );
    assert_eq!(
        session.stats().requests,
        real.api.request_count() as u64,
        "{seen:#?}"
    );
    assert!(real.api.request_count() >= 2 * ITEMS, "{seen:#?}");
}
