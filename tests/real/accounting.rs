//! Real tier: every API call the CLI makes is one the library counts. With item texts like a
//! user's (support tickets of 300 to 3,000 characters), the requests and the tokens the mock
//! API received equal what `stats()` and the items' `Usage` say. A CLI version that adds a
//! call of its own (2.1.197 asks the model for a session title with each item's text unless
//! its non-essential traffic is off) fails here instead of on a user's bill.

use crate::support;

use claude_rayon::prelude::*;
use rayon::prelude::*;
use support::{ticket, Real};

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn every_call_the_cli_makes_is_counted() {
    let Some(real) = Real::start("every_call_the_cli_makes_is_counted") else {
        return;
    };
    let items: Vec<String> = (0..12).map(|i| ticket(i, 300 + i * 250)).collect();
    let session = real.builder().concurrency(2).build().unwrap();
    let results: Vec<_> = items
        .par_iter()
        .claude_map(&session, |t| {
            format!("Summarise this ticket in one line:\n\n{t}")
        })
        .collect();
    let responses: Vec<_> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|f| panic!("{}: {}", f.item, f.error)).1)
        .collect();

    let requests = real.api.requests();
    // Nothing the library did not ask for: every request carries one of the items.
    for request in &requests {
        assert!(
            items.iter().any(|t| request.prompt.ends_with(t.as_str())),
            "a request the library never made: {}",
            request
                .body
                .to_string()
                .chars()
                .take(600)
                .collect::<String>()
        );
    }
    let stats = session.stats();
    let calls: u64 = responses.iter().map(|r| u64::from(r.api_calls)).sum();
    assert_eq!(
        requests.len() as u64,
        stats.requests,
        "requests: mock vs stats"
    );
    assert_eq!(calls, stats.requests, "requests: items vs stats");
    assert_eq!(stats.requests, items.len() as u64, "one call per item");

    let billed = |f: fn(&support::mock_api::RecordedRequest) -> usize| -> u64 {
        requests.iter().map(|r| f(r) as u64).sum()
    };
    let summed =
        |f: fn(&claude_rayon::Usage) -> u64| -> u64 { responses.iter().map(|r| f(&r.usage)).sum() };
    let input = billed(|r| r.input_tokens);
    let write = billed(|r| r.cache_write);
    let read = billed(|r| r.cache_read);
    assert_eq!(
        summed(|u| u.input_tokens),
        input,
        "input tokens: items vs mock"
    );
    assert_eq!(
        stats.usage.input_tokens, input,
        "input tokens: stats vs mock"
    );
    assert_eq!(
        summed(|u| u.cache_creation_input_tokens),
        write,
        "cache writes: items vs mock"
    );
    assert_eq!(stats.usage.cache_creation_input_tokens, write);
    assert_eq!(summed(|u| u.cache_read_input_tokens), read, "cache reads");
    assert_eq!(stats.usage.cache_read_input_tokens, read);
    // The items were really that long: the check is not about short markers.
    assert!(
        input + write + read > 12 * 300 / 4,
        "{input} {write} {read}"
    );
}
