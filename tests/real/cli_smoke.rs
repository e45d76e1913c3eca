//! Real tier smoke test: the real `claude` answers a query through the mock Messages API.
//! Skipped with a notice when no CLI is installed (CLAUDE_RAYON_REQUIRE_REAL_CLI=1 fails it).

use crate::support;

use support::mock_api::Reply;
use support::Real;

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn the_real_cli_answers_a_query_through_the_mock_api() {
    let Some(real) = Real::start("the_real_cli_answers_a_query_through_the_mock_api") else {
        return;
    };
    real.api
        .set_reply(|prompt| Reply::text(format!("mock says: {}", prompt.to_uppercase())));
    let session = real.builder().concurrency(1).build().unwrap();
    let response = session.query("hello there").unwrap();
    assert_eq!(response.text, "mock says: HELLO THERE");
    assert!(response.usage.input_tokens > 0 && response.usage.output_tokens > 0);
    assert!(response.cost_usd > 0.0);
    assert_eq!(response.num_turns, 1);
    let requests = real.api.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].prompt, "hello there");
    assert!(requests[0].tools.is_empty(), "tools are off by default");
    let stats = session.close().unwrap();
    assert_eq!(stats.succeeded, 1);
}
