//! The CLI's stream-json protocol: the lines we write and how we read the lines it writes.
//!
//! Only the fields this crate uses are read, from a loosely typed [`serde_json::Value`], so a
//! new CLI version that adds message types or fields does not break us.

use serde_json::{json, Value};

pub(crate) use crate::backend::{RateLimitInfo, WindowStatus};
use crate::error::shorten;
use crate::{CliError, Error, Usage, UsageWindow};

/// The prompt that resets a persistent process's context between items.
pub(crate) const CLEAR: &str = "/clear";

/// One line of input carrying a user prompt.
pub(crate) fn user_line(prompt: &str) -> String {
    let mut line = json!({
        "type": "user",
        "message": { "role": "user", "content": prompt },
    })
    .to_string();
    line.push('\n');
    line
}

/// The answer to a `control_request` we do not handle, so the CLI never waits on us.
pub(crate) fn control_error_line(request_id: &str, subtype: &str) -> String {
    let mut line = json!({
        "type": "control_response",
        "response": {
            "subtype": "error",
            "request_id": request_id,
            "error": format!("claude-rayon does not handle control requests ({subtype})"),
        },
    })
    .to_string();
    line.push('\n');
    line
}

/// What one stdout line means to us.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// The end of a turn.
    Result(ResultLine),
    /// The CLI asks us something; it waits for an answer.
    ControlRequest { request_id: String, subtype: String },
    /// A message from the model: one API call's answer (`id`), with its text and whether it
    /// asked for a tool.
    Assistant {
        id: String,
        text: String,
        tool_use: bool,
        /// Set when the message came whole (a call made without streaming).
        stop_reason: Option<String>,
    },
    /// The streamed call that started last ended, for this reason (`max_tokens`, ...).
    CallStopped { stop_reason: String },
    /// An API call began answering (a streamed `message_start`): one call, even if its
    /// stream is cut and the CLI sends it again without streaming, and even if its id is
    /// one an earlier call had (a gateway may reuse ids).
    CallStarted { id: String },
    /// The CLI added a message of its own to the conversation within the turn (2.1.332 asks
    /// the model to resume a cut answer, or to answer again after a refusal): the next call
    /// goes on from the one before, it does not repeat it.
    CliMessage,
    /// The CLI is retrying an API call on its own.
    ApiRetry {
        attempt: u32,
        delay_ms: u64,
        status: Option<u16>,
    },
    /// A subscription usage window changed state (`rate_limit_event`; claude.ai logins only,
    /// never with an API key).
    RateLimit(RateLimitInfo),
    /// Anything else (init, assistant, status, conversation_reset, unknown types).
    Other,
}

/// How a usage window stands, from its `status` or `overageStatus`.
fn window_status(text: &str) -> WindowStatus {
    match text {
        "allowed" => WindowStatus::Allowed,
        "allowed_warning" => WindowStatus::Warning,
        "rejected" => WindowStatus::Rejected,
        other => WindowStatus::Other(other.to_string()),
    }
}

/// The fields of a `result` line this crate uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ResultLine {
    pub subtype: String,
    pub is_error: bool,
    pub api_error_status: Option<u16>,
    pub result: Option<String>,
    pub structured_output: Option<Value>,
    pub usage: Usage,
    pub total_cost_usd: f64,
    pub num_turns: u32,
    pub session_id: String,
    pub stop_reason: Option<String>,
    /// The API error's name (2.1.332: `usage_limit_reached`).
    pub api_error: Option<String>,
}

