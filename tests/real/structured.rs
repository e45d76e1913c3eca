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
