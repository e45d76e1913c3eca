//! What a whole message comes to for the session: its answer, or why it is none. One
//! judgement for a streamed turn (`conn`) and a batch's result (`batch`), so the two cannot
//! drift apart.

use serde_json::Value;

use super::request::STRUCTURED_TOOL;
use super::stream::Message;
use crate::Error;

/// What a message came to.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The answer: its text, and the structured value when the session asked for one.
    Answer {
        text: String,
        structured: Option<Value>,
    },
    /// Cut at `max_tokens` where the caller said it may ask the model to go on: the text so
    /// far, given back.
    Cut(String),
    /// It answered, but not with an answer (a refusal, a cut that cannot go on, a missing
    /// or broken structured answer).
    Failed(Error),
}

/// Judge `message`, the last call's, with `text` the turn's whole text so far (the parts of
/// a continued answer joined, this message's last). `structured`: the session asked for a
/// structured answer (the forced tool); `may_continue`: a cut at `max_tokens` may be asked
/// to go on (else it is [`Error::Truncated`]).
pub(super) fn outcome(
    text: String,
    message: &Message,
    structured: bool,
    may_continue: bool,
) -> Outcome {
    match message.stop_reason.as_deref() {
        Some("refusal") => {
            return Outcome::Failed(Error::Refused {
                message: if text.trim().is_empty() {
                    "the API stopped the answer (stop_reason: refusal)".into()
                } else {
                    crate::error::shorten(&text, 300)
                },
            });
        }
        Some("max_tokens") if may_continue => return Outcome::Cut(text),
        Some(reason @ ("max_tokens" | "model_context_window_exceeded")) => {
            return Outcome::Failed(Error::Truncated {
                stop_reason: reason.to_string(),
                partial: message
                    .tool_input
                    .clone()
                    .filter(|_| structured)
                    .unwrap_or(text),
            });
        }
        Some("pause_turn") => {
            return Outcome::Failed(Error::IncompleteAnswer {
                stop_reason: Some("pause_turn".into()),
                partial: text,
            });
        }
        _ => {}
    }
    let structured_value = if structured {
        let parsed = message.tool_input.as_deref().map(|input| {
            serde_json::from_str::<Value>(if input.trim().is_empty() { "{}" } else { input })
        });
        match parsed {
            Some(Ok(value)) => Some(value),
            Some(Err(error)) => {
                return Outcome::Failed(Error::StructuredOutputInvalid(format!(
                    "the {STRUCTURED_TOOL} input is not JSON: {error}"
                )))
            }
            None => {
                return Outcome::Failed(Error::StructuredOutputMissing {
                    text: crate::error::shorten(&text, 200),
                })
            }
        }
    } else {
        None
    };
    let text = match &structured_value {
        Some(value) if text.is_empty() => value.to_string(),
        _ => text,
    };
    Outcome::Answer {
        text,
        structured: structured_value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(stop_reason: &str, text: &str, tool_input: Option<&str>) -> Message {
        Message {
            text: text.into(),
            tool_input: tool_input.map(str::to_string),
            stop_reason: Some(stop_reason.into()),
            stopped: true,
            ..Message::default()
        }
    }

    #[test]
    fn a_cut_goes_on_only_where_the_caller_allows() {
        let cut = message("max_tokens", "The first half of", None);
        assert!(matches!(
            outcome(cut.text.clone(), &cut, false, true),
            Outcome::Cut(text) if text == "The first half of"
        ));
        assert!(matches!(
            outcome(cut.text.clone(), &cut, false, false),
            Outcome::Failed(Error::Truncated { partial, .. }) if partial == "The first half of"
        ));
    }

    #[test]
    fn a_structured_session_takes_the_tool_input_or_says_it_is_missing() {
        let answered = message("tool_use", "", Some(r#"{"score":7}"#));
        match outcome(String::new(), &answered, true, false) {
            Outcome::Answer { text, structured } => {
                assert_eq!(structured, Some(serde_json::json!({"score": 7})));
                assert_eq!(text, r#"{"score":7}"#);
            }
            other => panic!("{other:?}"),
        }
        let prose = message("end_turn", "I would rather explain.", None);
        assert!(matches!(
            outcome(prose.text.clone(), &prose, true, false),
            Outcome::Failed(Error::StructuredOutputMissing { .. })
        ));
        let refused = message("refusal", "", None);
        assert!(matches!(
            outcome(String::new(), &refused, false, true),
            Outcome::Failed(Error::Refused { .. })
        ));
    }
}
