//! What one item's answer looks like.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Tokens one item used, as the API reported them for that item alone.
///
/// # Examples
///
/// ```
/// use claude_rayon::Usage;
/// let u = Usage { input_tokens: 10, output_tokens: 5, ..Usage::default() };
/// assert_eq!(u.total(), 15);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens billed at the normal rate.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_input_tokens: u64,
}

impl Usage {
    /// All tokens of every kind: what a tokens-per-minute limit counts.
    pub fn total(&self) -> u64 {
        self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
    }

    /// The tokens the API's rate limits count: input outside the cache, cache writes and
    /// output; cache reads do not count.
    pub(crate) fn rate_limited_tokens(&self) -> u64 {
        self.input_tokens + self.cache_creation_input_tokens + self.output_tokens
    }

    pub(crate) fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_creation_input_tokens += other.cache_creation_input_tokens;
        self.cache_read_input_tokens += other.cache_read_input_tokens;
    }
}

/// One item's answer.
///
/// `usage` and `cost_usd` are this item's own: the CLI reports a running cost total per
/// process, and the session hands back the difference.
///
/// # Examples
///
/// ```
/// use claude_rayon::Response;
///
/// #[derive(serde::Deserialize)]
/// struct Verdict { score: u32 }
///
/// let mut response = Response::default();
/// response.structured = Some(serde_json::json!({ "score": 7 }));
/// let verdict: Verdict = response.parse().unwrap();
/// assert_eq!(verdict.score, 7);
/// ```
// Non-exhaustive: a backend may report more about an answer without breaking users.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Response {
    /// The final answer text.
    pub text: String,
    /// The structured answer, when the session has a `json_schema`.
    pub structured: Option<serde_json::Value>,
    /// Tokens this item used.
    pub usage: Usage,
    /// What this item cost, in US dollars, as the backend computed it (on a
    /// [`Backend::Batches`](crate::Backend::Batches) session, at the batch price: half).
    pub cost_usd: f64,
    /// Wall time from sending the prompt to reading its result (on a batch session, from
    /// the batch's submission to its results).
    pub duration: Duration,
    /// Model turns the CLI took (1 for a plain answer).
    pub num_turns: u32,
    /// The CLI's conversation id for this item.
    pub session_id: String,
    /// How many times the CLI retried the API call on its own before answering.
    pub api_retries: u32,
    /// Why the model stopped, as the API said (`end_turn`, `tool_use`, `stop_sequence`...).
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// How many times the CLI asked the model to go on after an answer hit the output limit
    /// (`max_tokens`) or its stream was cut (a resume); `text` then holds the whole answer,
    /// every part in order.
    #[serde(default)]
    pub continuations: u32,
    /// API calls the CLI made for this answer: 1, plus one per re-ask (a continuation, a
    /// resume, a reminder to use the structured-output tool, an empty answer asked again)
    /// and per call sent again after a cut stream.
    #[serde(default)]
    pub api_calls: u32,
    /// Whether this answer came from a [`Journal`](crate::Journal) instead of a call: it keeps
    /// the cost and usage it had when it was paid, and this run paid nothing for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

impl Response {
    /// Deserialize the structured answer (or, without one, the text as JSON) into `R`.
    ///
    /// # Errors
    ///
    /// [`Error::StructuredOutputMissing`] when there is neither a structured answer nor text
    /// that parses as JSON, [`Error::StructuredOutputInvalid`] when it does not fit `R`.
    pub fn parse<R: DeserializeOwned>(&self) -> Result<R, Error> {
        match &self.structured {
            Some(value) => serde_json::from_value(value.clone())
                .map_err(|e| Error::StructuredOutputInvalid(e.to_string())),
            None => {
                serde_json::from_str(self.text.trim()).map_err(|_| Error::StructuredOutputMissing {
                    text: crate::error::shorten(&self.text, 200),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reports_mismatch() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Need {
            n: u32,
        }
        let r = Response {
            structured: Some(serde_json::json!({"m": 1})),
            ..Response::default()
        };
        assert!(matches!(
            r.parse::<Need>(),
            Err(Error::StructuredOutputInvalid(_))
        ));
        let r = Response {
            text: "no json here".into(),
            ..Response::default()
        };
        assert!(matches!(
            r.parse::<Need>(),
            Err(Error::StructuredOutputMissing { .. })
        ));
        let r = Response {
            text: " {\"n\": 3} ".into(),
            ..Response::default()
        };
        assert_eq!(r.parse::<Need>().unwrap().n, 3);
    }

    #[test]
    fn response_round_trips_through_serde() {
        let r = Response {
            text: "hi".into(),
            usage: Usage {
                input_tokens: 1,
                ..Usage::default()
            },
            cost_usd: 0.5,
            ..Response::default()
        };
        let json = serde_json::to_string(&r).unwrap();
        let back: Response = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}
