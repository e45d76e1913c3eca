//! Real tier: `Session::query` against the real CLI and the mock Messages API: the answer,
//! that item's own usage and cost, fresh context per item, and a small default request.
//! Skipped with a notice when no CLI is installed (CLAUDE_RAYON_REQUIRE_REAL_CLI=1 fails it).

use crate::support;

use claude_rayon::Response;
use support::mock_api::{RecordedRequest, Reply};
use support::Real;

/// claude-sonnet-4-5 list prices, US dollars per token (what the CLI bills with).
const INPUT_USD: f64 = 3.0 / 1e6;
const OUTPUT_USD: f64 = 15.0 / 1e6;

/// The mock's usage rule (see crates/mock-api/src/lib.rs): input = body bytes / 4,
/// output = max(1, chars / 4).
fn assert_usage_matches_mock(response: &Response, request: &RecordedRequest, reply: &str) {
    assert_eq!(
        response.usage.input_tokens,
        (request.bytes / 4) as u64,
        "input tokens are this request's own"
    );
    assert_eq!(
        response.usage.output_tokens,
        (reply.chars().count() / 4).max(1) as u64
    );
    assert_eq!(response.usage.cache_creation_input_tokens, 0);
    assert_eq!(response.usage.cache_read_input_tokens, 0);
    let expected = response.usage.input_tokens as f64 * INPUT_USD
        + response.usage.output_tokens as f64 * OUTPUT_USD;
    assert!(
        (response.cost_usd - expected).abs() < 1e-9,
        "cost {} is this item's own, {expected} from its usage",
        response.cost_usd
    );
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn query_returns_the_answer_with_its_own_usage_and_cost() {
    let Some(real) = Real::start("query_returns_the_answer_with_its_own_usage_and_cost") else {
        return;
    };
    // Replies of different lengths, so that a running total could not pass for either item.
    real.api.set_reply(|prompt| match prompt {
        "first" => Reply::text("a short answer"),
        _ => Reply::text("a much longer answer, ".repeat(40)),
    });
    let session = real.builder().concurrency(1).build().unwrap();

    let first = session.query("first").unwrap();
    let second = session.query("second").unwrap();

    assert_eq!(first.text, "a short answer");
    assert_eq!(second.text, "a much longer answer, ".repeat(40));
    let requests = real.api.requests();
    assert_eq!(requests.len(), 2, "one API call per item: {requests:?}");
    assert_usage_matches_mock(&first, &requests[0], &first.text);
    assert_usage_matches_mock(&second, &requests[1], &second.text);
    assert!(
        second.cost_usd > first.cost_usd,
        "the longer reply costs more"
    );
    assert_eq!((first.num_turns, second.num_turns), (1, 1));
    assert!(!first.session_id.is_empty());
    assert_eq!(
        session.stats().processes_started as usize,
        1,
        "both items ran on one process"
    );

    let stats = session.close().unwrap();
    assert_eq!((stats.succeeded, stats.failed), (2, 0));
    assert!((stats.cost_usd - (first.cost_usd + second.cost_usd)).abs() < 1e-9);
    assert_eq!(
        stats.usage.input_tokens,
        first.usage.input_tokens + second.usage.input_tokens
    );
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn each_query_reaches_the_api_with_only_its_own_prompt() {
    let Some(real) = Real::start("each_query_reaches_the_api_with_only_its_own_prompt") else {
        return;
    };
    let session = real.builder().concurrency(1).build().unwrap();
    let prompts = ["the first item", "the second item", "the third item"];
    for prompt in prompts {
        assert_eq!(
            session.query(prompt).unwrap().text,
            format!("echo: {prompt}")
        );
    }
    let requests = real.api.requests();
    assert_eq!(requests.len(), prompts.len(), "{requests:?}");
    for (request, prompt) in requests.iter().zip(prompts) {
        assert_eq!(request.prompt, prompt);
        assert_eq!(
            request.user_turns, 1,
            "{prompt:?} carried earlier items: {}",
            request.body
        );
        // No earlier prompt or answer anywhere in the request.
        let body = request.body.to_string();
        for other in prompts.iter().filter(|p| **p != prompt) {
            assert!(!body.contains(other), "{prompt:?} carried {other:?}");
        }
    }
    assert_eq!(
        session.stats().processes_started as usize,
        1,
        "all items ran on one process"
    );
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn the_default_request_carries_no_tools_and_is_small() {
    let Some(real) = Real::start("the_default_request_carries_no_tools_and_is_small") else {
        return;
    };
    let session = real.builder().concurrency(1).build().unwrap();
    // The second item also carries the CLI's `/clear` caveat blocks (about 0.5 KB more).
    session.query("How big is this request?").unwrap();
    session.query("And this one?").unwrap();
    let requests = real.api.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert!(request.tools.is_empty(), "tools: {:?}", request.tools);
        assert!(
            request
                .body
                .get("tools")
                .is_none_or(|t| t == &serde_json::json!([])),
            "tools field: {}",
            request.body["tools"]
        );
        assert!(
            request.bytes < 4096,
            "the request is {} bytes: {}",
            request.bytes,
            request.body
        );
        assert_eq!(request.model, "claude-sonnet-4-5");
    }
}
