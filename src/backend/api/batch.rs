//! The Message Batches API: [`BatchClient`] submits a session's prepared requests in one
//! batch, looks at it, cancels it and reads its results, each a blocking HTTPS call on an
//! agent of its own (the engine's polling thread makes them, never a worker).
//!
//! A result is judged as a streamed answer is (`answer::outcome`), with one difference: a
//! batch's answer cut at `max_tokens` cannot be asked to go on (its request is gone; a
//! continuation would be another request, in another batch), so it is
//! [`Error::Truncated`] with the part that came. Every token of a batch is billed at half
//! the list price, the prompt cache's multipliers on top.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::answer::{self, Outcome};
use super::conn::{transport_error, Transport, MAX_ERROR_BODY};
use super::imp::ApiKey;
use super::reply;
use super::request::RequestTemplate;
use super::stream::Message;
use crate::backend::batch::{
    BatchApi, BatchCounts, BatchItemResult, BatchRequest, BatchState, BatchStatus,
};
use crate::backend::Billed;
use crate::budget::Rate;
use crate::{Error, Response};

/// How long making a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest one read or write of a call may wait with nothing moving: a create of up to
/// 256 MB and a results body of hundreds of MB have no whole-call limit (their size, not a
/// stall, sets how long they take), so a stalled connection ends here.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The whole of a small call (retrieve, list, cancel).
const SMALL_CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The most of a batch object's or a list page's reply that is read (a page of 1,000
/// batches is well under 1 MiB).
const MAX_REPLY_BODY: u64 = 16 << 20;
/// The longest results line taken: one request's whole message (a long answer is well
/// under 1 MiB); a longer one is not the API talking.
const MAX_RESULT_LINE: u64 = 64 << 20;
/// Batches a list page asks for: the API's most.
const LIST_PAGE: u32 = 1000;

/// A session's client of the Message Batches API: the session's key, address and request
/// settings (shared with its Messages backend).
pub(crate) struct BatchClient {
    /// `<base>/v1/messages/batches`.
    endpoint: String,
    key: ApiKey,
    template: Arc<RequestTemplate>,
    agent: ureq::Agent,
    /// Batches a list page asks for (small in tests, to see paging).
    page_size: u32,
}

impl BatchClient {
    /// A client of the API at `base_url` (no trailing slash).
    pub(super) fn new(base_url: &str, key: ApiKey, template: Arc<RequestTemplate>) -> BatchClient {
        let config = ureq::Agent::config_builder()
            // Error statuses carry the API's word (its error body).
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(STALL_TIMEOUT))
            .timeout_per_write(Some(STALL_TIMEOUT))
            .user_agent(concat!("claude-rayon/", env!("CARGO_PKG_VERSION")))
            .build();
        BatchClient {
            endpoint: format!("{base_url}/v1/messages/batches"),
            key,
            template,
            agent: ureq::Agent::new_with_config(config),
            page_size: LIST_PAGE,
        }
    }

    /// A reply that answered (200), or the error it or its failure stands for; `timeout`
    /// is what a timeout reports.
    fn answered(
        &self,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        timeout: Duration,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let response = sent.map_err(|error| match transport_error(error, timeout) {
            Transport::Unreachable(error) | Transport::TimedOut(error) | Transport::Lost(error) => {
                error
            }
        })?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(response);
        }
        let mut text = String::new();
        let _ = response
            .into_body()
            .into_reader()
            .take(MAX_ERROR_BODY)
            .read_to_string(&mut text);
        Err(batch_error_of(status, &text))
    }

    /// A small call's JSON answer.
    fn json(
        &self,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        timeout: Duration,
    ) -> Result<Value, Error> {
        let response = self.answered(sent, timeout)?;
        let mut text = String::new();
        response
            .into_body()
            .into_reader()
            .take(MAX_REPLY_BODY)
            .read_to_string(&mut text)
            .map_err(|error| lost("while reading its answer", &error))?;
        serde_json::from_str(&text).map_err(|error| Error::Api {
            status: None,
            message: format!(
                "the API's answer could not be read ({error}): {}",
                crate::error::shorten(&text, 200)
            ),
        })
    }

    /// A GET of `url`, whole within [`SMALL_CALL_TIMEOUT`].
    fn get(&self, url: &str) -> Result<Value, Error> {
        let sent = self
            .key
            .sign(self.agent.get(url))
            .config()
            .timeout_global(Some(SMALL_CALL_TIMEOUT))
            .build()
            .call();
        self.json(sent, SMALL_CALL_TIMEOUT)
    }

    /// The address of batch `id`, plus `tail`.
    fn batch_url(&self, id: &str, tail: &str) -> Result<String, Error> {
        Ok(format!("{}/{}{tail}", self.endpoint, checked_id(id)?))
    }

    /// A `succeeded` result's message, judged as a streamed answer is, priced at the
    /// batch rate.
    fn succeeded(&self, message: &Value) -> Result<Response, (Error, Billed)> {
        let message = Message::from_object(message);
        let template = &self.template;
        let one_hour_writes = template.one_hour_writes(
            message.one_hour_writes,
            message.usage.cache_creation_input_tokens,
        );
        let billed = Billed {
            cost_usd: template.cost_usd(&message.usage, one_hour_writes, Rate::Batch),
            usage: message.usage,
        };
        // No continuation: a batch's request cannot be asked to go on.
        match answer::outcome(message.text.clone(), &message, template.is_structured(), false) {
            Outcome::Answer { text, structured } => Ok(Response {
                text,
                structured,
                usage: billed.usage,
                cost_usd: billed.cost_usd,
                // Processed somewhere in the batch's hours: the API does not say how long.
                duration: Duration::ZERO,
                num_turns: 1,
                session_id: message.id,
                api_retries: 0,
                stop_reason: message.stop_reason,
                continuations: 0,
                api_calls: 1,
                replayed: false,
            }),
            Outcome::Failed(error) => Err((error, billed)),
            // Not asked for (`may_continue` false), but a cut all the same.
            Outcome::Cut(partial) => Err((
                Error::Truncated {
                    stop_reason: "max_tokens".into(),
                    partial,
                },
                billed,
            )),
        }
    }

    /// Read results from `reader`, line by line, handing each to `each`.
    fn read_results(
        &self,
        id: &str,
        reader: impl Read,
        each: &mut dyn FnMut(&str, BatchItemResult),
    ) -> Result<(), Error> {
        let mut reader = BufReader::with_capacity(64 << 10, reader);
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            number += 1;
            let read = reader
                .by_ref()
                .take(MAX_RESULT_LINE)
                .read_until(b'\n', &mut line)
                .map_err(|error| {
                    lost(&format!("reading batch {id}'s results at line {number}"), &error)
                })?;
            if read == 0 {
                return Ok(());
            }
            if line.last() != Some(&b'\n') && read as u64 == MAX_RESULT_LINE {
                return Err(bad_line(id, number, "longer than 64 MiB"));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: Value = serde_json::from_slice(&line)
                .map_err(|error| bad_line(id, number, &error.to_string()))?;
            let Some(custom_id) = value.get("custom_id").and_then(Value::as_str) else {
                return Err(bad_line(id, number, "no custom_id"));
            };
            let result = &value["result"];
            let item = match result.get("type").and_then(Value::as_str) {
                Some("succeeded") => BatchItemResult::Succeeded(self.succeeded(&result["message"])),
                Some("errored") => BatchItemResult::Errored(errored(&result["error"])),
                Some("canceled") => BatchItemResult::Canceled,
                Some("expired") => BatchItemResult::Expired,
                other => {
                    return Err(bad_line(
                        id,
                        number,
                        &format!("a result of type {other:?}, which this crate does not know"),
                    ))
                }
            };
            each(custom_id, item);
        }
    }
}

