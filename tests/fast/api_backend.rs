//! The Messages API backend against the mock API: requests as the API documents them,
//! answers, usage and cost, faults, limits, cancel and close.

use crate::support;

use std::time::Duration;

use claude_rayon::prelude::*;
use claude_rayon::{Backend, Error, Session, SessionBuilder};
use rayon::prelude::*;
use support::mock_api::{MockApi, Reply};

fn builder(api: &MockApi) -> SessionBuilder {
    Session::builder()
        .backend(Backend::MessagesApi)
        .api_key("sk-ant-test-key-that-must-not-leak")
        .base_url(api.url())
        .model("claude-haiku-4-5")
        .retry_policy(support::quick_retries(3))
        .timeout(Duration::from_secs(30))
}

#[test]
fn items_are_answered_over_http_with_exact_usage() {
    let api = MockApi::start();
    let session = builder(&api).concurrency(4).build().unwrap();
    let items: Vec<String> = (0..20).map(|i| support::ticket(i, 400)).collect();
    let results: Vec<_> = items
        .par_iter()
        .claude_map(&session, |t| format!("Summarise this ticket:\n{t}"))
        .collect();
    for (i, result) in results.iter().enumerate() {
        let (item, response) = result.as_ref().unwrap();
        assert_eq!(*item, &items[i]);
        assert!(response.text.contains(&items[i][..40]), "{}", response.text);
        assert!(response.usage.input_tokens > 0 && response.cost_usd > 0.0);
    }
    let stats = session.stats();
    assert_eq!(stats.succeeded, 20);
    assert_eq!(api.request_count(), 20);
    let request = api.last_request().unwrap();
    assert_eq!(request.model, "claude-haiku-4-5");
    assert!(request.stream);
    // Each worker keeps its connection alive from one item to the next.
    assert!(
        api.connections_accepted() <= 4,
        "{} connections for 20 items on 4 workers",
        api.connections_accepted()
    );
}

#[test]
fn a_refusal_is_refused_and_a_missing_model_stops_the_run() {
    let api = MockApi::start();
    api.set_reply(|p| {
        if p.contains("refuse") {
            Reply::Stop {
                text: String::new(),
                stop_reason: "refusal".into(),
            }
        } else {
            Reply::status(404, None)
        }
    });
    let session = builder(&api).concurrency(1).build().unwrap();
    let refused = session.query("Please refuse this one, it is about something unsafe.");
    assert!(matches!(refused, Err(Error::Refused { .. })), "{refused:?}");
    let missing = session.query("An ordinary question about invoices and due dates.");
    assert!(
        matches!(missing, Err(Error::ModelNotFound { .. })),
        "{missing:?}"
    );
}