/// Parse one stdout line. An empty line is `Other`; a line that is not JSON is an error.
pub(crate) fn parse_line(line: &str) -> Result<Event, Error> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Ok(Event::Other);
    }
    // Streamed deltas are most of the lines and only a call's start matters: skip the rest
    // without parsing them.
    if trimmed.starts_with(r#"{"type":"stream_event""#)
        && !trimmed.contains(r#""message_start""#)
        && !trimmed.contains(r#""message_delta""#)
    {
        return Ok(Event::Other);
    }
    let value: Value = serde_json::from_str(trimmed).map_err(|e| {
        Error::Cli(CliError::Protocol {
            reason: format!("not a JSON line ({e})"),
            line: shorten(trimmed, 200),
        })
    })?;
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    let subtype = value.get("subtype").and_then(Value::as_str).unwrap_or("");
    Ok(match (kind, subtype) {
        ("result", _) => Event::Result(parse_result(&value)),
        ("control_request", _) => Event::ControlRequest {
            request_id: str_field(&value, "request_id"),
            subtype: value
                .pointer("/request/subtype")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        },
        ("assistant", _) if is_model_message(&value) => {
            let blocks = value
                .pointer("/message/content")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            Event::Assistant {
                id: value
                    .pointer("/message/id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                text: blocks
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .collect(),
                tool_use: blocks
                    .iter()
                    .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_use")),
                stop_reason: value
                    .pointer("/message/stop_reason")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            }
        }
        ("stream_event", _)
            if value.pointer("/event/type").and_then(Value::as_str) == Some("message_delta") =>
        {
            match value
                .pointer("/event/delta/stop_reason")
                .and_then(Value::as_str)
            {
                Some(reason) => Event::CallStopped {
                    stop_reason: reason.to_string(),
                },
                None => Event::Other,
            }
        }
        ("stream_event", _)
            if value.pointer("/event/type").and_then(Value::as_str) == Some("message_start") =>
        {
            Event::CallStarted {
                id: value
                    .pointer("/event/message/id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            }
        }
        ("user", _) if has_text_block(&value) => Event::CliMessage,
        ("rate_limit_event", _) => match parse_rate_limit(&value) {
            Some(info) => Event::RateLimit(info),
            None => Event::Other,
        },
        ("system", "api_retry") => Event::ApiRetry {
            attempt: u64_field(&value, "attempt") as u32,
            // The CLI prints its own jittered delay as a float (`557.83`).
            delay_ms: value
                .get("retry_delay_ms")
                .and_then(Value::as_f64)
                .filter(|ms| ms.is_finite() && *ms > 0.0)
                .map_or(0, |ms| ms.ceil().min(u64::MAX as f64) as u64),
            status: value
                .get("error_status")
                .and_then(Value::as_u64)
                .map(|s| s as u16),
        },
        _ => Event::Other,
    })
}

/// A `rate_limit_event`'s window, leniently: a field missing or of another type is `None`,
/// an unknown window or status is kept by name; no `status` at all is no event.
fn parse_rate_limit(value: &Value) -> Option<RateLimitInfo> {
    let info = value.get("rate_limit_info")?;
    let text = |name: &str| info.get(name).and_then(Value::as_str).map(str::to_string);
    let number = |name: &str| {
        info.get(name)
            .and_then(Value::as_f64)
            .filter(|n| n.is_finite())
    };
    // A whole number of seconds; a float is rounded up, a negative one is no time.
    let seconds = |name: &str| {
        number(name)
            .filter(|n| *n > 0.0)
            .map(|n| n.ceil().min(u64::MAX as f64) as u64)
    };
    Some(RateLimitInfo {
        status: window_status(info.get("status")?.as_str()?),
        resets_at: seconds("resetsAt"),
        window: UsageWindow::from_cli_name(&text("rateLimitType").unwrap_or_default()),
        utilization: number("utilization"),
        surpassed_threshold: number("surpassedThreshold"),
        overage_status: text("overageStatus").map(|s| window_status(&s)),
        overage_resets_at: seconds("overageResetsAt"),
        overage_disabled_reason: text("overageDisabledReason"),
        error_code: text("errorCode"),
    })
}

/// A result that failed because a subscription limit is reached: a window used up
/// ([`Error::UsageLimitReached`], which resets) or a spend cap
/// ([`Error::SpendLimitReached`], which does not within a run). `rejected` is the turn's
/// last `rate_limit_event` with status `rejected`, if one came. The CLI says it in its text
/// ("You've hit your session limit", 2.1.197; "5-hour limit" and `api_error:
/// usage_limit_reached`, 2.1.332; "monthly spend limit"), and an API key's 429 ("API Error:
/// Request rejected (429)") is neither.
pub(crate) fn usage_limit(result: &ResultLine, rejected: Option<&RateLimitInfo>) -> Option<Error> {
    if !result.is_error || !matches!(result.api_error_status, Some(429) | None) {
        return None;
    }
    let message = result.result.clone().unwrap_or_default();
    let lower = message.to_lowercase().replace('\u{2019}', "'");
    let says_limit = lower.starts_with("you've hit your")
        || lower.starts_with("you're out of")
        || lower.starts_with("your org is out of usage");
    let is_limit = rejected.is_some()
        || result.api_error.as_deref() == Some("usage_limit_reached")
        || (result.api_error_status == Some(429) && says_limit);
    if !is_limit {
        return None;
    }
    let spend_text = [
        "spend limit",
        "out of usage",
        "usage credit",
        "credit balance is too low",
    ]
    .iter()
    .any(|needle| lower.contains(needle));
    if spend_text || rejected.is_some_and(RateLimitInfo::is_spend_cap) {
        return Some(Error::SpendLimitReached { message });
    }
    let window = match rejected {
        Some(info) => info.window.clone(),
        None if lower.contains("session limit") || lower.contains("5-hour limit") => {
            UsageWindow::FiveHour
        }
        None if lower.contains("weekly limit") => UsageWindow::SevenDay,
        None if lower.contains("opus limit") => UsageWindow::SevenDayOpus,
        None if lower.contains("sonnet limit") => UsageWindow::SevenDaySonnet,
        None => UsageWindow::Other(String::new()),
    };
    Some(Error::UsageLimitReached {
        window,
        resets_at: rejected.and_then(RateLimitInfo::resets_at),
        message,
    })
}

/// A user message with text in it (not only tool results).
fn has_text_block(value: &Value) -> bool {
    match value.pointer("/message/content") {
        Some(Value::String(_)) => true,
        Some(Value::Array(blocks)) => blocks
            .iter()
            .any(|b| b.get("type").and_then(Value::as_str) == Some("text")),
        _ => false,
    }
}

/// A message the model wrote, not one the CLI made up (`<synthetic>`: command output and
/// error texts).
fn is_model_message(value: &Value) -> bool {
    value.pointer("/message/model").and_then(Value::as_str) != Some("<synthetic>")
}

fn parse_result(value: &Value) -> ResultLine {
    let usage = value.get("usage").cloned().unwrap_or(Value::Null);
    let tokens = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
    ResultLine {
        subtype: str_field(value, "subtype"),
        is_error: value
            .get("is_error")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        api_error_status: value
            .get("api_error_status")
            .and_then(Value::as_u64)
            .map(|s| s as u16),
        // Error subtypes carry no `result`, but an `errors` list.
        result: value
            .get("result")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                let errors = value.get("errors")?.as_array()?;
                let joined: Vec<&str> = errors.iter().filter_map(Value::as_str).collect();
                (!joined.is_empty()).then(|| joined.join("; "))
            }),
        structured_output: value
            .get("structured_output")
            .filter(|v| !v.is_null())
            .cloned(),
        usage: Usage {
            input_tokens: tokens("input_tokens"),
            output_tokens: tokens("output_tokens"),
            cache_creation_input_tokens: tokens("cache_creation_input_tokens"),
            cache_read_input_tokens: tokens("cache_read_input_tokens"),
        },
        total_cost_usd: value
            .get("total_cost_usd")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        num_turns: u64_field(value, "num_turns") as u32,
        session_id: str_field(value, "session_id"),
        stop_reason: value
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        api_error: value
            .get("api_error")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

fn str_field(value: &Value, name: &str) -> String {
    value
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn u64_field(value: &Value, name: &str) -> u64 {
    value.get(name).and_then(Value::as_u64).unwrap_or(0)
}

impl ResultLine {
    /// Turn a result into this item's outcome. Classified by `is_error` and
    /// `api_error_status` first; the subtype only names the CLI's own stops.
    pub(crate) fn into_outcome(self, want_structured: bool) -> Result<ResultLine, Error> {
        let message = self.result.clone().unwrap_or_default();
        if self.stop_reason.as_deref() == Some("refusal") {
            return Err(Error::Refused { message });
        }
        if self.is_error {
            return Err(match self.api_error_status {
                Some(401 | 403) => Error::Authentication { message },
                Some(404) => Error::ModelNotFound { message },
                Some(status) => Error::Api {
                    status: Some(status),
                    message,
                },
                None if looks_like_auth_failure(&message) => Error::Authentication { message },
                None if self.subtype == "success" || self.subtype.is_empty() => Error::Api {
                    status: None,
                    message,
                },
                None => self.subtype_error(message),
            });
        }
        match self.subtype.as_str() {
            "success" | "" => {}
            _ => return Err(self.subtype_error(message)),
        }
        // Cut at the output limit, or where the context window ran out (newer models stop
        // with `model_context_window_exceeded`): the part is not the answer.
        if let Some(limit @ ("max_tokens" | "model_context_window_exceeded")) =
            self.stop_reason.as_deref()
        {
            return Err(Error::Truncated {
                stop_reason: limit.into(),
                partial: message,
            });
        }
        if want_structured && self.structured_output.is_none() {
            return Err(Error::StructuredOutputMissing {
                text: shorten(&message, 200),
            });
        }
        Ok(self)
    }

    fn subtype_error(&self, message: String) -> Error {
        match self.subtype.as_str() {
            "error_max_turns" => Error::Cli(CliError::MaxTurns {
                turns: self.num_turns,
            }),
            "error_max_structured_output_retries" => {
                Error::StructuredOutputInvalid(if message.is_empty() {
                    "the model did not produce output matching the json_schema".into()
                } else {
                    message
                })
            }
            other => Error::Cli(CliError::Execution {
                subtype: other.to_string(),
                message,
            }),
        }
    }
}

/// The CLI reports a missing or rejected key in plain text when no HTTP status is involved.
fn looks_like_auth_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("invalid api key")
        || m.contains("not logged in")
        || m.contains("please run /login")
        || m.contains("authentication_error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn user_line_is_one_json_line() {
        let line = user_line("two\nlines \"quoted\"");
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1);
        let v: Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["message"]["content"], "two\nlines \"quoted\"");
    }

    #[test]
    fn parses_success_result() {
        let line = r#"{"type":"result","subtype":"success","is_error":false,"num_turns":1,
            "result":"hi","session_id":"s","total_cost_usd":0.25,
            "usage":{"input_tokens":3,"output_tokens":4,"cache_read_input_tokens":5}}"#
            .replace('\n', "");
        let Event::Result(r) = parse_line(&line).unwrap() else {
            panic!()
        };
        assert_eq!(r.result.as_deref(), Some("hi"));
        assert_eq!(r.usage.total(), 12);
        assert_eq!(r.total_cost_usd, 0.25);
        assert!(r.into_outcome(false).is_ok());
    }

    #[test]
    fn classifies_by_is_error_and_status_not_subtype() {
        let r = |status: Option<u16>, msg: &str| ResultLine {
            subtype: "success".into(),
            is_error: true,
            api_error_status: status,
            result: Some(msg.into()),
            ..ResultLine::default()
        };
        assert!(matches!(
            r(Some(401), "x").into_outcome(false),
            Err(Error::Authentication { .. })
        ));
        assert!(matches!(
            r(Some(529), "x").into_outcome(false),
            Err(Error::Api {
                status: Some(529),
                ..
            })
        ));
        assert!(matches!(
            r(None, "API Error: Connection error.").into_outcome(false),
            Err(Error::Api { status: None, .. })
        ));
        assert!(matches!(
            r(None, "Invalid API key · Please run /login").into_outcome(false),
            Err(Error::Authentication { .. })
        ));
    }

    #[test]
    fn refusals_missing_models_and_cut_answers_are_typed() {
        let r = |is_error: bool, status: Option<u16>, stop: &str| ResultLine {
            subtype: "success".into(),
            is_error,
            api_error_status: status,
            result: Some("text".into()),
            stop_reason: Some(stop.into()),
            ..ResultLine::default()
        };
        assert!(matches!(
            r(true, None, "refusal").into_outcome(false),
            Err(Error::Refused { .. })
        ));
        let missing = r(true, Some(404), "stop_sequence").into_outcome(false);
        assert!(
            matches!(&missing, Err(e @ Error::ModelNotFound { .. }) if e.is_fatal() && !e.is_retryable())
        );
        assert!(matches!(
            r(false, None, "max_tokens").into_outcome(false),
            Err(Error::Truncated { ref partial, .. }) if partial == "text"
        ));
        assert!(matches!(
            r(false, None, "model_context_window_exceeded").into_outcome(false),
            Err(Error::Truncated { ref stop_reason, ref partial })
                if stop_reason == "model_context_window_exceeded" && partial == "text"
        ));
        assert!(r(false, None, "end_turn").into_outcome(false).is_ok());
    }

    #[test]
    fn a_calls_start_is_read_and_its_deltas_skipped() {
        let start = parse_line(
            r#"{"type":"stream_event","event":{"message":{"content":[],"id":"msg_7","model":"m"},"type":"message_start"},"session_id":"s"}"#,
        )
        .unwrap();
        assert_eq!(start, Event::CallStarted { id: "msg_7".into() });
        let delta = parse_line(
            r#"{"type":"stream_event","event":{"delta":{"text":"hi","type":"text_delta"},"index":0,"type":"content_block_delta"}}"#,
        )
        .unwrap();
        assert_eq!(delta, Event::Other);
        let stop = parse_line(
            r#"{"type":"stream_event","event":{"delta":{"stop_reason":"max_tokens","stop_sequence":null},"type":"message_delta","usage":{}}}"#,
        )
        .unwrap();
        assert_eq!(
            stop,
            Event::CallStopped {
                stop_reason: "max_tokens".into()
            }
        );
    }

    #[test]
    fn a_message_the_cli_adds_is_read_and_tool_results_skipped() {
        let resume = parse_line(
            r#"{"type":"user","message":{"role":"user","content":[{"type":"text","text":"Your response above was cut off mid-stream. Resume directly"}]},"isSynthetic":true}"#,
        )
        .unwrap();
        assert_eq!(resume, Event::CliMessage);
        let tool_result = parse_line(
            r#"{"type":"user","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"ok"}]}}"#,
        )
        .unwrap();
        assert_eq!(tool_result, Event::Other);
    }

    #[test]
    fn model_messages_are_read_and_synthetic_ones_skipped() {
        let e = parse_line(
            r#"{"type":"assistant","message":{"id":"msg_1","model":"m","content":[{"type":"text","text":"a"},{"type":"tool_use","id":"t","name":"x","input":{}},{"type":"text","text":"b"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            Event::Assistant {
                id: "msg_1".into(),
                text: "ab".into(),
                tool_use: true,
                stop_reason: None,
            }
        );
        let synthetic = parse_line(
            r#"{"type":"assistant","message":{"id":"x","model":"<synthetic>","content":[{"type":"text","text":"API Error"}]}}"#,
        )
        .unwrap();
        assert_eq!(synthetic, Event::Other);
    }

    #[test]
    fn max_turns_and_missing_structured_output() {
        let r = ResultLine {
            subtype: "error_max_turns".into(),
            num_turns: 2,
            ..ResultLine::default()
        };
        assert!(matches!(
            r.into_outcome(false),
            Err(Error::Cli(CliError::MaxTurns { turns: 2 }))
        ));
        let r = ResultLine {
            subtype: "success".into(),
            result: Some("plain".into()),
            ..ResultLine::default()
        };
        assert!(matches!(
            r.into_outcome(true),
            Err(Error::StructuredOutputMissing { .. })
        ));
    }

    #[test]
    fn unknown_types_are_skipped_and_garbage_is_an_error() {
        assert_eq!(
            parse_line(r#"{"type":"rate_limit_event"}"#).unwrap(),
            Event::Other
        );
        assert_eq!(parse_line("").unwrap(), Event::Other);
        assert!(matches!(
            parse_line("Segmentation fault"),
            Err(Error::Cli(CliError::Protocol { .. }))
        ));
    }

    /// The events as the real CLI printed them (/work/notes: 2.1.197 and 2.1.332).
    const WARNING_197: &str = r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed_warning","resetsAt":1796256415,"rateLimitType":"five_hour","utilization":0.95,"isUsingOverage":false,"surpassedThreshold":0.9},"uuid":"u","session_id":"s"}"#;
    const WARNING_332: &str = r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed_warning","resetsAt":1796256430,"rateLimitType":"five_hour","utilization":0.95,"overageStatus":"rejected","overageDisabledReason":"org_level_disabled","isUsingOverage":false,"surpassedThreshold":0.9,"unifiedWindows":{"five_hour":{"utilization":0.95,"resetsAt":1796256430,"status":"allowed_warning","surpassedThreshold":0.9},"seven_day":{"utilization":0.4,"resetsAt":1796512030}}},"uuid":"u","session_id":"s"}"#;
    const REJECTED: &str = r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1796256415,"rateLimitType":"five_hour","overageStatus":"rejected","overageDisabledReason":"org_level_disabled","isUsingOverage":false},"uuid":"u","session_id":"s"}"#;

    fn rate_limit(line: &str) -> RateLimitInfo {
        match parse_line(line).unwrap() {
            Event::RateLimit(info) => info,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rate_limit_events_are_read_from_both_versions() {
        for line in [WARNING_197, WARNING_332] {
            let info = rate_limit(line);
            assert_eq!(info.status, WindowStatus::Warning);
            assert_eq!(info.window, UsageWindow::FiveHour);
            assert_eq!(info.utilization, Some(0.95));
            assert_eq!(info.surpassed_threshold, Some(0.9));
            assert!(info.resets_at.is_some_and(|t| t >= 1_796_256_415));
        }
        let rejected = rate_limit(REJECTED);
        assert_eq!(rejected.status, WindowStatus::Rejected);
        assert_eq!(rejected.overage_status, Some(WindowStatus::Rejected));
        assert_eq!(
            rejected.resets_at(),
            Some(UNIX_EPOCH + Duration::from_secs(1_796_256_415))
        );
        // An event too thin to say anything is skipped, never an error.
        assert_eq!(
            parse_line(r#"{"type":"rate_limit_event","note":"x"}"#).unwrap(),
            Event::Other
        );
    }

    #[test]
    fn rate_limit_events_are_read_leniently() {
        let info = rate_limit(
            r#"{"type":"rate_limit_event","rate_limit_info":{"status":"throttled_gently","rateLimitType":"ten_day","resetsAt":"soon","utilization":"high","extra":{"a":[1]}}}"#,
        );
        assert_eq!(info.status, WindowStatus::Other("throttled_gently".into()));
        assert_eq!(info.window, UsageWindow::Other("ten_day".into()));
        assert_eq!((info.resets_at, info.utilization), (None, None));
        let info = rate_limit(
            r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1796256415.2}}"#,
        );
        assert_eq!(info.window, UsageWindow::Other(String::new()));
        assert_eq!(info.resets_at, Some(1_796_256_416));
        let info = rate_limit(
            r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":-5}}"#,
        );
        assert_eq!(info.resets_at(), None);
    }

    fn limit_result(status: Option<u16>, text: &str, api_error: Option<&str>) -> ResultLine {
        ResultLine {
            subtype: "success".into(),
            is_error: true,
            api_error_status: status,
            result: Some(text.into()),
            api_error: api_error.map(str::to_string),
            ..ResultLine::default()
        }
    }

    #[test]
    fn a_used_up_window_is_a_usage_limit() {
        let rejected = rate_limit(REJECTED);
        // 2.1.197 and 2.1.332, each after its `rejected` event.
        for (text, api_error) in [
            ("You've hit your session limit · resets 12:07am (UTC)", None),
            (
                "You've hit your 5-hour limit · resets 3pm (Europe/Paris)",
                Some("usage_limit_reached"),
            ),
        ] {
            let result = limit_result(Some(429), text, api_error);
            match usage_limit(&result, Some(&rejected)) {
                Some(Error::UsageLimitReached {
                    window: UsageWindow::FiveHour,
                    resets_at: Some(at),
                    message,
                }) => {
                    assert_eq!(at, UNIX_EPOCH + Duration::from_secs(1_796_256_415));
                    assert_eq!(message, text);
                }
                other => panic!("{other:?}"),
            }
        }
        // Without the event, the text still says which window, with no reset time.
        let weekly = limit_result(
            Some(429),
            "You\u{2019}ve hit your weekly limit · resets Mon",
            None,
        );
        assert!(matches!(
            usage_limit(&weekly, None),
            Some(Error::UsageLimitReached {
                window: UsageWindow::SevenDay,
                resets_at: None,
                ..
            })
        ));
    }

    #[test]
    fn a_spend_cap_is_not_a_window() {
        let rejected = rate_limit(REJECTED);
        for text in [
            "You've hit your monthly spend limit · raise it at claude.ai/settings/usage",
            "You've hit your org's monthly spend limit · ask your admin to raise it",
            "You're out of usage credits",
            "Your org is out of usage · add funds to continue",
        ] {
            let result = limit_result(Some(429), text, None);
            assert!(
                matches!(usage_limit(&result, Some(&rejected)), Some(Error::SpendLimitReached { ref message }) if message == text),
                "{text}"
            );
        }
        // The event alone says so: an overage window closed by its spend cap.
        let capped = rate_limit(
            r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","rateLimitType":"overage","overageStatus":"rejected","overageDisabledReason":"org_level_disabled_until","resetsAt":1796256415}}"#,
        );
        let result = limit_result(Some(429), "You've hit your limit", None);
        assert!(matches!(
            usage_limit(&result, Some(&capped)),
            Some(Error::SpendLimitReached { .. })
        ));
    }

    #[test]
    fn an_api_keys_429_and_other_errors_are_not_usage_limits() {
        let rejected = rate_limit(REJECTED);
        let key = limit_result(
            Some(429),
            "API Error: Request rejected (429) · slow down",
            None,
        );
        assert!(usage_limit(&key, None).is_none());
        let overloaded = limit_result(Some(529), "You've hit your session limit", None);
        assert!(usage_limit(&overloaded, Some(&rejected)).is_none());
        let answered = ResultLine {
            result: Some("You've hit your session limit, says the ticket".into()),
            ..ResultLine::default()
        };
        assert!(usage_limit(&answered, Some(&rejected)).is_none());
        // The 429 as an ordinary API error stays retryable.
        assert!(matches!(
            key.into_outcome(false),
            Err(ref e @ Error::Api { status: Some(429), .. }) if e.is_retryable()
        ));
    }

    #[test]
    fn reads_api_retry_and_control_request() {
        let e = parse_line(
            r#"{"type":"system","subtype":"api_retry","attempt":2,"retry_delay_ms":1000,"error_status":429}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            Event::ApiRetry {
                attempt: 2,
                delay_ms: 1000,
                status: Some(429)
            }
        );
        // The CLI's own backoff is a float.
        let e = parse_line(
            r#"{"type":"system","subtype":"api_retry","attempt":1,"retry_delay_ms":557.8357574470203,"error_status":529}"#,
        )
        .unwrap();
        assert!(matches!(
            e,
            Event::ApiRetry {
                delay_ms: 558,
                status: Some(529),
                ..
            }
        ));
        let e = parse_line(
            r#"{"type":"control_request","request_id":"r1","request":{"subtype":"can_use_tool"}}"#,
        )
        .unwrap();
        assert!(matches!(e, Event::ControlRequest { ref request_id, .. } if request_id == "r1"));
        let answer = control_error_line("r1", "can_use_tool");
        let v: Value = serde_json::from_str(answer.trim()).unwrap();
        assert_eq!(v["response"]["request_id"], "r1");
        assert_eq!(v["response"]["subtype"], "error");
    }
}