// Until the engine's batched path (issue 27) calls it through `Backend::batches`.
#[allow(dead_code)]
impl BatchApi for BatchClient {
    fn params(&self, prompt: &str) -> String {
        self.template.params(prompt)
    }

    /// A 400 (or 413) that is not a spend limit is [`Error::BatchRejected`] with the API's
    /// message (it names the request: `requests.2.custom_id: ...`).
    fn create(&self, requests: &[BatchRequest]) -> Result<BatchState, Error> {
        // The params are JSON already: spliced in, not parsed again (100,000 of them).
        let size: usize = requests
            .iter()
            .map(|r| r.params.len() + r.custom_id.len() + 32)
            .sum();
        let mut body = String::with_capacity(size + 16);
        body.push_str(r#"{"requests":["#);
        for (i, request) in requests.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(r#"{"custom_id":"#);
            body.push_str(&Value::from(request.custom_id.as_str()).to_string());
            body.push_str(r#","params":"#);
            body.push_str(&request.params);
            body.push('}');
        }
        body.push_str("]}");
        let sent = self
            .key
            .sign(self.agent.post(&self.endpoint))
            .header("content-type", "application/json")
            .send(body.as_bytes());
        let value = match self.json(sent, STALL_TIMEOUT) {
            Err(Error::Api {
                status: Some(400 | 413),
                message,
            }) => return Err(Error::BatchRejected { message }),
            other => other?,
        };
        state_of(&value)
    }

    fn retrieve(&self, id: &str) -> Result<BatchState, Error> {
        state_of(&self.get(&self.batch_url(id, "")?)?)
    }

    /// Batches without a `created_at` are kept (their age is not known); `since` is taken
    /// to the whole second before it, as the API writes its times.
    fn list_since(&self, since: SystemTime) -> Result<Vec<BatchState>, Error> {
        let since = since
            .duration_since(UNIX_EPOCH)
            .map_or(UNIX_EPOCH, |d| UNIX_EPOCH + Duration::from_secs(d.as_secs()));
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = format!("{}?limit={}", self.endpoint, self.page_size);
            if let Some(last) = &after {
                url.push_str("&after_id=");
                url.push_str(checked_id(last)?);
            }
            let page = self.get(&url)?;
            let Some(data) = page.get("data").and_then(Value::as_array) else {
                return Err(unreadable("a list page without data", &page));
            };
            for batch in data {
                let state = state_of(batch)?;
                // Newest first: the first older one ends the search.
                if state.created_at.is_some_and(|at| at < since) {
                    return Ok(found);
                }
                found.push(state);
            }
            let last = page
                .get("last_id")
                .and_then(Value::as_str)
                .or_else(|| data.last().and_then(|b| b.get("id")).and_then(Value::as_str));
            match last {
                Some(last) if page.get("has_more").and_then(Value::as_bool) == Some(true) => {
                    after = Some(last.to_string());
                }
                _ => return Ok(found),
            }
        }
    }

    fn cancel(&self, id: &str) -> Result<BatchState, Error> {
        let sent = self
            .key
            .sign(self.agent.post(&self.batch_url(id, "/cancel")?))
            .config()
            .timeout_global(Some(SMALL_CALL_TIMEOUT))
            .build()
            .send_empty();
        state_of(&self.json(sent, SMALL_CALL_TIMEOUT)?)
    }

    /// Read from `<base>/v1/messages/batches/{id}/results`, which is what the API gives
    /// as the batch's `results_url`: built here rather than taken from an answer, so the
    /// key never goes to an address an answer names, and no retrieve is needed first.
    /// The body is read a line at a time (never whole: 100,000 results can be hundreds of
    /// MB). A line that is not a result ends the read with an error naming its number;
    /// results before it were handed over (reading again hands every one again).
    fn results(&self, id: &str, each: &mut dyn FnMut(&str, BatchItemResult)) -> Result<(), Error> {
        let url = self.batch_url(id, "/results")?;
        let sent = self.key.sign(self.agent.get(&url)).call();
        let response = self.answered(sent, STALL_TIMEOUT)?;
        self.read_results(id, response.into_body().into_reader(), each)
    }
}

impl fmt::Debug for BatchClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchClient")
            .field("endpoint", &self.endpoint)
            .field("model", &self.template.model())
            .finish()
    }
}

