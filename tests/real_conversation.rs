//! Real tier: a `Conversation` keeps context across its turns, and once it is dropped the
//! next item on that process starts fresh. Skipped with a notice when no CLI is installed.

mod support;

use support::mock_api::Reply;
use support::Real;

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_conversation_keeps_context_and_the_next_query_does_not_see_it() {
    let Some(real) = Real::start("a_conversation_keeps_context_and_the_next_query_does_not_see_it")
    else {
        return;
    };
    // The answer to "What is my name?" depends on what the request carries, as a model's would.
    real.api.set_reply_with(|request| {
        if request.prompt == "What is my name?" {
            let body = request.body["messages"].to_string();
            if body.contains("My name is Ada.") {
                Reply::text("Your name is Ada.")
            } else {
                Reply::text("I do not know your name.")
            }
        } else {
            Reply::text("Noted.")
        }
    });
    let session = real.builder().concurrency(1).build().unwrap();

    let mut chat = session.conversation();
    assert_eq!(chat.send("My name is Ada.").unwrap().text, "Noted.");
    let answer = chat.send("What is my name?").unwrap();
    assert_eq!(answer.text, "Your name is Ada.");
    assert_eq!(chat.turns(), 2);
    let turns: Vec<usize> = real.api.requests().iter().map(|r| r.user_turns).collect();
    assert_eq!(turns, [1, 2], "the second turn carries the first");
    // The second turn re-sends the first exchange, so it is billed more input.
    let requests = real.api.requests();
    assert!(requests[1].bytes > requests[0].bytes);
    assert_eq!(answer.usage.input_tokens, (requests[1].bytes / 4) as u64);
    drop(chat);

    // Same process (concurrency 1), fresh context.
    let fresh = session.query("What is my name?").unwrap();
    assert_eq!(fresh.text, "I do not know your name.");
    let last = real.api.last_request().unwrap();
    assert_eq!(last.user_turns, 1, "the conversation leaked: {}", last.body);
    assert_eq!(
        session.stats().processes_started as usize,
        1,
        "the process was reused"
    );
}