/// A long answer cut at `max_tokens` is asked to go on, and comes back whole.
#[test]
fn an_answer_cut_at_max_tokens_is_continued_and_joined() {
    let api = MockApi::start();
    api.set_reply_with(|request| {
        let messages = request.body["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let continued = messages.last().is_some_and(|m| m["role"] == "assistant");
        if continued {
            Reply::text(" and the refund was issued on the ninth.")
        } else {
            Reply::Stop {
                text: "The customer was charged twice in March ".into(),
                stop_reason: "max_tokens".into(),
            }
        }
    });
    let session = builder(&api).concurrency(1).build().unwrap();
    let response = session
        .query(support::ticket(3, 600))
        .expect("continued to the end");
    assert_eq!(
        response.text,
        "The customer was charged twice in March and the refund was issued on the ninth."
    );
    assert_eq!((response.continuations, response.api_calls), (1, 2));
    assert_eq!(session.stats().requests, 2, "both calls are counted");
    // The continuation asked from where the first call stopped, without its trailing space.
    let second = &api.requests()[1].body;
    assert_eq!(
        second["messages"][1]["content"],
        "The customer was charged twice in March"
    );

    // Past the continuations allowed, the part comes back as Truncated.
    api.set_reply(|_| Reply::Stop {
        text: "An answer that never ends".into(),
        stop_reason: "max_tokens".into(),
    });
    let session = builder(&api)
        .api(|a| a.max_continuations(1))
        .retry_policy(support::quick_retries(0))
        .concurrency(1)
        .build()
        .unwrap();
    match session.query(support::ticket(4, 300)) {
        Err(Error::Truncated {
            stop_reason,
            partial,
        }) => {
            assert_eq!(stop_reason, "max_tokens");
            assert!(
                partial.starts_with("An answer that never ends"),
                "{partial}"
            );
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn a_schema_gives_a_structured_answer_through_one_forced_tool() {
    let api = MockApi::start();
    api.set_reply(|_| {
        Reply::StructuredOutput(serde_json::json!({"priority": "high", "refund": true}))
    });
    let session = builder(&api)
        .json_schema(serde_json::json!({
            "type": "object",
            "properties": {"priority": {"type": "string"}, "refund": {"type": "boolean"}},
            "required": ["priority", "refund"]
        }))
        .concurrency(1)
        .build()
        .unwrap();
    let response = session.query(support::ticket(7, 500)).unwrap();
    assert_eq!(
        response.structured,
        Some(serde_json::json!({"priority": "high", "refund": true}))
    );
    let body = &api.last_request().unwrap().body;
    assert_eq!(body["tools"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["tool_choice"]["type"], "tool");
}

#[test]
fn a_conversation_keeps_its_history_in_the_library() {
    let api = MockApi::start();
    let session = builder(&api).concurrency(2).build().unwrap();
    let mut conversation = session.conversation();
    let first = conversation
        .send("Here is a contract clause about late delivery penalties; remember it.")
        .unwrap();
    conversation
        .send("Now, is the penalty in the clause capped?")
        .unwrap();
    let requests = api.requests();
    assert_eq!(requests[0].user_turns, 1);
    assert_eq!(
        requests[1].user_turns, 2,
        "the second turn carries the first"
    );
    assert_eq!(
        requests[1].body["messages"][1]["content"],
        first.text.as_str()
    );
    // An item after the conversation starts from nothing.
    session.query("A fresh question about invoices.").unwrap();
    assert_eq!(api.last_request().unwrap().user_turns, 1);
}

#[test]
fn the_shared_instructions_are_cached_once_and_read_by_every_other_item() {
    let api = MockApi::start();
    let instructions = format!(
        "You triage support tickets for a payments company. {}",
        support::ticket(99, 6_000)
    );
    let session = builder(&api)
        .system_prompt(instructions)
        .concurrency(4)
        .build()
        .unwrap();
    let items: Vec<String> = (0..12).map(|i| support::ticket(i, 300)).collect();
    let results: Vec<_> = items
        .par_iter()
        .claude_map(&session, |t| t.to_string())
        .collect();
    assert!(results.iter().all(Result::is_ok));
    let requests = api.requests();
    let writes = requests.iter().filter(|r| r.cache_write > 0).count();
    let reads = requests.iter().filter(|r| r.cache_read > 0).count();
    assert_eq!((writes, reads), (1, 11), "one item warms, the rest read");
    let stats = session.stats();
    assert_eq!(
        stats.usage.cache_read_input_tokens,
        requests.iter().map(|r| r.cache_read as u64).sum::<u64>()
    );
    assert_eq!(
        stats.usage.cache_creation_input_tokens,
        requests.iter().map(|r| r.cache_write as u64).sum::<u64>()
    );
    assert_eq!(
        stats.usage.input_tokens,
        requests.iter().map(|r| r.input_tokens as u64).sum::<u64>()
    );
}

#[test]
fn an_api_that_cannot_be_reached_stops_the_run_with_what_to_check() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let session = Session::builder()
        .backend(Backend::MessagesApi)
        .api_key("sk-ant-test")
        .base_url(format!("http://127.0.0.1:{port}"))
        .retry_policy(support::quick_retries(5))
        .concurrency(1)
        .build()
        .unwrap();
    let error = session.query("Is anyone there?").unwrap_err();
    assert!(
        matches!(error, Error::ApiUnreachable { failures: 3, .. }),
        "{error:?}"
    );
    assert_eq!(session.stats().requests, 0, "nothing reached an API");
}

#[test]
fn the_key_goes_in_its_header_and_nowhere_else() {
    let api = MockApi::start();
    api.set_reply(|_| Reply::status(401, None));
    let key = "sk-ant-test-key-that-must-not-leak";
    let builder = builder(&api).concurrency(1);
    assert!(!format!("{builder:?}").contains(key));
    let session = builder.build().unwrap();
    assert!(!format!("{session:?}").contains(key));
    let error = session.query("Classify this ticket, please.").unwrap_err();
    assert!(matches!(error, Error::Authentication { .. }), "{error:?}");
    assert!(!error.to_string().contains(key) && !format!("{error:?}").contains(key));
    let request = api.last_request().unwrap();
    let in_header = request
        .headers
        .iter()
        .filter(|(name, value)| value.contains(key) && name == "x-api-key")
        .count();
    let anywhere = request
        .headers
        .iter()
        .filter(|(_, v)| v.contains(key))
        .count();
    assert_eq!((in_header, anywhere), (1, 1));
    assert!(!request.body.to_string().contains(key));
    assert!(request
        .headers
        .iter()
        .any(|(n, v)| n == "anthropic-version" && v == "2023-06-01"));
}

/// Holds the mock's answers until released (or dropped), so a test can end turns in flight
/// without the mock's threads outliving it.
#[derive(Clone, Default)]
struct Gate(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    fn wait(&self) {
        let (open, changed) = &*self.0;
        let guard = open.lock().unwrap();
        let _unused = changed
            .wait_timeout_while(guard, Duration::from_secs(60), |open| !*open)
            .unwrap();
    }
    fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }
}

#[test]
fn close_ends_the_turns_in_flight_at_once() {
    let api = MockApi::start();
    let gate = Gate::default();
    let held = gate.clone();
    api.set_reply(move |_| {
        held.wait();
        Reply::text("too late")
    });
    let session = builder(&api).concurrency(3).build().unwrap();
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let session = session.clone();
            std::thread::spawn(move || session.query(support::ticket(i, 300)))
        })
        .collect();
    support::wait_until("three turns in flight", Duration::from_secs(20), || {
        api.request_count() == 3
    });
    let stats = session.clone().close().unwrap();
    for worker in workers {
        let result = worker.join().unwrap();
        assert!(matches!(result, Err(Error::Closed)), "{result:?}");
    }
    assert_eq!((stats.started, stats.failed), (3, 3));
    gate.open();
}

#[test]
fn a_cancelled_conversation_ends_its_turn_in_flight() {
    let api = MockApi::start();
    let gate = Gate::default();
    let held = gate.clone();
    api.set_reply(move |_| {
        held.wait();
        Reply::text("too late")
    });
    let session = builder(&api).concurrency(1).build().unwrap();
    let cancel = claude_rayon::Cancel::new();
    let mut conversation = session.conversation().with_cancel(&cancel);
    let in_flight = std::thread::scope(|scope| {
        scope.spawn(|| {
            support::wait_until("the turn in flight", Duration::from_secs(20), || {
                api.request_count() == 1
            });
            cancel.cancel();
        });
        conversation.send("Summarise the clause we discussed.")
    });
    // Ended by the cancel, not by the answer: the gate is still shut.
    assert!(matches!(in_flight, Err(Error::Cancelled)), "{in_flight:?}");
    gate.open();
}

/// 1,000 items through an API that fails one request in ten (429, 529, 500, a dropped
/// connection, a cut stream): every item comes back once, with its own answer, and every
/// request the API saw is counted.
#[test]
fn a_thousand_items_through_a_faulty_api_each_come_back_once_with_their_own_answer() {
    let api = MockApi::start();
    api.set_recording(false);
    api.set_faults(Some(support::mock_api::FaultMix {
        rate: 0.1,
        seed: 26,
        retry_after_secs: 0,
    }));
    let session = builder(&api)
        .retry_policy(support::quick_retries(10))
        .concurrency(16)
        .build()
        .unwrap();
    let items: Vec<String> = (0..1000).map(|i| support::ticket(i, 300)).collect();
    let outcome: claude_rayon::Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |t| format!("Triage this ticket:\n{t}"))
        .collect();
    assert!(
        outcome.dead_letter.is_empty(),
        "{:?}",
        outcome.dead_letter.first()
    );
    assert_eq!(outcome.ok.len(), 1000);
    let mut seen = std::collections::HashSet::new();
    for (item, response) in &outcome.ok {
        assert!(seen.insert(item.as_str()), "an item came back twice");
        assert_eq!(response.text, format!("echo: Triage this ticket:\n{item}"));
    }
    let injected = api.injected_faults();
    assert!(injected >= 50, "only {injected} faults were injected");
    let stats = session.stats();
    assert_eq!(stats.succeeded, 1000);
    assert_eq!(stats.retried as usize, injected, "one retry per fault");
    assert_eq!(
        stats.requests as usize,
        api.request_count(),
        "every request counted"
    );
}