/// The error a batch endpoint's failed reply stands for: as a `/v1/messages` call's, except
/// that a 404 is the batch not found (or its results not ready), not a model.
fn batch_error_of(status: u16, body: &str) -> Error {
    if status == 404 {
        let (kind, message) = reply::error_parts(status, body);
        return Error::Api {
            status: Some(404),
            message: format!("{kind}: {message}"),
        };
    }
    reply::error_of(status, body)
}

/// The error of an `errored` result: its `error` is the body a failed `/v1/messages` call
/// would have had, so it is read as that call's reply, its status the one the API gives
/// the error's type.
fn errored(error: &Value) -> Error {
    // `{"type":"error","error":{..}}` as documented; a bare `{type, message}` read alike.
    let body = if error.get("error").is_some() {
        error.clone()
    } else {
        json!({"type": "error", "error": error})
    };
    let kind = body["error"]["type"].as_str().unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    match reply::status_of_error_type(kind) {
        // A request's 404 is its model, when the message says so.
        Some(404) if !message.to_ascii_lowercase().contains("model") => {
            batch_error_of(404, &body.to_string())
        }
        Some(status) => reply::error_of(status, &body.to_string()),
        None => Error::Api {
            status: None,
            message: format!("{kind}: {message}"),
        },
    }
}

