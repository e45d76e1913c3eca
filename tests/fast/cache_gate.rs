//! The prompt-cache warm-up on the fake CLI: with a long shared prefix, the first item goes
//! alone until it is answered, then the rest go together; a conversation's turn never waits
//! at that gate.

use crate::support;

use std::sync::mpsc;
use std::time::Duration;

use claude_rayon::prelude::*;
use rayon::prelude::*;
use support::Fake;

/// When each prompt reached the fake CLI, in milliseconds, in arrival order.
fn arrivals(fake: &Fake) -> Vec<u64> {
    let mut times: Vec<u64> = fake
        .events()
        .iter()
        .filter(|e| e["event"] == "prompt")
        .map(|e| e["t_ms"].as_u64().unwrap())
        .collect();
    times.sort_unstable();
    times
}

fn run(warm: bool) -> Vec<u64> {
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(4)
        .cli(|c| c.max_starting_processes(4))
        .append_system_prompt("shared rubric line. ".repeat(300)) // ~1,500 tokens
        .warm_cache(warm)
        .build()
        .unwrap();
    let results: Vec<_> = (0..8)
        .into_par_iter()
        .claude_map(&session, |i| format!("[[sim:delay=300]] item {i}"))
        .collect();
    assert!(results.iter().all(Result::is_ok));
    arrivals(&fake)
}

#[test]
fn the_first_item_warms_the_prefix_before_the_others_go() {
    let times = run(true);
    // Everyone else arrived after the first was answered (300 ms later).
    assert!(times[1] >= times[0] + 250, "{times:?}");
    // Without the warm-up the first items arrive together.
    let times = run(false);
    assert!(times[1] < times[0] + 250, "{times:?}");
}

#[test]
fn a_conversation_turn_does_not_wait_at_the_gate() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(1)
        .append_system_prompt("shared instructions ".repeat(300))
        .build()
        .unwrap();
    let mut chat = session.conversation();
    // A first turn that fails: the process stays with the conversation, the prefix cold.
    assert!(chat.send("[[sim:error=400]]").is_err());
    // A query from another thread warms the prefix, but needs the conversation's process.
    let other = session.clone();
    let query = std::thread::spawn(move || other.query("a query from another thread"));
    let (tx, rx) = mpsc::channel();
    let turn = std::thread::spawn(move || {
        let answer = chat.send("the conversation's next turn");
        tx.send(()).ok();
        drop(chat); // its process goes back, and the query gets it
        answer
    });
    let turned = rx.recv_timeout(Duration::from_secs(20)).is_ok();
    if !turned {
        let _ = session.clone().close();
    }
    assert!(turned, "the conversation's turn waited at the gate");
    assert!(turn.join().unwrap().is_ok());
    assert!(query.join().unwrap().is_ok());
}

#[test]
fn a_cancel_ends_a_wait_at_the_gate_at_once() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(3)
        .append_system_prompt("shared rubric line. ".repeat(300))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // The warming item never answers.
    let warming = {
        let session = session.clone();
        std::thread::spawn(move || session.query("[[sim:hang]] the warming item"))
    };
    support::wait_until("the warming item is sent", Duration::from_secs(10), || {
        fake.prompts().iter().any(|(p, _)| p.contains("warming"))
    });
    // A run whose items wait at the gate for it, then a cancel.
    let cancel = claude_rayon::Cancel::new();
    let (tx, rx) = mpsc::channel();
    let run = {
        let (session, cancel) = (session.clone(), cancel.clone());
        std::thread::spawn(move || {
            let results: Vec<_> = (0..2)
                .into_par_iter()
                .claude_map(&session, |i| format!("item {i}"))
                .with_cancel(&cancel)
                .collect();
            tx.send(()).ok();
            results
        })
    };
    support::wait_until(
        "both items wait at the gate",
        Duration::from_secs(10),
        || session.stats().started == 3,
    );
    cancel.cancel();
    let ended = rx.recv_timeout(Duration::from_secs(10)).is_ok();
    let _ = session.clone().close(); // ends the hanging item
    assert!(ended, "the cancelled items still waited at the gate");
    let results = run.join().unwrap();
    assert!(results
        .iter()
        .all(|r| matches!(r, Err(f) if matches!(f.error, claude_rayon::Error::Cancelled) && f.attempts == 0)));
    assert!(warming.join().unwrap().is_err());
}

#[test]
fn a_warming_item_that_never_answers_holds_the_others_only_briefly() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(3)
        .append_system_prompt("shared rubric line. ".repeat(300))
        // No timeout at all: the others must not wait for it.
        .timeout(Duration::MAX)
        .warm_cache_wait(Duration::from_millis(200))
        .build()
        .unwrap();
    let warming = {
        let session = session.clone();
        std::thread::spawn(move || session.query("[[sim:hang]] the warming item never answers"))
    };
    support::wait_until("the warming item is sent", Duration::from_secs(10), || {
        fake.prompts().iter().any(|(p, _)| p.contains("warming"))
    });
    let (tx, rx) = mpsc::channel();
    let run = {
        let session = session.clone();
        std::thread::spawn(move || {
            let results: Vec<_> = (0..4)
                .into_par_iter()
                .claude_map(&session, |i| format!("review item {i} against the rubric"))
                .collect();
            tx.send(()).ok();
            results
        })
    };
    // A deadline only so that a failure ends: on the old gate the run waits forever.
    let ended = rx.recv_timeout(Duration::from_secs(60)).is_ok();
    let _ = session.clone().close(); // ends the hanging item (and, on failure, the run)
    assert!(
        ended,
        "the others waited at the gate for the hanging warming item"
    );
    assert!(run.join().unwrap().iter().all(Result::is_ok));
    assert!(warming.join().unwrap().is_err());
}