/// Another program has used most of the minute's requests: the API's headers bring the
/// session's throttle down to what is left, so the API refuses nothing.
#[test]
fn the_api_headers_keep_a_session_under_a_limit_another_program_used() {
    let api = MockApi::start();
    api.set_rate_limit(Some(600));
    // The other program: 580 of the 600 requests of this minute.
    let other = builder(&api).concurrency(8).build().unwrap();
    let _: Vec<_> = (0..580)
        .into_par_iter()
        .claude_map(&other, |i| {
            format!("Earlier job, item {i}: summarise the week.")
        })
        .collect();
    assert_eq!(api.rate_limited(), 0);
    // This session thinks it has the whole minute.
    let session = builder(&api)
        .requests_per_minute(600)
        .concurrency(4)
        .build()
        .unwrap();
    let items: Vec<String> = (0..60).map(|i| support::ticket(i, 300)).collect();
    let outcome: claude_rayon::Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |t| t.to_string())
        .collect();
    assert_eq!(outcome.ok.len(), 60);
    assert_eq!(api.rate_limited(), 0, "the API refused requests");
}

#[test]
fn a_429_that_says_the_spend_limit_is_reached_stops_the_run_without_retries() {
    let api = MockApi::start();
    api.set_reply(|_| Reply::Fault(support::mock_api::Fault::SpendLimit));
    let session = builder(&api).concurrency(2).build().unwrap();
    let items: Vec<String> = (0..6).map(|i| support::ticket(i, 300)).collect();
    let outcome: claude_rayon::Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |t| t.to_string())
        .collect();
    assert_eq!(outcome.dead_letter.len(), 6);
    assert!(outcome
        .dead_letter
        .iter()
        .any(|f| matches!(f.error, Error::SpendLimitReached { .. })));
    assert_eq!(session.stats().retried, 0, "a spend limit is not retried");
    assert!(
        api.request_count() <= 2,
        "the run stopped: {}",
        api.request_count()
    );
}

