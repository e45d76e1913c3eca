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
