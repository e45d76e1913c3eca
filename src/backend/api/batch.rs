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
use super::conn::{error_body, transport_error, Transport};
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
        Err(batch_error_of(status, &error_body(response)))
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
        match answer::outcome(
            message.text.clone(),
            &message,
            template.is_structured(),
            false,
        ) {
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
                    lost(
                        &format!("reading batch {id}'s results at line {number}"),
                        &error,
                    )
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
            // A line this crate cannot read is skipped, said once in the log: failing the
            // whole read would fail it the same way every time, and its request, left out
            // of what was read, is asked again by the engine.
            let value: Value = match serde_json::from_slice(&line) {
                Ok(value) => value,
                Err(error) => {
                    log::warn!("{}", bad_line(id, number, &error.to_string()));
                    continue;
                }
            };
            let Some(custom_id) = value.get("custom_id").and_then(Value::as_str) else {
                log::warn!("{}", bad_line(id, number, "no custom_id"));
                continue;
            };
            let result = &value["result"];
            let item = match result.get("type").and_then(Value::as_str) {
                Some("succeeded") => BatchItemResult::Succeeded(self.succeeded(&result["message"])),
                Some("errored") => BatchItemResult::Errored(errored(&result["error"])),
                Some("canceled") => BatchItemResult::Canceled,
                Some("expired") => BatchItemResult::Expired,
                other => BatchItemResult::Errored(bad_line(
                    id,
                    number,
                    &format!("a result of type {other:?}, which this crate does not know"),
                )),
            };
            each(custom_id, item);
        }
    }
}

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
        let since = since.duration_since(UNIX_EPOCH).map_or(UNIX_EPOCH, |d| {
            UNIX_EPOCH + Duration::from_secs(d.as_secs())
        });
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
            let last = page.get("last_id").and_then(Value::as_str).or_else(|| {
                data.last()
                    .and_then(|b| b.get("id"))
                    .and_then(Value::as_str)
            });
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
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    {
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
        _ => {
            return Err(unreadable(
                "a batch whose processing_status is not known",
                value,
            ))
        }
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Cursor;

    use claude_rayon_mock_api::{BatchOutcome, FaultMix, MockApi, Reply};
    use serde_json::json;

    use super::*;
    use crate::backend::api::options::ApiOptions;
    use crate::backend::api::{start_lane, Lane};
    use crate::backend::spec::AnswerSpec;
    use crate::budget::CacheTtl;

    const KEY: &str = "sk-ant-batch-test-4f9e2c71d8";
    const MODEL: &str = "claude-sonnet-4-5";

    /// A system prompt long enough for the mock to cache (with its minimum lowered).
    fn rules() -> String {
        "You review supplier correspondence for the accounts-payable team. For each letter, \
         say whether it disputes an invoice, which invoice, and what the supplier asks for. \
         Quote amounts exactly as written and never guess at a missing invoice number. "
            .repeat(3)
    }

    fn spec(schema: Option<Value>) -> AnswerSpec {
        AnswerSpec {
            model: Some(MODEL.into()),
            system_prompt: Some(rules()),
            append_system_prompt: None,
            json_schema: schema,
            effort: None,
        }
    }

    /// Letters like a user's: hundreds of characters of prose each.
    fn letters(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                format!(
                    "Letter {i}: Dear accounts team, we write about invoice INV-{} dated the \
                     fourth of November, which your reminder says is overdue by thirty days. \
                     Our records show the goods were delivered late because of the strike at \
                     the port, and we agreed by telephone that payment would fall due only \
                     on delivery. We therefore ask you to withdraw the late fee of {} euros \
                     and to confirm the new due date in writing. Kind regards, the supplier.",
                    4400 + i,
                    25 + i
                )
            })
            .collect()
    }

    fn options(api: &MockApi) -> ApiOptions {
        ApiOptions::default().api_key(KEY).base_url(api.url())
    }

    fn client(api: &MockApi, schema: Option<Value>) -> BatchClient {
        let template =
            RequestTemplate::new(&spec(schema), &options(api)).with_cache_ttl(CacheTtl::OneHour);
        BatchClient::new(&api.url(), ApiKey(KEY.into()), Arc::new(template))
    }

    fn requests(client: &BatchClient, prompts: &[String]) -> Vec<BatchRequest> {
        prompts
            .iter()
            .enumerate()
            .map(|(i, prompt)| BatchRequest {
                custom_id: format!("item-{i}"),
                params: client.params(prompt),
            })
            .collect()
    }

    fn results(client: &dyn BatchApi, id: &str) -> HashMap<String, BatchItemResult> {
        let mut seen = HashMap::new();
        let mut order = Vec::new();
        client
            .results(id, &mut |custom_id, result| {
                order.push(custom_id.to_string());
                assert!(
                    seen.insert(custom_id.to_string(), result).is_none(),
                    "{custom_id} came twice"
                );
            })
            .unwrap();
        seen
    }

    fn answer(result: &BatchItemResult) -> &Response {
        match result {
            BatchItemResult::Succeeded(Ok(response)) => response,
            other => panic!("not an answer: {other:?}"),
        }
    }

    #[test]
    fn a_batch_goes_in_and_its_results_come_back_by_custom_id_at_half_price() {
        let api = MockApi::start();
        api.set_cache_min_tokens(64);
        api.set_reply(|prompt| Reply::text(format!("Reviewed. {}", &prompt[..9])));
        let started = start_lane(&spec(None), 2, &options(&api), Lane::Batches).unwrap();
        let batches = started
            .backend
            .batches()
            .expect("the batch lane has batches");
        let prompts = letters(12);
        let requests: Vec<BatchRequest> = prompts
            .iter()
            .enumerate()
            .map(|(i, prompt)| BatchRequest {
                custom_id: format!("item-{i}"),
                params: batches.params(prompt),
            })
            .collect();

        let created = batches.create(&requests).unwrap();
        assert_eq!(created.status, BatchStatus::InProgress);
        assert_eq!(created.total(), 12);
        assert!(created.created_at.is_some());
        let ended = batches.retrieve(&created.id).unwrap();
        assert_eq!(ended.status, BatchStatus::Ended);
        assert_eq!(ended.counts.succeeded, 12);

        let mut order = Vec::new();
        let mut seen = HashMap::new();
        batches
            .results(&created.id, &mut |custom_id, result| {
                order.push(custom_id.to_string());
                seen.insert(custom_id.to_string(), result);
            })
            .unwrap();
        let submitted: Vec<String> = requests.iter().map(|r| r.custom_id.clone()).collect();
        assert_ne!(order, submitted, "the mock answers out of order");
        assert_eq!(seen.len(), 12);
        let mut wrote_cache = false;
        for (i, prompt) in prompts.iter().enumerate() {
            let response = answer(&seen[&format!("item-{i}")]);
            assert_eq!(response.text, format!("Reviewed. {}", &prompt[..9]));
            assert!(response.session_id.starts_with("msg_"), "{response:?}");
            assert_eq!((response.api_calls, response.continuations), (1, 0));
            assert_eq!(response.stop_reason.as_deref(), Some("end_turn"));
            let usage = response.usage;
            assert!(usage.input_tokens + usage.cache_read_input_tokens > 100);
            wrote_cache |= usage.cache_creation_input_tokens > 0;
            // Half the list price, cache writes at the one-hour multiplier (2x, not 1.25x).
            let (input, _) = crate::budget::list_price(Some(MODEL));
            let one_hour_extra =
                usage.cache_creation_input_tokens as f64 * input * 0.75 / 1_000_000.0;
            let expected =
                (crate::budget::usage_cost_usd(Some(MODEL), &usage) + one_hour_extra) / 2.0;
            assert!(
                (response.cost_usd - expected).abs() < 1e-12,
                "{} vs {expected}",
                response.cost_usd
            );
        }
        assert!(
            wrote_cache,
            "one request wrote the system block to the cache"
        );

        // What went out: the key and version, each request's params as built, not streamed,
        // the system block cached for an hour.
        let record = api.batch(&created.id).unwrap();
        let sent = &record.requests[0];
        let header = |name: &str| {
            sent.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("x-api-key").as_deref(), Some(KEY));
        assert_eq!(header("anthropic-version").as_deref(), Some("2023-06-01"));
        assert!(!sent.stream && sent.body.get("stream").is_none());
        assert_eq!(sent.body["system"][0]["cache_control"]["ttl"], "1h");
        assert_eq!(
            sent.body,
            serde_json::from_str::<Value>(&requests[0].params).unwrap()
        );
        // The streamed path stays open on a batch session (the cache-warming request).
        assert!(matches!(
            started.backend.checkout(&|| false),
            Ok(crate::backend::Checkout::Ready(_))
        ));
    }

    #[test]
    fn the_cache_warming_call_writes_an_hour_long_entry_and_is_billed_for_one() {
        let api = MockApi::start();
        api.set_cache_min_tokens(64);
        api.set_reply(|_| Reply::text("Reviewed."));
        let started = start_lane(&spec(None), 1, &options(&api), Lane::Batches).unwrap();
        let crate::backend::Checkout::Ready(mut conn) =
            started.backend.checkout(&|| false).unwrap()
        else {
            panic!("no connection");
        };
        let prompt = &letters(1)[0];
        let request = crate::backend::TurnRequest {
            prompt,
            timeout: Duration::from_secs(60),
            structured: false,
        };
        let response = conn.turn(&request, &mut |_| {}).unwrap();
        let sent = api.last_request().unwrap();
        assert!(sent.stream);
        assert_eq!(sent.body["system"][0]["cache_control"]["ttl"], "1h");
        let usage = response.usage;
        assert!(usage.cache_creation_input_tokens > 0, "{usage:?}");
        let (input, _) = crate::budget::list_price(Some(MODEL));
        let expected = crate::budget::usage_cost_usd(Some(MODEL), &usage)
            + usage.cache_creation_input_tokens as f64 * input * 0.75 / 1_000_000.0;
        assert!((response.cost_usd - expected).abs() < 1e-12);
    }

    #[test]
    fn a_messages_session_has_no_batches() {
        let api = MockApi::start();
        let started = start_lane(&spec(None), 1, &options(&api), Lane::Messages).unwrap();
        assert!(started.backend.batches().is_none());
    }

    #[test]
    fn a_structured_session_takes_the_tool_input_or_says_it_is_missing() {
        let api = MockApi::start();
        api.set_reply(|prompt| {
            if prompt.starts_with("Letter 1:") {
                Reply::text("I would rather describe the letter in prose.")
            } else {
                Reply::StructuredOutput(json!({"disputes": true, "length": prompt.len()}))
            }
        });
        let schema = json!({"type": "object", "properties": {"disputes": {"type": "boolean"}}});
        let client = client(&api, Some(schema));
        let prompts = letters(3);
        let created = client.create(&requests(&client, &prompts)).unwrap();
        let seen = results(&client, &created.id);
        let response = answer(&seen["item-0"]);
        assert_eq!(
            response.structured,
            Some(json!({"disputes": true, "length": prompts[0].len()}))
        );
        match &seen["item-1"] {
            BatchItemResult::Succeeded(Err((Error::StructuredOutputMissing { text }, billed))) => {
                assert!(text.contains("in prose"), "{text}");
                assert!(billed.cost_usd > 0.0 && billed.usage.output_tokens > 0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_cuts_and_errors_are_mapped_as_the_messages_backend_maps_them() {
        let api = MockApi::start();
        api.set_reply(|prompt| match &prompt[..9] {
            "Letter 0:" => Reply::Stop {
                text: String::new(),
                stop_reason: "refusal".into(),
            },
            "Letter 1:" => Reply::Stop {
                text: "The supplier asks for the late fee".into(),
                stop_reason: "max_tokens".into(),
            },
            _ => Reply::text("Reviewed."),
        });
        api.set_batch_request_outcome(|custom_id, _| match custom_id {
            "item-2" => BatchOutcome::errored("overloaded_error"),
            "item-3" => BatchOutcome::errored("invalid_request_error"),
            "item-4" => BatchOutcome::errored("authentication_error"),
            "item-5" => BatchOutcome::Errored {
                error_type: "not_found_error".into(),
                message: "model: claude-sonnet-9".into(),
            },
            "item-6" => BatchOutcome::errored("rate_limit_error"),
            "item-7" => BatchOutcome::Expired,
            _ => BatchOutcome::Answer,
        });
        let client = client(&api, None);
        let created = client.create(&requests(&client, &letters(9))).unwrap();
        let seen = results(&client, &created.id);
        match &seen["item-0"] {
            BatchItemResult::Succeeded(Err((Error::Refused { .. }, billed))) => {
                assert!(billed.cost_usd > 0.0)
            }
            other => panic!("{other:?}"),
        }
        match &seen["item-1"] {
            BatchItemResult::Succeeded(Err((
                Error::Truncated {
                    partial,
                    stop_reason,
                },
                _,
            ))) => {
                assert_eq!(stop_reason, "max_tokens");
                assert_eq!(partial, "The supplier asks for the late fee");
            }
            other => panic!("{other:?}"),
        }
        let errored = |id: &str| match &seen[id] {
            BatchItemResult::Errored(error) => error,
            other => panic!("{id}: {other:?}"),
        };
        assert_eq!(errored("item-2").api_status(), Some(529));
        assert!(errored("item-2").is_retryable());
        assert_eq!(errored("item-3").api_status(), Some(400));
        assert!(!errored("item-3").is_retryable());
        assert!(matches!(errored("item-4"), Error::Authentication { .. }));
        assert!(matches!(errored("item-5"), Error::ModelNotFound { .. }));
        assert_eq!(errored("item-6").api_status(), Some(429));
        assert!(matches!(seen["item-7"], BatchItemResult::Expired));
        assert_eq!(answer(&seen["item-8"]).text, "Reviewed.");
    }

    #[test]
    fn a_canceled_batch_ends_with_what_it_had_done() {
        let api = MockApi::start();
        api.set_batch_processing_time(Duration::from_secs(3600));
        let client = client(&api, None);
        let created = client.create(&requests(&client, &letters(4))).unwrap();
        assert_eq!(api.advance_batch(&created.id, 1), 1);
        let canceling = client.cancel(&created.id).unwrap();
        assert_eq!(canceling.status, BatchStatus::Canceling);
        let ended = client.retrieve(&created.id).unwrap();
        assert_eq!(ended.status, BatchStatus::Ended);
        assert_eq!((ended.counts.succeeded, ended.counts.canceled), (1, 3));
        let seen = results(&client, &created.id);
        answer(&seen["item-0"]);
        for id in ["item-1", "item-2", "item-3"] {
            assert!(matches!(seen[id], BatchItemResult::Canceled), "{id}");
        }
    }

    #[test]
    fn an_invalid_batch_is_rejected_with_the_apis_reason() {
        let api = MockApi::start();
        let client = client(&api, None);
        let mut requests = requests(&client, &letters(3));
        requests[2].custom_id = "item-0".into();
        let error = client.create(&requests).unwrap_err();
        match &error {
            Error::BatchRejected { message } => {
                assert!(message.contains("requests.2"), "{message}");
                assert!(message.contains("item-0"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(error.is_fatal());
        assert_eq!(api.batch_count(), 0);
    }

    #[test]
    fn list_since_pages_back_to_the_time_asked() {
        let api = MockApi::start();
        let mut client = client(&api, None);
        client.page_size = 2;
        let since = SystemTime::now();
        let mut ids = Vec::new();
        for prompts in [letters(1), letters(2), letters(3)] {
            ids.push(client.create(&requests(&client, &prompts)).unwrap().id);
        }
        let calls = api.batch_api_calls();
        let listed = client.list_since(since).unwrap();
        assert_eq!(api.batch_api_calls() - calls, 2, "two pages of two");
        let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
        assert_eq!(
            listed.iter().map(|b| b.id.clone()).collect::<Vec<_>>(),
            newest_first
        );
        assert_eq!(listed[0].total(), 3);
        // Nothing is that new: the first page's newest ends the search.
        let calls = api.batch_api_calls();
        let later = SystemTime::now() + Duration::from_secs(3600);
        assert!(client.list_since(later).unwrap().is_empty());
        assert_eq!(api.batch_api_calls() - calls, 1);
    }

    #[test]
    fn a_failed_create_is_retryable_and_a_cut_one_is_found_by_listing() {
        let api = MockApi::start();
        let client = client(&api, None);
        let since = SystemTime::now();
        let mut created_unseen = 0;
        for seed in 0..24 {
            api.set_batch_faults(Some(FaultMix {
                rate: 1.0,
                seed,
                retry_after_secs: 1,
            }));
            let before = api.batch_count();
            let error = client.create(&requests(&client, &letters(2))).unwrap_err();
            assert!(error.is_retryable() && !error.is_fatal(), "{error:?}");
            created_unseen += api.batch_count() - before;
        }
        api.set_batch_faults(None);
        assert!(created_unseen > 0, "some seed cut a create");
        assert_eq!(client.list_since(since).unwrap().len(), created_unseen);
    }

    #[test]
    fn the_key_never_shows_in_an_error_or_debug_output() {
        let api = MockApi::start();
        let client = client(&api, None);
        let mut requests = requests(&client, &letters(2));
        requests[1].custom_id = "has space".into();
        let rejected = client.create(&requests).unwrap_err();
        let unknown = client.retrieve("msgbatch_nope").unwrap_err();
        assert_eq!(unknown.api_status(), Some(404));
        assert!(!matches!(unknown, Error::ModelNotFound { .. }));
        let odd_id = client.retrieve("../messages").unwrap_err();
        // Nothing listens on port 1 (tcpmux): the connection is refused.
        let template = RequestTemplate::new(&spec(None), &options(&api));
        let unreachable =
            BatchClient::new("http://127.0.0.1:1", ApiKey(KEY.into()), Arc::new(template))
                .retrieve("msgbatch_01")
                .unwrap_err();
        assert!(
            matches!(unreachable, Error::Api { status: None, .. }) && unreachable.is_retryable(),
            "{unreachable:?}"
        );
        let started = start_lane(&spec(None), 1, &options(&api), Lane::Batches).unwrap();
        for shown in [
            format!("{rejected} {rejected:?}"),
            format!("{unknown} {unknown:?}"),
            format!("{odd_id} {odd_id:?}"),
            format!("{unreachable} {unreachable:?}"),
            format!("{client:?}"),
            format!("{:?}", started.backend),
        ] {
            assert!(!shown.contains(KEY), "{shown}");
        }
    }

    #[test]
    fn results_lines_are_read_one_at_a_time_and_a_bad_one_is_skipped() {
        let api = MockApi::start();
        let client = client(&api, None);
        // One-hour writes as the API reported them, not all the writes.
        let message = json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": MODEL,
            "content": [{"type": "text", "text": "The letter disputes invoice 4411."}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {
                "input_tokens": 300, "output_tokens": 12,
                "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_1h_input_tokens": 100, "ephemeral_5m_input_tokens": 900},
            },
        });
        let body = format!(
            "{}\n\n{}\nnot a result\n{}\n{}\n",
            json!({"custom_id": "item-0", "result": {"type": "succeeded", "message": message}}),
            json!({"custom_id": "item-1", "result": {"type": "canceled"}}),
            json!({"custom_id": "item-2", "result": {"type": "expired"}}),
            json!({"custom_id": "item-3", "result": {"type": "postponed"}}),
        );
        let mut seen = Vec::new();
        client
            .read_results("msgbatch_01", Cursor::new(body), &mut |id, result| {
                seen.push((id.to_string(), result))
            })
            .unwrap();
        // The unreadable line is skipped; the others are all handed over, in order.
        let ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["item-0", "item-1", "item-2", "item-3"]);
        // A result type this crate does not know is an error naming it (retryable).
        match &seen[3].1 {
            BatchItemResult::Errored(error) => {
                assert!(
                    error.to_string().contains("postponed") && error.is_retryable(),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
        let response = answer(&seen[0].1);
        let expected = crate::budget::call_cost_usd(
            Some(MODEL),
            &response.usage,
            100,
            crate::budget::Rate::Batch,
        );
        assert!((response.cost_usd - expected).abs() < 1e-12);
        assert!(matches!(seen[1].1, BatchItemResult::Canceled));
    }
}
