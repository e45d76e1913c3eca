//! Answers as Rust types (feature `schema`): the schema derived from the type reaches both
//! backends in a form each takes, answers come back parsed, and one that does not fit is a
//! typed error with its item, after one more call.

use crate::support;

use std::time::Duration;

use claude_rayon::prelude::*;
use claude_rayon::{Backend, Error, Outcome, Session, SessionBuilder};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use support::mock_api::{MockApi, Reply};
use support::Fake;

#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
enum Priority {
    Low,
    Normal,
    Urgent,
}

/// A support ticket as triage sees it: an enum field, an optional one, a list.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
struct Triage {
    /// How soon a person must look at it.
    priority: Priority,
    /// The team that should take it, when the ticket says.
    team: Option<String>,
    /// Short labels for the ticket.
    tags: Vec<String>,
    /// How many customers it affects, as far as the ticket tells.
    #[schemars(range(max = 100000))]
    customers: u32,
}

fn valid() -> Value {
    json!({"priority": "Urgent", "team": "billing", "tags": ["refund", "invoice"], "customers": 40})
}

fn api_builder(api: &MockApi) -> SessionBuilder {
    Session::builder()
        .backend(Backend::MessagesApi)
        .api_key("sk-ant-test-key-that-must-not-leak")
        .base_url(api.url())
        .model("claude-haiku-4-5")
        .retry_policy(support::quick_retries(3))
        .timeout(Duration::from_secs(30))
}

fn tickets(n: usize) -> Vec<String> {
    (0..n).map(|i| support::ticket(i, 400)).collect()
}

#[test]
fn the_cli_is_given_the_derived_schema_and_answers_come_back_as_the_type() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .json_schema_of::<Triage>()
        .concurrency(2)
        .build()
        .unwrap();
    let items = tickets(6);
    let outcome: Outcome<(&String, Triage), &String> = items
        .par_iter()
        .claude_map(&session, |t| format!("Triage this support ticket:\n{t}"))
        .typed::<Triage>()
        .collect();
    assert!(outcome.is_complete(), "{:?}", outcome.dead_letter);
    for (i, (item, triage)) in outcome.ok.iter().enumerate() {
        assert_eq!(**item, items[i], "in input order, each with its item");
        // The fake CLI answers the schema's first option of each field.
        assert_eq!(triage.priority, Priority::Low);
        assert_eq!(triage.team.as_deref(), Some("simulated"));
    }
    let starts = fake.starts();
    let args = &starts[0];
    let schema: Value =
        serde_json::from_str(&args[args.iter().position(|a| a == "--json-schema").unwrap() + 1])
            .unwrap();
    // A plain object schema: the enum inlined, no meta-schema line, no references.
    assert_eq!(schema["type"], "object");
    assert!(schema.get("$schema").is_none() && !schema.to_string().contains("$ref"));
    assert_eq!(
        schema["properties"]["priority"]["enum"],
        json!(["Low", "Normal", "Urgent"])
    );
    assert_eq!(
        schema["properties"]["team"]["type"],
        json!(["string", "null"])
    );
    assert_eq!(schema["properties"]["tags"]["type"], "array");
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(
        schema["properties"]["priority"]["description"],
        "How soon a person must look at it."
    );
}

#[test]
fn an_answer_outside_the_schema_is_asked_once_more_then_handed_back_with_where_and_why() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .json_schema_of::<Triage>()
        .concurrency(2)
        .build()
        .unwrap();
    let items = tickets(3);
    let bad = r#"{"priority": "Critical", "team": null, "tags": [], "customers": 3}"#;
    let results: Vec<_> = items
        .par_iter()
        .enumerate()
        .claude_map(&session, |(i, t)| match i {
            0 => format!("Triage this support ticket:\n{t}\n[[sim:structured={bad}]]"),
            1 => format!("Triage this support ticket:\n{t}\n[[sim:no-structured]]"),
            _ => format!("Triage this support ticket:\n{t}"),
        })
        .typed::<Triage>()
        .collect();
    let failed = results[0].as_ref().unwrap_err();
    assert_eq!(failed.item, (0, &items[0]), "the item comes back");
    assert_eq!(failed.attempts, 2, "asked once more");
    match &failed.error {
        Error::StructuredOutputInvalid(why) => assert!(
            why.contains("Triage") && why.contains("/priority") && why.contains("\"Critical\""),
            "{why}"
        ),
        other => panic!("expected StructuredOutputInvalid, got {other:?}"),
    }
    let missing = results[1].as_ref().unwrap_err();
    assert!(
        matches!(missing.error, Error::StructuredOutputMissing { .. }),
        "{missing:?}"
    );
    assert_eq!(missing.attempts, 2);
    assert!(results[2].is_ok());
    let asked = |marker: &str| {
        fake.prompts()
            .iter()
            .filter(|(p, _)| p.contains(marker))
            .count()
    };
    assert_eq!(asked("Critical"), 2);
    assert_eq!(asked("no-structured"), 2);
}

