//! Real tier: claude_filter and claude_group_by over 30 items through the mock API with
//! scripted answers.

use crate::support;

use claude_rayon::prelude::*;
use rayon::prelude::*;
use support::mock_api::Reply;
use support::Real;

/// The item number in a prompt like "item 17: ...".
fn item_number(prompt: &str) -> u32 {
    let rest = prompt.split("item ").nth(1).unwrap();
    rest.split(':').next().unwrap().trim().parse().unwrap()
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn filter_and_group_by_through_the_real_cli() {
    let Some(real) = Real::start("filter_and_group_by_through_the_real_cli") else {
        return;
    };
    real.api.set_reply(|prompt| {
        let n = item_number(prompt);
        if prompt.contains("Allowed answers: yes | no") {
            // Multiples of 7 first answer off the list, then properly on the re-prompt.
            if n % 7 == 0 && !prompt.contains("not an allowed answer") {
                return Reply::text("It depends on the context.");
            }
            Reply::text(if n % 2 == 0 { "Yes." } else { "no" })
        } else {
            Reply::text(["**Red**", "green", "BLUE."][n as usize % 3])
        }
    });
    let session = real.builder().concurrency(2).build().unwrap();
    let items: Vec<u32> = (0..30).collect();

    let kept: Vec<u32> = items
        .par_iter()
        .claude_filter(&session, |i| format!("item {i}: is it even?"))
        .map(|r| *r.unwrap())
        .collect();
    assert_eq!(kept, (0..30).filter(|i| i % 2 == 0).collect::<Vec<_>>());

    let groups = items
        .par_iter()
        .claude_group_by(&session, ["red", "green", "blue"], |i| {
            format!("item {i}: which colour?")
        })
        .groups();
    assert!(groups.failed.is_empty(), "{:?}", groups.failed);
    for (index, (name, members)) in groups.iter().enumerate() {
        let expected: Vec<u32> = (0..30).filter(|i| *i as usize % 3 == index).collect();
        let got: Vec<u32> = members.iter().map(|i| **i).collect();
        assert_eq!(got, expected, "{name}");
    }
    // 30 filter prompts + 5 re-prompts (0, 7, 14, 21, 28) + 30 group-by prompts.
    assert_eq!(real.api.requests().len(), 65);
    assert!(real.api.requests().iter().all(|r| r.user_turns == 1));
}