/// `id`, when it has the shape of the API's batch ids: ids come from the API's answers (and
/// the journal), and one of another shape must not change a call's path or query.
fn checked_id(id: &str) -> Result<&str, Error> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)) {
        return Ok(id);
    }
    Err(Error::Api {
        status: Some(404),
        message: format!(
            "no batch has the id {:?}: not an id the API gives",
            crate::error::shorten(id, 80)
        ),
    })
}

/// A batch object as the API describes one.
fn state_of(value: &Value) -> Result<BatchState, Error> {
    let id = value
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| unreadable("a batch without an id", value))?;
    let status = match value.get("processing_status").and_then(Value::as_str) {
        Some("in_progress") => BatchStatus::InProgress,
        Some("canceling") => BatchStatus::Canceling,
        Some("ended") => BatchStatus::Ended,
        _ => return Err(unreadable("a batch whose processing_status is not known", value)),
    };
    let counts = &value["request_counts"];
    let count = |key: &str| counts.get(key).and_then(Value::as_u64).unwrap_or(0);
    Ok(BatchState {
        id: id.to_string(),
        status,
        counts: BatchCounts {
            processing: count("processing"),
            succeeded: count("succeeded"),
            errored: count("errored"),
            canceled: count("canceled"),
            expired: count("expired"),
        },
        created_at: value
            .get("created_at")
            .and_then(Value::as_str)
            .and_then(reply::parse_rfc3339),
    })
}

/// An answer that came whole but says what this crate cannot read.
fn unreadable(what: &str, value: &Value) -> Error {
    Error::Api {
        status: None,
        message: format!(
            "the API answered {what}: {}",
            crate::error::shorten(&value.to_string(), 200)
        ),
    }
}

/// A connection that failed while its answer was read.
fn lost(when: &str, error: &io::Error) -> Error {
    let timed_out = matches!(
        error.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) || error.to_string().to_ascii_lowercase().contains("timeout");
    if timed_out {
        Error::Timeout(STALL_TIMEOUT)
    } else {
        Error::Api {
            status: None,
            message: format!("the connection to the API was lost {when}: {error}"),
        }
    }
}

/// A results line that is not a result.
fn bad_line(id: &str, number: u64, why: &str) -> Error {
    Error::Api {
        status: None,
        message: format!(
            "batch {id}'s results, line {number}, is not a result: {}",
            crate::error::shorten(why, 200)
        ),
    }
}
