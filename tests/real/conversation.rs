//! Real tier: a `Conversation` keeps context across its turns, and once it is dropped the
//! next item on that process starts fresh. Skipped with a notice when no CLI is installed.

use crate::support;

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

/// A turn the mock API does not answer until released: a cancel ends it at once with
/// `Cancelled` (its CLI process killed, no answer waited for), and a close with `Closed`.
#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_cancel_or_a_close_ends_a_conversation_turn_in_flight() {
    use claude_rayon::{Cancel, Error};
    use std::time::Duration;

    let Some(real) = Real::start("a_cancel_or_a_close_ends_a_conversation_turn_in_flight") else {
        return;
    };
    // Questions about the report wait until the test lets them go (or a minute passes).
    let (release, held) = crossbeam_channel::bounded::<()>(0);
    real.api.set_reply(move |prompt| {
        if prompt.contains("Who asked") {
            let _ = held.recv_timeout(Duration::from_secs(60));
        }
        Reply::text("Noted.")
    });
    let first = "Please remember that the quarterly report is due on Friday, not Monday.";
    let question = "Who asked for the quarterly report to be moved, and why was it moved?";
    let wait_for_requests = |n: usize| {
        support::wait_until("the turn reached the API", Duration::from_secs(60), || {
            real.api.request_count() >= n
        })
    };

    for ending in ["cancel", "close"] {
        real.api.clear_requests();
        let session = real.builder().concurrency(1).build().unwrap();
        let cancel = Cancel::new();
        let mut chat = session.conversation().with_cancel(&cancel);
        chat.send(first).unwrap();
        let pids = real.cli_pids();
        assert_eq!(pids.len(), 1, "{pids:?}");
        let turn = std::thread::spawn(move || {
            let answer = chat.send(question);
            (chat, answer)
        });
        wait_for_requests(2);
        match ending {
            "cancel" => cancel.cancel(),
            _ => {
                session.clone().close().unwrap();
            }
        }
        let (mut chat, answer) = turn.join().unwrap();
        match ending {
            "cancel" => {
                assert!(matches!(answer, Err(Error::Cancelled)), "{answer:?}");
                let next = chat.send("Is the report still due on Friday?");
                assert!(matches!(next, Err(Error::Cancelled)), "{next:?}");
                assert_eq!(real.api.request_count(), 2, "nothing sent after the cancel");
            }
            _ => assert!(matches!(answer, Err(Error::Closed)), "{answer:?}"),
        }
        support::wait_until("the CLI process is gone", Duration::from_secs(10), || {
            real.cli_pids().is_empty()
        });
        // Let the mock's held reply go, so that the mock can stop.
        let _ = release.try_send(());
    }
    drop(release);
}