#[test]
fn a_session_without_the_types_schema_fails_every_item_before_any_call() {
    let fake = Fake::new();
    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Other {
        verdict: bool,
    }
    for builder in [fake.builder(), fake.builder().json_schema_of::<Other>()] {
        let session = builder.build().unwrap();
        let items = tickets(2);
        let results: Vec<_> = items
            .par_iter()
            .claude_map(&session, |t| format!("Triage:\n{t}"))
            .typed::<Triage>()
            .collect();
        for (i, result) in results.iter().enumerate() {
            let failed = result.as_ref().unwrap_err();
            assert_eq!((failed.item, failed.attempts), (&items[i], 0));
            assert!(
                matches!(&failed.error, Error::InvalidConfig(m) if m.contains("json_schema_of::<")),
                "{:?}",
                failed.error
            );
        }
        assert_eq!(session.stats().failed, 2);
    }
    assert!(fake.prompts().is_empty(), "nothing was sent");
    // A type whose schema is not an object is refused at build.
    let err = fake
        .builder()
        .json_schema_of::<Vec<String>>()
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig(m) if m.contains("not an object")),
        "{err:?}"
    );
}

#[test]
fn the_messages_api_gets_the_schema_as_its_tool_input_and_an_unfit_answer_is_asked_again() {
    let api = MockApi::start();
    // The first call for each ticket answers outside the schema, the second within it,
    // except for the ticket that never fits.
    let seen = std::sync::Mutex::new(std::collections::HashMap::<String, u32>::new());
    api.set_reply(move |prompt| {
        let mut seen = seen.lock().unwrap();
        let calls = seen.entry(prompt.to_string()).or_default();
        *calls += 1;
        if prompt.contains("never fits") || *calls == 1 {
            Reply::StructuredOutput(
                json!({"priority": "urgent", "tags": ["refund"], "customers": 3}),
            )
        } else {
            Reply::StructuredOutput(valid())
        }
    });
    let session = api_builder(&api)
        .json_schema_of::<Triage>()
        .concurrency(3)
        .build()
        .unwrap();
    let items = tickets(4);
    let results: Vec<_> = items
        .par_iter()
        .enumerate()
        .claude_map(&session, |(i, t)| {
            let note = if *i == 3 {
                " (this one never fits)"
            } else {
                ""
            };
            format!("Triage this support ticket{note}:\n{t}")
        })
        .typed::<Triage>()
        .collect();
    for result in &results[..3] {
        let (_, triage) = result.as_ref().unwrap();
        assert_eq!(triage.priority, Priority::Urgent);
        assert_eq!(triage.tags, ["refund", "invoice"]);
    }
    let failed = results[3].as_ref().unwrap_err();
    assert_eq!((failed.item.0, failed.attempts), (3, 2));
    assert!(
        matches!(&failed.error, Error::StructuredOutputInvalid(m) if m.contains("/priority")),
        "{:?}",
        failed.error
    );
    assert_eq!(api.request_count(), 8, "two calls per ticket");
    // The tool's input schema is the derived one, an object schema the API takes.
    let body = &api.last_request().unwrap().body;
    let input_schema = &body["tools"][0]["input_schema"];
    assert_eq!(input_schema["type"], "object");
    assert!(!input_schema.to_string().contains("$ref") && input_schema.get("$schema").is_none());
    assert_eq!(
        input_schema["required"],
        json!(["priority", "tags", "customers"])
    );
    assert_eq!(body["tool_choice"]["type"], "tool");

    // One prompt, as a type.
    let triage: Triage = session
        .query_typed(format!(
            "Triage this support ticket:\n{}",
            support::ticket(9, 300)
        ))
        .unwrap();
    assert_eq!(triage, serde_json::from_value::<Triage>(valid()).unwrap());
}
