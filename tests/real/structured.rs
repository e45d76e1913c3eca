//! Real tier: `json_schema` gives a structured answer, and a missing one is an error, never an
//! empty success. Skipped with a notice when no CLI is installed.

use crate::support;

use claude_rayon::Error;
use serde::Deserialize;
use serde_json::json;
use support::mock_api::{Reply, STRUCTURED_OUTPUT_TOOL};
use support::{quick_retries, Real};

#[derive(Debug, Deserialize, PartialEq)]
struct Verdict {
    verdict: String,
    score: u32,
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn json_schema_gives_a_structured_answer_and_a_missing_one_is_an_error() {
    let Some(real) =
        Real::start("json_schema_gives_a_structured_answer_and_a_missing_one_is_an_error")
    else {
        return;
    };
    real.api.set_reply(|prompt| match prompt {
        "judge this" => Reply::StructuredOutput(json!({"verdict": "good", "score": 7})),
        // The model ignores the tool and answers in prose.
        _ => Reply::text("I think it is fine."),
    });
    let schema = json!({
        "type": "object",
        "properties": {
            "verdict": {"type": "string"},
            "score": {"type": "integer"},
        },
        "required": ["verdict", "score"],
        "additionalProperties": false,
    });
    let session = real
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(0))
        .json_schema(schema)
        .build()
        .unwrap();

    let response = session.query("judge this").unwrap();
    assert_eq!(
        response.structured,
        Some(json!({"verdict": "good", "score": 7}))
    );
    assert_eq!(
        response.parse::<Verdict>().unwrap(),
        Verdict {
            verdict: "good".into(),
            score: 7
        }
    );
    let requests = real.api.requests();
    assert_eq!(requests.len(), 1, "a valid answer takes one API call");
    assert_eq!(requests[0].tools, [STRUCTURED_OUTPUT_TOOL]);
    assert!(response.usage.input_tokens > 0 && response.cost_usd > 0.0);

    let err = session.query("answer in prose").unwrap_err();
    assert!(
        matches!(&err, Error::StructuredOutputMissing { text } if text.contains("I think it is fine")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    // The CLI asks the model once more ("[structured-output-enforce]") before giving up.
    let asked = real
        .api
        .requests()
        .iter()
        .filter(|r| r.prompt == "answer in prose")
        .count();
    assert!(asked >= 1, "the prose prompt reached the API");

    // The process survives the missing answer and goes on answering.
    let again = session.query("judge this").unwrap();
    assert_eq!(again.parse::<Verdict>().unwrap().score, 7);
    assert_eq!(session.stats().processes_started as usize, 1);
}

/// The schema derived from a type (an enum field, an optional field, a list, a bound) is one
/// the real CLI takes for `--json-schema`: an answer that fits is its structured output, and
/// one outside the schema is refused by the CLI's own check of it, then by the library.
/// (2.1.197 silently offers no tool for a schema with a `format`, as schemars writes for
/// numbers: this fails if the derived schema keeps one.)
#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn the_schema_derived_from_a_type_is_one_the_cli_takes_and_checks() {
    #[derive(Debug, Deserialize, PartialEq, schemars::JsonSchema)]
    enum Priority {
        Low,
        Urgent,
    }
    #[derive(Debug, Deserialize, PartialEq, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Triage {
        /// How soon a person must look at it.
        priority: Priority,
        team: Option<String>,
        tags: Vec<String>,
        #[schemars(range(max = 10))]
        severity: u8,
    }
    let Some(real) = Real::start("the_schema_derived_from_a_type_is_one_the_cli_takes_and_checks")
    else {
        return;
    };
    real.api.set_reply(|prompt| {
        if prompt.contains("overcharged") {
            Reply::StructuredOutput(
                json!({"priority": "Urgent", "team": null, "tags": ["billing"], "severity": 7}),
            )
        } else {
            // Outside the schema: no such priority, and a severity above its bound.
            Reply::StructuredOutput(
                json!({"priority": "Critical", "team": "ops", "tags": [], "severity": 99}),
            )
        }
    });
    let session = real
        .builder()
        .concurrency(1)
        .retry_policy(quick_retries(0))
        .json_schema_of::<Triage>()
        .build()
        .unwrap();
    let triage: Triage = session
        .query_typed(
            "Triage this ticket: we were overcharged on the March invoice and want a refund \
             before the quarter closes.",
        )
        .unwrap();
    assert_eq!(
        triage,
        Triage {
            priority: Priority::Urgent,
            team: None,
            tags: vec!["billing".into()],
            severity: 7
        }
    );
    let first = &real.api.requests()[0];
    assert_eq!(
        first.tools,
        [STRUCTURED_OUTPUT_TOOL],
        "the CLI offered its tool"
    );
    assert_eq!(
        real.api.request_count(),
        1,
        "a fitting answer takes one call"
    );

    let err = session
        .query_typed::<Triage>(
            "Triage this ticket: the nightly export has been failing since the upgrade.",
        )
        .unwrap_err();
    assert!(matches!(err, Error::StructuredOutputInvalid(_)), "{err:?}");
    // The CLI sent the model its schema error (a tool_result marked as an error) before
    // giving up: it checked the answer against the derived schema.
    assert!(
        real.api
            .requests()
            .iter()
            .any(|r| r.tool_result && r.body.to_string().contains("\"is_error\":true")),
        "the CLI refused the answer itself"
    );
}