#[test]
fn retry_after_holds_every_worker_back_that_long() {
    let api = MockApi::start();
    let first = std::sync::atomic::AtomicBool::new(true);
    api.set_reply(move |p| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            Reply::status(429, Some(1))
        } else {
            Reply::text(format!("echo: {p}"))
        }
    });
    let session = builder(&api).concurrency(1).build().unwrap();
    session.query(support::ticket(1, 300)).unwrap();
    session.query(support::ticket(2, 300)).unwrap();
    let requests = api.requests();
    assert_eq!(requests.len(), 3);
    // The retry and the next item both waited for the API's second, not the 5 ms backoff.
    let gap = requests[1].at.duration_since(requests[0].at);
    assert!(
        gap >= Duration::from_millis(950),
        "asked again after {gap:?}"
    );
    assert!(session.stats().backoff_pauses >= 1);
}

/// A journal's answers resume on the backend that wrote them, and only there: the CLI adds
/// context of its own, so the same prompt is not the same request.
#[test]
fn a_journal_replays_on_the_backend_that_wrote_it_and_not_on_the_other() {
    let api = MockApi::start();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("answers.jsonl");
    let items: Vec<String> = (0..3).map(|i| support::ticket(i, 400)).collect();
    let run = |builder: SessionBuilder| -> claude_rayon::Stats {
        let session = builder.journal(&journal).concurrency(2).build().unwrap();
        let outcome: claude_rayon::Outcome<_, _> = items
            .par_iter()
            .claude_map(&session, |t| t.to_string())
            .collect();
        assert_eq!(outcome.ok.len(), 3);
        session.close().unwrap()
    };
    let first = run(builder(&api));
    assert_eq!((first.requests, first.replayed), (3, 0));
    let fake = support::Fake::new();
    let on_the_cli = run(fake.builder());
    assert_eq!(
        (on_the_cli.requests, on_the_cli.replayed),
        (3, 0),
        "asked again on the CLI"
    );
    let again = run(builder(&api));
    assert_eq!(
        (again.requests, again.replayed),
        (0, 3),
        "the API's answers resume"
    );
    assert_eq!(api.request_count(), 3);
}

#[test]
fn an_answer_slower_than_the_timeout_is_a_timeout_and_the_next_item_goes_on() {
    let api = MockApi::start();
    let gate = Gate::default();
    let held = gate.clone();
    api.set_reply(move |p| {
        if p.contains("slow") {
            held.wait();
        }
        Reply::text(format!("echo: {p}"))
    });
    let session = builder(&api)
        .timeout(Duration::from_millis(300))
        .retry_policy(support::quick_retries(0))
        .concurrency(1)
        .build()
        .unwrap();
    let slow = session.query("A slow one: summarise this very long contract, clause by clause.");
    assert!(matches!(slow, Err(Error::Timeout(_))), "{slow:?}");
    let next = session
        .query("A quick one: what is the capital of France?")
        .unwrap();
    assert!(next.text.ends_with("capital of France?"));
    gate.open();
}
