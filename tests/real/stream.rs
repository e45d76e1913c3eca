//! Real tier: `claude_stream_map` and `claude_windows` through the real CLI and the mock
//! Messages API: each result carries its own item's answer, in source order.
//! Skipped with a notice when no CLI is installed (CLAUDE_RAYON_REQUIRE_REAL_CLI=1 fails it).

use crate::support;

use std::time::Duration;

use claude_rayon::prelude::*;
use support::mock_api::Reply;
use support::Real;

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_stream_through_the_real_cli_keeps_each_answer_with_its_item_in_order() {
    let Some(real) =
        Real::start("a_stream_through_the_real_cli_keeps_each_answer_with_its_item_in_order")
    else {
        return;
    };
    // Early items answer slowest, so later ones finish first and must be put back in order.
    real.api.set_reply(|prompt| {
        let n: u64 = prompt
            .strip_prefix("item ")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Reply::After(
            Duration::from_millis((8 - n.min(8)) * 60),
            Box::new(Reply::text(format!("answer {n}"))),
        )
    });
    let session = real.builder().concurrency(3).build().unwrap();
    let results: Vec<_> = (0..8u64)
        .claude_stream_map(&session, |i| format!("item {i}"))
        .collect();
    assert_eq!(results.len(), 8);
    for (i, result) in results.into_iter().enumerate() {
        let (item, response) = result.unwrap();
        assert_eq!(item as usize, i);
        assert_eq!(response.text, format!("answer {i}"));
    }
    let mut prompts: Vec<String> = real.api.requests().into_iter().map(|r| r.prompt).collect();
    prompts.sort();
    let mut expected: Vec<String> = (0..8).map(|i| format!("item {i}")).collect();
    expected.sort();
    assert_eq!(prompts, expected, "one API call per item");
    let stats = session.close().unwrap();
    assert_eq!((stats.succeeded, stats.failed), (8, 0));
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn windows_through_the_real_cli_each_get_their_own_answer() {
    let Some(real) = Real::start("windows_through_the_real_cli_each_get_their_own_answer") else {
        return;
    };
    real.api
        .set_reply(|prompt| Reply::text(format!("seen: {}", prompt.replace('\n', " "))));
    let session = real.builder().concurrency(2).build().unwrap();
    let lines = (1..=7).map(|n| format!("line {n}"));
    let answers: Vec<(usize, String)> = lines
        .claude_windows(&session, 3, 2, |window| window.join("\n"))
        .map(|result| {
            let (window, response) = result.unwrap();
            (window.start, response.text)
        })
        .collect();
    assert_eq!(
        answers,
        [
            (0, "seen: line 1 line 2 line 3".to_string()),
            (2, "seen: line 3 line 4 line 5".to_string()),
            (4, "seen: line 5 line 6 line 7".to_string()),
        ]
    );
}
