//! What an HTTP reply's head and error body say: the API's rate-limit headers, `retry-after`,
//! and which [`Error`] a failed call is.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::backend::{LimitLeft, ServerLimits};
use crate::Error;

/// The longest `retry-after` or reset this crate takes at its word: a clock that is far off
/// must not stop a run for hours.
const LONGEST_WAIT: Duration = Duration::from_secs(10 * 60);

/// The `anthropic-ratelimit-*` headers of a reply; `header(name)` reads one (any case).
pub(super) fn server_limits(header: &dyn Fn(&str) -> Option<String>) -> ServerLimits {
    let left = |kind: &str| -> Option<LimitLeft> {
        let number = |part: &str| {
            header(&format!("anthropic-ratelimit-{kind}-{part}"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some(LimitLeft {
            limit: number("limit"),
            remaining: number("remaining")?,
            resets_at: header(&format!("anthropic-ratelimit-{kind}-reset"))
                .and_then(|v| parse_rfc3339(v.trim())),
        })
    };
    ServerLimits {
        requests: left("requests"),
        tokens: left("tokens"),
        input_tokens: left("input-tokens"),
        output_tokens: left("output-tokens"),
    }
}

/// `retry-after`, in seconds (the API sends whole seconds), bounded.
pub(super) fn retry_after(header: &dyn Fn(&str) -> Option<String>) -> Option<Duration> {
    let secs: f64 = header("retry-after")?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs).min(LONGEST_WAIT))
}

/// An RFC 3339 time in UTC as the API writes it (`2026-12-03T10:41:07Z`, fractions and a
/// `+00:00` offset allowed); `None` for anything else.
pub(super) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: i64 = date_parts.next()?.parse().ok()?;
    let day: i64 = date_parts.next()?.parse().ok()?;
    let (clock, offset_secs) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (clock, offset) = time.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (hours, minutes) = offset[1..].split_once(':')?;
        let secs = hours.parse::<i64>().ok()? * 3600 + minutes.parse::<i64>().ok()? * 60;
        (clock, sign * secs)
    };
    let mut clock_parts = clock.splitn(3, ':');
    let hour: i64 = clock_parts.next()?.parse().ok()?;
    let minute: i64 = clock_parts.next()?.parse().ok()?;
    let seconds: f64 = clock_parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // Howard Hinnant's days-from-civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let whole = days * 86_400 + hour * 3600 + minute * 60 - offset_secs;
    let secs = whole as f64 + seconds;
    (secs >= 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// An error body's `error.type` (empty when it has none) and `error.message` (else the
/// body itself, shortened, else `HTTP <status>`).
pub(super) fn error_parts(status: u16, body: &str) -> (String, String) {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().map(|v| &v["error"]);
    let kind = error
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| crate::error::shorten(body.trim(), 300));
    let message = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        message
    };
    (kind, message)
}

/// The error a reply with status `status` and body `body` stands for.
pub(super) fn error_of(status: u16, body: &str) -> Error {
    let (kind, message) = error_parts(status, body);
    let lower = message.to_ascii_lowercase();
    let spend_limit = [
        "usage limit",
        "spend limit",
        "spending limit",
        "credit balance",
    ]
    .iter()
    .any(|needle| lower.contains(needle));
    match status {
        401 => Error::Authentication { message },
        403 if kind == "permission_error" => Error::Authentication { message },
        404 => Error::ModelNotFound { message },
        // Out of credit or past the spend limit the organisation set: no reset within a run.
        400 | 429 if spend_limit => Error::SpendLimitReached { message },
        _ => Error::Api {
            status: Some(status),
            message: if kind.is_empty() {
                message
            } else {
                format!("{kind}: {message}")
            },
        },
    }
}

/// The error an `error` event in a stream that had begun stands for (an overload after the
/// headers, an internal error).
pub(super) fn stream_error_of(kind: &str, message: &str) -> Error {
    let status = match kind {
        "overloaded_error" | "rate_limit_error" | "api_error" => status_of_error_type(kind),
        _ => None,
    };
    Error::Api {
        status,
        message: format!("{kind} in the answer's stream: {message}"),
    }
}

/// The HTTP status the API answers an error of type `kind` with (its documented pairs), for
/// an error that came without one (in a stream, in a batch's results).
pub(super) fn status_of_error_type(kind: &str) -> Option<u16> {
    Some(match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "api_error" => 500,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn rfc3339_times_are_read_as_the_api_writes_them() {
        let at = |s| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(at("2026-12-03T00:06:55Z"), Some(1_796_256_415));
        assert_eq!(at("2026-12-03T01:06:55+01:00"), Some(1_796_256_415));
        assert_eq!(at("2026-12-03T00:06:55.250Z"), Some(1_796_256_415));
        assert_eq!(at("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(at("yesterday"), None);
        assert_eq!(at("2026-13-03T00:06:55Z"), None);
    }

    #[test]
    fn rate_limit_headers_are_read_per_kind() {
        let h = headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "3"),
            ("anthropic-ratelimit-requests-reset", "2026-12-03T00:06:55Z"),
            ("Anthropic-Ratelimit-Tokens-Remaining", "12000"),
        ]);
        let limits = server_limits(&h);
        let requests = limits.requests.unwrap();
        assert_eq!((requests.limit, requests.remaining), (Some(50), 3));
        assert!(requests.resets_at.is_some());
        assert_eq!(limits.tokens.unwrap().remaining, 12_000);
        assert!(limits.input_tokens.is_none() && limits.output_tokens.is_none());
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "99999")])),
            Some(LONGEST_WAIT)
        );
    }

    #[test]
    fn failed_calls_are_classified_by_status_and_words() {
        let body = |kind: &str, message: &str| {
            format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"{message}"}}}}"#)
        };
        assert!(matches!(
            error_of(401, &body("authentication_error", "invalid x-api-key")),
            Error::Authentication { .. }
        ));
        assert!(matches!(
            error_of(404, &body("not_found_error", "model: claude-nope")),
            Error::ModelNotFound { .. }
        ));
        let spend = error_of(
            429,
            &body(
                "rate_limit_error",
                "You have reached your specified API usage limits.",
            ),
        );
        assert!(spend.is_fatal() && !spend.is_retryable(), "{spend:?}");
        let throttled = error_of(
            429,
            &body("rate_limit_error", "Number of requests exceeded"),
        );
        assert_eq!(throttled.api_status(), Some(429));
        assert!(throttled.is_retryable() && !throttled.is_fatal());
        let overloaded = error_of(529, &body("overloaded_error", "Overloaded"));
        assert!(overloaded.is_retryable());
        assert!(overloaded.to_string().contains("overloaded_error"));
        let bad = error_of(400, "not json at all");
        assert!(!bad.is_retryable());
        assert!(bad.to_string().contains("not json at all"));
    }
}
