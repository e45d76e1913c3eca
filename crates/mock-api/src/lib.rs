//! A loopback mock of the Anthropic Messages API, for driving the real `claude` CLI in tests.
//!
//! Std-only HTTP/1.1 (plus `serde_json`). Each [`MockApi`] binds `127.0.0.1:0`, serves one
//! thread per connection (keep-alive, `Content-Length` or chunked request bodies) and stops on
//! `Drop` (the accept loop is woken by a self-connection and joined; open connections are shut
//! down and their threads joined).
//!
//! Its own crate (`crates/mock-api`, a dev-dependency of `claude-rayon`) so that it compiles
//! once rather than into every test binary; tests reach it as `support::mock_api` (a re-export
//! in `tests/support/mod.rs`), benches as `claude_rayon_mock_api`.
//!
//! ```ignore
//! use claude_rayon_mock_api::{Fault, MockApi, Reply, CLI_ENV_REMOVE};
//!
//! let api = MockApi::start();
//! api.set_reply(|prompt| match prompt {
//!     "boom" => Reply::status(529, None),
//!     p => Reply::Text(format!("len {}", p.len())),
//! });
//! let home = tempfile::tempdir().unwrap();
//! let mut cmd = std::process::Command::new(claude_bin);
//! for k in CLI_ENV_REMOVE { cmd.env_remove(k); }
//! cmd.envs(api.cli_env(home.path())).env("CLAUDE_CODE_MAX_RETRIES", "0");
//! // ... write {"type":"user","message":{"role":"user","content":"hi"}} lines on stdin ...
//! assert_eq!(api.requests()[0].user_turns, 1);
//! ```
//!
//! The reply function runs on the connection thread; it may sleep but must not block forever
//! (drop joins the connection threads).
//!
//! # Routes
//! * `POST /v1/messages` (any query string; the CLI sends `?beta=true`): the scripted [`Reply`],
//!   as server-sent events when the body has `"stream": true` (what the CLI sends), else as one
//!   JSON `Message`. SSE responses use `Transfer-Encoding: chunked` so a keep-alive connection
//!   stays usable and [`Fault::CutStream`] is a genuinely truncated stream.
//! * The Message Batches endpoints under `/v1/messages/batches` (create, list, retrieve,
//!   cancel, results): see [Message Batches](#message-batches). Any other method or path under
//!   it is 404 `not_found_error`.
//! * Anything else (any method/path, e.g. `/v1/messages/count_tokens`, `HEAD /`): `200 {}`.
//!
//! # What the CLI (2.1.197) sends, and how the mock reads it
//! Measured with `-p --input-format stream-json --output-format stream-json --verbose
//! --no-session-persistence --tools "" --system-prompt "" --model claude-sonnet-4-5`:
//! * One `HEAD /` at start-up (answered 200), then `POST /v1/messages?beta=true` with
//!   `"stream": true`, `max_tokens: 32000`, `thinking: {type: enabled, budget_tokens: 31999}`,
//!   `tools: []` (with `--json-schema`: exactly one tool, `StructuredOutput`), ~1.1 KB.
//! * User content is always an array of text blocks. The first user message starts with a
//!   `<system-reminder>` block (current date); after `/clear` the same first user message also
//!   holds `<local-command-caveat>`, `<command-name>/clear…` and `<local-command-stdout>` blocks
//!   before the prompt. When the model answers plain text under `--json-schema`, the CLI adds a
//!   user message `[structured-output-enforce] You MUST call the StructuredOutput tool…`.
//!   The mock treats a text block as *user text* unless it starts (after whitespace) with one of
//!   [`CLI_CONTEXT_PREFIXES`]. The **prompt** is the last user-text block of the last user
//!   message that has one (so an enforce request re-asks the reply function with the original
//!   prompt); **`user_turns`** counts user messages carrying user text (tool_result-only and
//!   enforce messages do not count): a fresh context counts 1, the second prompt of a
//!   conversation 2, the first prompt after `/clear` 1 again.
//! * Structured output: a `tool_use` of `StructuredOutput` whose input matches the schema ends
//!   the turn at once (result after ONE request, `num_turns: 2`, `structured_output` set); the
//!   CLI sends no follow-up. If the input fails the schema the CLI sends a follow-up whose last
//!   user message is a `tool_result` with `is_error: true`; the mock then asks the reply function
//!   again with the original prompt (5 failures → `error_max_structured_output_retries`). Any
//!   other tool_result follow-up (e.g. after [`Reply::ToolUse`]) is answered by the mock with
//!   [`AFTER_TOOL_TEXT`] (`end_turn`) without calling the reply function.
//! * Usage: `input_tokens = body bytes / 4`, `output_tokens = max(1, reply chars / 4)`
//!   (tool_use: chars of the input JSON), sent in `message_start` (output 1) and in full in
//!   `message_delta`. The CLI's `result.usage` is that turn's own (`total_cost_usd` accumulates
//!   for the process). After a non-streaming fallback `result.usage` is all zeros.
//! * A cut stream makes the CLI retry once without streaming (`"stream": false`), at once; if
//!   that is cut too the result is `is_error: true, api_error_status: null` ("Connection to the
//!   API was lost (ECONNRESET)"), never retried further.
//! * A stream that ends cleanly without `message_stop` ([`Fault::EndsBeforeStop`] with no stop
//!   reason: the text block whole, no `message_delta`): 2.1.197 answers a success holding the
//!   partial text with `stop_reason: null`, after one call; 2.1.332 prints a `message_stop` of
//!   its own (with `abandoned_blocks`), a synthetic `user` line ("Your response above was cut
//!   off mid-stream. Resume directly...", sent as a `<system-reminder>` block, so the mock's
//!   prompt stays the item's) and makes a second call whose answer alone is the result. A
//!   stream that stops inside its text block ([`Fault::NoStop`]) makes both send the call again
//!   without streaming. With a `message_delta` but no `message_stop` both take the answer as
//!   whole.
//! * `stop_reason: refusal`: 2.1.197 answers `is_error: true, stop_reason: refusal` after one
//!   call; 2.1.332 prints a synthetic `user` line ("...stopped by a safety classifier...") and
//!   asks once more; a second answer that is not refused is its result (a success).
//!   `pause_turn`: both answer a success with the paused text and `stop_reason: pause_turn`.
//!   `max_tokens`: both ask the model to go on (2.1.332 prints the request as a `user` line).
//! * Message ids are the mock's own, one per reply, unless [`Reply::WithId`] names one (a
//!   gateway that reuses ids); the CLIs show them as they come.
//!
//! # For a client that speaks HTTP itself (no CLI)
//! The same routes serve a blocking HTTP client: keep-alive for hundreds of requests on one
//! connection, streaming or not, and a thread per connection, so 256 connections are answered
//! at once. What such a client needs on top:
//! * [`RecordedRequest::headers`] (`x-api-key`, `anthropic-version`, ...), names lower-cased.
//!   `system` may be a string or text blocks (with `cache_control`, billed by the prompt-cache
//!   emulation above); `messages` content a string or blocks.
//! * Structured output through a forced tool: with `tool_choice: {"type":"tool","name":X}`,
//!   [`Reply::StructuredOutput`] calls tool `X` (the CLI's `StructuredOutput` otherwise). A
//!   stream is `message_start`, `content_block_start` (`tool_use`, `input: {}`), one
//!   `input_json_delta` per 256 bytes of the input's JSON, `content_block_stop`,
//!   `message_delta` (`stop_reason: tool_use`, usage), `message_stop`; no `ping` events, the
//!   whole stream in one HTTP chunk.
//! * Rate limits as the API reports them ([`MockApi::set_rate_limit`],
//!   [`MockApi::set_input_token_limit`]): while a limit is on, every `/v1/messages` response
//!   (200, 429 and errors alike) carries `anthropic-ratelimit-requests-limit: R`,
//!   `-remaining: N` (whole requests left) and `-reset: 2026-12-03T10:41:07Z` (RFC 3339 UTC,
//!   when the bucket is full again, rounded up to the second); the input-token limit adds the
//!   same three for `input-tokens` and for `tokens` (the most restrictive token limit in force:
//!   the mock has only the input one). A refused request gets 429 `rate_limit_error` with
//!   `retry-after` and takes nothing from either limit.
//! * [`Fault::SpendLimit`]: 429 without `retry-after` ([`SPEND_LIMIT_MESSAGE`]), not to be retried.
//! * [`MockApi::set_known_models`]: 404 `not_found_error` for any other model.
//! * [`MockApi::set_latency`]: an API that takes seconds to start answering.
//! * [`MockApi::set_faults`]: a seeded share of 429s, 529s, 500s, dropped connections and cut
//!   streams, for soak tests; [`MockApi::injected_faults`] counts them.
//! * [`MockApi::max_in_flight`]: whether N requests really were answered at once.
//! * [`MockApi::set_recording`]`(false)`: counts only, for long benches; and the
//!   `mock-api-server` binary (`src/bin`), the mock in a process of its own so that a bench's
//!   memory figures leave it out.
//!
//! Decisions are taken in this order when the request arrives: unknown model (404), rate
//! limits (429), injected fault; then the latency, then the reply.
//!
//! # Message Batches
//! The batch endpoints as the API documents them, each request of a batch answered by the same
//! reply function and prompt-cache emulation as `/v1/messages` (the prompt read from `params`
//! the same way):
//! * `POST /v1/messages/batches` with `{"requests": [{"custom_id": "...", "params": {...}}]}`:
//!   200 with the batch object (`id` `msgbatch_mock_000001`, `type: message_batch`,
//!   `processing_status: in_progress`, `request_counts` with every request `processing`,
//!   `created_at`, `expires_at` = created + 24 h, `ended_at`, `cancel_initiated_at`,
//!   `archived_at` and `results_url` null; times RFC 3339 UTC to the second). The whole batch
//!   is checked first and refused whole (nothing created) with 400 `invalid_request_error`
//!   when it holds no request or more than [`BATCH_MAX_REQUESTS`], when a `custom_id` does not
//!   match `^[a-zA-Z0-9_-]{1,64}$` or is used twice (the message names the request's index and
//!   the id: `requests.2.custom_id: "has space" does not match ...`), when `params` is not an
//!   object, or when `params` has `stream: true`. A body above [`BATCH_MAX_BYTES`] is answered
//!   413 `request_too_large` unread, and the connection closed. Other faults in `params` (an
//!   unknown model under [`MockApi::set_known_models`]) make that request `errored`, as the
//!   API does.
//! * `GET /v1/messages/batches/{id}`: the object as it stands; `GET /v1/messages/batches`:
//!   `{"data": [...], "has_more", "first_id", "last_id"}`, newest first, `limit` (default 20,
//!   1 to 1,000) from `after_id` (older than it) or `before_id` (newer than it); an unknown
//!   cursor gives an empty page.
//! * `POST /v1/messages/batches/{id}/cancel`: the object with `processing_status: canceling`
//!   and `cancel_initiated_at`; it ends at the next look, its requests not processed by then
//!   `canceled`. A batch already canceling or ended is answered as it stands.
//! * `GET /v1/messages/batches/{id}/results` (the `results_url`,
//!   `<base>/v1/messages/batches/{id}/results`, once ended): JSON lines
//!   (`application/x-jsonl`), one a request, in an order that is not the submission order
//!   (shuffled by the batch's number: the same for the same batch every time), each
//!   `{"custom_id": ..., "result": R}` with R `{"type":"succeeded","message":{...}}` (the
//!   `Message` a non-streaming `/v1/messages` answer gives, usage included),
//!   `{"type":"errored","error":{"type":"error","error":{"type":...,"message":...}}}`,
//!   `{"type":"canceled"}` or `{"type":"expired"}`. 404 `not_found_error` before the batch has
//!   ended, as for an unknown id.
//!
//! **Time.** A batch's requests are processed in submission order, evenly over its
//! processing time ([`MockApi::set_batch_processing_time`], taken at creation, default zero),
//! and the batch ends when the last one is; one whose processing time is above
//! [`BATCH_EXPIRY`] ends `expired` for the rest when its 24 hours are up. The mock has no
//! thread for this: each look (any batch endpoint or control) brings every batch up to that
//! moment, so with zero a batch is `in_progress` in the answer that creates it and `ended` at
//! the first look after. Tests step a batch without waiting with [`MockApi::advance_batch`]
//! (process N more now) and [`MockApi::expire_batch`] (its 24 hours are up now).
//!
//! **Outcomes.** [`MockApi::set_batch_request_outcome`] chooses, per `custom_id` and
//! request, [`BatchOutcome::Answer`] (the default), `Errored` with an error type (the API's
//! retryable `overloaded_error`, or `invalid_request_error`, ...) or `Expired`. Answered
//! requests follow the reply function: a [`Fault::Status`] is `errored` with its error type
//! (529 `overloaded_error`, 500 `api_error`, ...), [`Fault::SpendLimit`] `errored`
//! `rate_limit_error`, [`Fault::CutStream`] `errored` `api_error`; [`Fault::NoStop`] and
//! [`Fault::EndsBeforeStop`] their whole text; [`Reply::After`] and [`Fault::Slow`] do not
//! wait (a batch's pace is its processing time). A panicking reply or outcome function makes
//! its request `errored` `api_error`.
//!
//! **Billing.** A succeeded request is billed as `/v1/messages` bills it (the prompt cache
//! read and written at the moment it is processed: a prefix written by a `/v1/messages`
//! request before the batch is read by its requests), in its [`RecordedRequest`] and in the
//! batch's [`BatchUsage`] ([`BatchRecord::billed`]: full-rate token counts; the half price is
//! the client's arithmetic); errored, canceled and expired requests are not billed.
//!
//! **What it keeps.** [`MockApi::batches`] / [`MockApi::batch`] give each batch's
//! [`BatchRecord`]: id, `custom_id`s in order, status, counts, billed usage, created, cancel
//! and end instants, and (when recording was on at creation) every request as a
//! [`RecordedRequest`] whose `body` is its `params` and `headers` those of the creating call.
//! With recording off a batch keeps each request's `params` only until it is processed, so a
//! 10,000-request batch holds its results and little else. [`MockApi::batch_count`] counts
//! batches created.
//!
//! **What else applies.** The mock checks no key on any route (tests read `x-api-key` in the
//! records). Batch calls are not `/v1/messages` requests: [`MockApi::request_count`],
//! [`MockApi::requests`], `in_flight`, [`MockApi::set_faults`] and the rate limits leave
//! them out; [`MockApi::batch_api_calls`] counts them (refused ones included), and
//! [`MockApi::set_batch_faults`] fails a seeded share of them: 429, 529, 500 and dropped
//! connections refuse the call, a *cut* answer comes after the call took effect (a batch
//! created whose id the client never read).
//! While a limit is on, every batch response carries the `anthropic-ratelimit-*` headers as
//! they stand, without taking from the limit (the API limits batch calls separately).
//! [`MockApi::set_latency`] delays their answers too (after the call has taken effect).
//!
//! # Retries
//! [`MockApi::cli_env`] leaves `CLAUDE_CODE_MAX_RETRIES` at the CLI default: 10 retries for
//! 401, 429, 5xx and 529 (not 400/403), backoff ~0.5 s doubling to ~32 s (+ up to 25 % jitter),
//! delay = max(`retry-after`, backoff): a persistent 401 or 429 takes ~183 s to fail. Tests that
//! script faults should pass `("CLAUDE_CODE_MAX_RETRIES", "0")` (or "1") to the child; the CLI
//! honours it and emits one `{"type":"system","subtype":"api_retry",…}` line per retry.
use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Text-block prefixes the CLI injects into user messages that are not the user's text.
pub const CLI_CONTEXT_PREFIXES: &[&str] = &[
    "<system-reminder>",
    "<local-command-caveat>",
    "<local-command-stdout>",
    "<local-command-stderr>",
    "<command-name>",
    "<command-message>",
    "<command-args>",
    "[structured-output-enforce]",
];

/// Variables to remove from a child CLI's environment (with `Command::env_remove`) so it
/// talks to the mock with the mock's key and no parent session leaks in.
pub const CLI_ENV_REMOVE: &[&str] = &[
    "CLAUDECODE",
    "CLAUDE_CODE_ENTRYPOINT",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
    "ANTHROPIC_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "CLAUDE_CODE_MAX_RETRIES",
];

/// Name of the tool the CLI offers for `--json-schema`.
pub const STRUCTURED_OUTPUT_TOOL: &str = "StructuredOutput";

/// Text the mock answers a successful `StructuredOutput` tool_result with.
pub const AFTER_TOOL_TEXT: &str = "Done.";

/// What the mock answers one `/v1/messages` request with.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// One text content block, `stop_reason: end_turn`.
    Text(String),
    /// A `tool_use` block with this input, `stop_reason: tool_use`, calling the tool the
    /// request's `tool_choice` forces (`{"type":"tool","name":X}`), else `StructuredOutput`
    /// (the CLI's `--json-schema` tool).
    StructuredOutput(Value),
    /// A `tool_use` block calling any tool `name` with `input`, `stop_reason: tool_use`.
    ToolUse { name: String, input: Value },
    /// One text content block ending with this `stop_reason` (`max_tokens`, `refusal`, ...).
    Stop { text: String, stop_reason: String },
    /// A failure; see [`Fault`].
    Fault(Fault),
    /// Wait, then answer with the inner reply.
    After(Duration, Box<Reply>),
    /// The inner reply under this message id (a gateway that reuses ids across calls).
    WithId(String, Box<Reply>),
}

/// Scripted failures.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// An HTTP error with an Anthropic-style JSON body
    /// (`{"type":"error","error":{"type":"rate_limit_error","message":...}}`), plus a
    /// `retry-after` header (seconds) when given.
    Status { code: u16, retry_after: Option<u32> },
    /// Send the 200 headers and `message_start`, then close the connection. For a
    /// non-streaming request: headers and half a body, then close.
    CutStream,
    /// Wait this long, then answer with the echo text.
    Slow(Duration),
    /// Stream the first text, then end the response cleanly but without `message_delta` and
    /// `message_stop` (a stream that stopped early); a non-streaming request gets the second
    /// text whole.
    NoStop(String, String),
    /// Stream the text as a whole content block (`content_block_stop` included) and, when a
    /// stop reason is given, a `message_delta` carrying it; then end the response cleanly
    /// without `message_stop`. A non-streaming request gets the text whole, `end_turn`.
    EndsBeforeStop {
        /// The text streamed.
        text: String,
        /// The `message_delta`'s stop reason, if one is sent.
        stop_reason: Option<String>,
    },
    /// The spend limit reached: HTTP 429 `rate_limit_error` with [`SPEND_LIMIT_MESSAGE`] and
    /// no `retry-after`, which a client must not retry (waiting does not help).
    SpendLimit,
}

/// The API's message when the organisation's spend limit is reached (with HTTP 429).
pub const SPEND_LIMIT_MESSAGE: &str = "You have reached your specified API usage limits. \
You will regain access on 2027-01-01 at 00:00 UTC.";

impl Reply {
    /// `Reply::Text(s.into())`.
    pub fn text(s: impl Into<String>) -> Reply {
        Reply::Text(s.into())
    }
    /// `Reply::Fault(Fault::Status { code, retry_after })`.
    pub fn status(code: u16, retry_after: Option<u32>) -> Reply {
        Reply::Fault(Fault::Status { code, retry_after })
    }
    /// This reply under the message id `id`.
    pub fn with_id(self, id: impl Into<String>) -> Reply {
        Reply::WithId(id.into(), Box::new(self))
    }
}

/// One `/v1/messages` request as the mock saw it (or one request of a batch: see
/// [`BatchRecord::requests`]).
///
/// Its `Debug` shows the `x-api-key` and `authorization` headers as `[redacted]`: a failing
/// test's output must not carry a key (the field itself keeps them, for tests that check them).
#[derive(Clone)]
pub struct RecordedRequest {
    /// Last user-text block (see module docs); empty if none.
    pub prompt: String,
    /// User messages carrying user text (fresh context = 1; tool_result-only messages = 0).
    pub user_turns: usize,
    /// Request body size in bytes.
    pub bytes: usize,
    /// Names of the tools offered.
    pub tools: Vec<String>,
    /// `model` field.
    pub model: String,
    /// `stream` field (false when absent).
    pub stream: bool,
    /// When the request body had been read.
    pub at: Instant,
    /// HTTP status the mock answered (200 also for a cut stream), set just before the response
    /// goes out: 0 until then, and for a dropped connection ([`MockApi::set_faults`]).
    pub status: u16,
    /// True if the last user message was a tool_result (a follow-up after a tool call).
    pub tool_result: bool,
    /// Path with query string, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// The parsed body (`Value::Null` if it was not JSON).
    pub body: Value,
    /// The request's headers in the order sent, names lower-cased (HTTP names are
    /// case-insensitive; lower case lets tests compare with `==`).
    pub headers: Vec<(String, String)>,
    /// Input tokens this request read from the prompt cache, as the API would bill them
    /// (0 until it is answered).
    pub cache_read: usize,
    /// Input tokens this request wrote to the prompt cache (0 until it is answered).
    pub cache_write: usize,
    /// Input tokens billed outside the cache (0 until it is answered): with `cache_read` and
    /// `cache_write`, what the API counts for this request.
    pub input_tokens: usize,
}

impl fmt::Debug for RecordedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| match k.as_str() {
                "x-api-key" | "authorization" => (k.as_str(), "[redacted]"),
                _ => (k.as_str(), v.as_str()),
            })
            .collect();
        f.debug_struct("RecordedRequest")
            .field("prompt", &self.prompt)
            .field("user_turns", &self.user_turns)
            .field("bytes", &self.bytes)
            .field("tools", &self.tools)
            .field("model", &self.model)
            .field("stream", &self.stream)
            .field("at", &self.at)
            .field("status", &self.status)
            .field("tool_result", &self.tool_result)
            .field("path", &self.path)
            .field("body", &self.body)
            .field("headers", &headers)
            .field("cache_read", &self.cache_read)
            .field("cache_write", &self.cache_write)
            .field("input_tokens", &self.input_tokens)
            .finish()
    }
}

/// Input tokens of one request: read from the cache, written to it, and the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct InputTokens {
    input: usize,
    write: usize,
    read: usize,
}

impl InputTokens {
    /// No cache: every byte of the body is input (about four bytes a token).
    fn plain(body_bytes: usize) -> InputTokens {
        InputTokens {
            input: body_bytes / 4,
            write: 0,
            read: 0,
        }
    }
}

/// The prompt cache, as the API documents it: each `cache_control` breakpoint marks the end
/// of a prefix (tools, then system blocks, then message blocks, in order) that can be cached;
/// a prefix below the minimum size is not; an entry lives five minutes from its last use and
/// is readable once the response that wrote it has begun.
struct PromptCache {
    entries: HashMap<u64, Instant>,
    ttl: Duration,
    min_tokens: usize,
}

impl PromptCache {
    /// The prefixes of a request that end at a breakpoint: (hash, tokens), in order.
    fn breakpoints(body: &Value) -> Vec<(u64, usize)> {
        let mut blocks: Vec<(String, bool)> = Vec::new();
        let marked = |v: &Value| v.get("cache_control").is_some();
        if let Some(model) = body.get("model") {
            blocks.push((model.to_string(), false));
        }
        for tool in body
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            blocks.push((tool.to_string(), marked(tool)));
        }
        match body.get("system") {
            Some(Value::String(s)) => blocks.push((s.clone(), false)),
            Some(Value::Array(parts)) => {
                for part in parts {
                    let text = part.get("text").and_then(Value::as_str).unwrap_or_default();
                    // The CLI's billing header (`cc_version=2.1.197.5f7`, its last part
                    // changing from request to request) is read by the API, not cached as
                    // prompt text: the CLI's own caching works across requests.
                    if text.starts_with("x-anthropic-billing-header:") {
                        continue;
                    }
                    blocks.push((text.to_string(), marked(part)));
                }
            }
            _ => {}
        }
        for message in body
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match message.get("content") {
                Some(Value::String(s)) => blocks.push((s.clone(), false)),
                Some(Value::Array(parts)) => {
                    for part in parts {
                        let text = match part.get("text").and_then(Value::as_str) {
                            Some(t) => t.to_string(),
                            None => part.to_string(),
                        };
                        blocks.push((text, marked(part)));
                    }
                }
                _ => {}
            }
        }
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut bytes = 0;
        let mut out = Vec::new();
        for (text, is_breakpoint) in blocks {
            for b in text.bytes().chain([0xff]) {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            bytes += text.len();
            if is_breakpoint {
                out.push((hash, bytes / 4));
            }
        }
        out
    }

    /// What a request arriving now finds: its cacheable breakpoints and the tokens it reads
    /// (the longest cached prefix). Entries written by responses that have not begun yet are
    /// not there.
    fn look_up(&mut self, body: &Value, now: Instant) -> (Vec<(u64, usize)>, usize) {
        self.entries.retain(|_, expires| *expires > now);
        let cacheable: Vec<(u64, usize)> = Self::breakpoints(body)
            .into_iter()
            .filter(|(_, tokens)| *tokens >= self.min_tokens)
            .collect();
        let read = cacheable
            .iter()
            .filter(|(hash, _)| self.entries.contains_key(hash))
            .map(|(_, tokens)| *tokens)
            .max()
            .unwrap_or(0);
        (cacheable, read)
    }

    /// The response begins now: its prefixes become readable (a read refreshes their
    /// lifetime), and the request is billed: what it read, what it wrote up to its last
    /// breakpoint, and the rest.
    fn begin(
        &mut self,
        (cacheable, read): (Vec<(u64, usize)>, usize),
        body_bytes: usize,
        now: Instant,
    ) -> InputTokens {
        let last = cacheable.last().map_or(0, |(_, tokens)| *tokens);
        for (hash, _) in &cacheable {
            self.entries.insert(*hash, now + self.ttl);
        }
        let write = last.saturating_sub(read);
        let total = (body_bytes / 4).max(read + write);
        InputTokens {
            input: total - read - write,
            write,
            read,
        }
    }
}

type ReplyFn = dyn Fn(&RecordedRequest) -> Reply + Send + Sync;

/// A per-minute limit as the API keeps it: a bucket of `capacity` that refills continuously
/// at `capacity` a minute and starts full.
struct Bucket {
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(capacity: f64) -> Bucket {
        Bucket {
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    fn per_sec(&self) -> f64 {
        self.capacity / 60.0
    }

    fn refill(&mut self, now: Instant) {
        let gained = now.saturating_duration_since(self.last).as_secs_f64() * self.per_sec();
        self.tokens = (self.tokens + gained).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Take `n`, or return the whole seconds until `n` are there (60 when they never will
    /// be: an empty limit, or `n` above the capacity).
    fn take(&mut self, n: f64) -> Result<(), u32> {
        self.refill(Instant::now());
        let per_sec = self.per_sec();
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else if per_sec <= 0.0 || n > self.capacity {
            Err(60)
        } else {
            Err((((n - self.tokens) / per_sec).ceil() as u32).max(1))
        }
    }

    /// Give back (or, negative, take more: a request billed above its estimate leaves the
    /// bucket in debt, repaid by the refill).
    fn adjust(&mut self, n: f64) {
        self.tokens = (self.tokens + n).min(self.capacity);
    }

    /// Push `anthropic-ratelimit-{kind}-{limit,remaining,reset}`: the limit, what is left
    /// (whole units), and when the bucket is full again (RFC 3339, UTC, rounded up to a second).
    fn describe(
        &mut self,
        kind: &str,
        now: Instant,
        wall: SystemTime,
        out: &mut Vec<(String, String)>,
    ) {
        self.refill(now);
        let missing = (self.capacity - self.tokens).max(0.0);
        let full_in = if self.per_sec() > 0.0 {
            Duration::from_secs_f64(missing / self.per_sec())
        } else {
            Duration::ZERO
        };
        let name = |field: &str| format!("anthropic-ratelimit-{kind}-{field}");
        out.push((name("limit"), format!("{}", self.capacity as u64)));
        out.push((
            name("remaining"),
            format!("{}", self.tokens.max(0.0) as u64),
        ));
        out.push((name("reset"), rfc3339(wall + full_in)));
    }
}

/// `2026-12-03T10:41:07Z` for a time, rounded up to the second.
fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm; the epoch shifted to 0000-03-01).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// A share of `/v1/messages` requests that fail the way the API and the network do, for soak
/// tests (see [`MockApi::set_faults`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultMix {
    /// The probability that a request fails, 0.0 to 1.0.
    pub rate: f64,
    /// Decides, with a request's arrival index, whether and how it fails: the same seed and
    /// arrival order give the same failures.
    pub seed: u64,
    /// The `retry-after` (seconds) of an injected 429.
    pub retry_after_secs: u32,
}

/// The failures a [`FaultMix`] injects, equally likely.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Injected {
    RateLimited(u32),
    Overloaded,
    ServerError,
    Dropped,
    CutStream,
}

/// splitmix64: a tiny, well-mixed PRNG step, so that fault draws need no dependency.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl FaultMix {
    /// The fault (if any) of the request that arrived `arrival`-th since the mix was set.
    fn draw(&self, arrival: u64) -> Option<Injected> {
        let x = splitmix64(self.seed ^ splitmix64(arrival));
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
        if unit >= self.rate {
            return None;
        }
        Some(match splitmix64(x) % 5 {
            0 => Injected::RateLimited(self.retry_after_secs),
            1 => Injected::Overloaded,
            2 => Injected::ServerError,
            3 => Injected::Dropped,
            _ => Injected::CutStream,
        })
    }
}

/// The recorded requests, and how many arrived (recorded or not) since the last clear.
#[derive(Default)]
struct Records {
    list: Vec<RecordedRequest>,
    count: usize,
    /// Bumped by `clear_requests`, so a request answered after a clear does not fill in
    /// another's record.
    generation: u64,
}

/// Where a request's record is kept.
#[derive(Clone, Copy)]
struct Slot {
    generation: u64,
    index: usize,
}

struct Inner {
    addr: SocketAddr,
    cache: Mutex<PromptCache>,
    shutdown: AtomicBool,
    reply: RwLock<Arc<ReplyFn>>,
    /// Requests a minute.
    bucket: Mutex<Option<Bucket>>,
    /// Input tokens a minute.
    input_bucket: Mutex<Option<Bucket>>,
    rate_limited: AtomicUsize,
    latency: Mutex<Duration>,
    known_models: Mutex<Option<Vec<String>>>,
    faults: Mutex<Option<FaultMix>>,
    /// `/v1/messages` arrivals since the fault mix was set: the index its draws use.
    arrivals: AtomicU64,
    injected: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    recording: AtomicBool,
    requests: Mutex<Records>,
    other: Mutex<Vec<String>>,
    conns: Mutex<HashMap<u64, TcpStream>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
    /// Every batch created, oldest first.
    batches: Mutex<Vec<Arc<Mutex<Batch>>>>,
    /// Numbers the batches (their ids).
    batch_seq: AtomicU64,
    /// Calls to the batch endpoints (not counted in `requests.count`).
    batch_calls: AtomicUsize,
    /// The processing time given to batches created from now on.
    batch_processing_time: Mutex<Duration>,
    batch_outcome: RwLock<Arc<OutcomeFn>>,
    batch_faults: Mutex<Option<FaultMix>>,
    /// Batch calls since the batch fault mix was set: the index its draws use.
    batch_arrivals: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running mock server. Stops on drop.
pub struct MockApi {
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
}

impl Default for MockApi {
    fn default() -> Self {
        Self::start()
    }
}

impl MockApi {
    /// Bind `127.0.0.1:0` and start serving. Default reply: `Reply::Text("echo: {prompt}")`.
    pub fn start() -> MockApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let inner = Arc::new(Inner {
            addr,
            shutdown: AtomicBool::new(false),
            reply: RwLock::new(Arc::new(|r: &RecordedRequest| echo(&r.prompt))),
            cache: Mutex::new(PromptCache {
                entries: HashMap::new(),
                ttl: Duration::from_secs(300),
                min_tokens: 1024,
            }),
            bucket: Mutex::new(None),
            input_bucket: Mutex::new(None),
            rate_limited: AtomicUsize::new(0),
            latency: Mutex::new(Duration::ZERO),
            known_models: Mutex::new(None),
            faults: Mutex::new(None),
            arrivals: AtomicU64::new(0),
            injected: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            recording: AtomicBool::new(true),
            requests: Mutex::new(Records::default()),
            other: Mutex::new(Vec::new()),
            conns: Mutex::new(HashMap::new()),
            handles: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            batches: Mutex::new(Vec::new()),
            batch_seq: AtomicU64::new(1),
            batch_calls: AtomicUsize::new(0),
            batch_processing_time: Mutex::new(Duration::ZERO),
            batch_outcome: RwLock::new(Arc::new(|_: &str, _: &RecordedRequest| {
                BatchOutcome::Answer
            })),
            batch_faults: Mutex::new(None),
            batch_arrivals: AtomicU64::new(0),
        });
        let inner2 = Arc::clone(&inner);
        let accept = thread::Builder::new()
            .name("mock-api-accept".into())
            .spawn(move || accept_loop(listener, inner2))
            .expect("spawn accept thread");
        MockApi {
            inner,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Script the reply as a function of the prompt (see module docs for what "prompt" is).
    pub fn set_reply(&self, f: impl Fn(&str) -> Reply + Send + Sync + 'static) {
        *self.inner.reply.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(move |r: &RecordedRequest| f(&r.prompt));
    }

    /// Script the reply from the whole request (its `status` is 0 at that point).
    pub fn set_reply_with(&self, f: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static) {
        *self.inner.reply.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(f);
    }

    /// The smallest prefix the prompt cache keeps, in tokens (default 1,024, the API's
    /// minimum for Sonnet and Opus; 2,048 or 4,096 for some other models).
    pub fn set_cache_min_tokens(&self, tokens: usize) {
        lock(&self.inner.cache).min_tokens = tokens;
    }

    /// How long a cache entry lives after its last use (default five minutes).
    pub fn set_cache_ttl(&self, ttl: Duration) {
        lock(&self.inner.cache).ttl = ttl;
    }

    /// A requests-per-minute limit: a bucket of capacity `r`, refilled continuously at `r`
    /// per minute (starts full); when empty, answer 429 `rate_limit_error` with `retry-after`
    /// (seconds, rounded up). While it is on, every `/v1/messages` response carries
    /// `anthropic-ratelimit-requests-{limit,remaining,reset}` (module docs). `None` removes it.
    pub fn set_rate_limit(&self, r: Option<u32>) {
        *lock(&self.inner.bucket) = r.map(|r| Bucket::full(f64::from(r)));
    }

    /// An input-tokens-per-minute limit, shaped like [`set_rate_limit`](Self::set_rate_limit)'s
    /// and counting what the API counts: uncached input plus cache writes, not cache reads.
    /// A request is admitted on an estimate (body bytes / 4, never below what it is billed)
    /// taken from the bucket on arrival, and the bucket gets back the difference once the
    /// request is billed; one that does not fit gets 429 `rate_limit_error` with
    /// `retry-after` (60 if it never can: the request alone is above the limit). While it is
    /// on, responses carry `anthropic-ratelimit-input-tokens-*` and `anthropic-ratelimit-tokens-*`.
    /// `None` removes it.
    pub fn set_input_token_limit(&self, tokens_per_minute: Option<u64>) {
        *lock(&self.inner.input_bucket) = tokens_per_minute.map(|t| Bucket::full(t as f64));
    }

    /// How many 429s the rate limits (requests and input tokens) have answered; scripted
    /// `Fault::Status` 429s, [`Fault::SpendLimit`] and injected faults are not included.
    pub fn rate_limited(&self) -> usize {
        self.inner.rate_limited.load(Ordering::SeqCst)
    }

    /// Wait this long before the first byte of every `/v1/messages` response (errors and
    /// 429s included), after the request is recorded and its rate limits and fault decided:
    /// an API that takes seconds to answer, for benches. Default zero.
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.inner.latency) = latency;
    }

    /// Fail a share of `/v1/messages` requests (see [`FaultMix`]), for soak tests; `None`
    /// stops. Each request that passes the rate limits fails with probability `rate`, decided
    /// from the seed and its arrival index (counted from this call), equally often as: 429
    /// `rate_limit_error` with `retry-after`, 529 `overloaded_error`, 500 `api_error`, a
    /// dropped connection (the request read, then the socket closed without a byte), or a cut
    /// stream (200, `message_start` and half the echo text as a delta, then the connection
    /// closed inside the next delta). The reply function is not called for a failed request;
    /// it is recorded with its status (0 for a dropped connection) and billed as plain input.
    pub fn set_faults(&self, mix: Option<FaultMix>) {
        let mut faults = lock(&self.inner.faults);
        self.inner.arrivals.store(0, Ordering::SeqCst);
        *faults = mix;
    }

    /// How many faults [`set_faults`](Self::set_faults) and
    /// [`set_batch_faults`](Self::set_batch_faults) have injected.
    pub fn injected_faults(&self) -> usize {
        self.inner.injected.load(Ordering::SeqCst)
    }

    /// Answer a request whose `model` is not in the list with 404
    /// `{"type":"error","error":{"type":"not_found_error","message":"model: <model>"}}`, as
    /// the API does for a model it does not know. `None` (the default) accepts any model.
    pub fn set_known_models(&self, models: Option<Vec<String>>) {
        *lock(&self.inner.known_models) = models;
    }

    /// The most `/v1/messages` requests answered at the same moment since start or the last
    /// [`clear_requests`](Self::clear_requests): whether a client really has N in flight.
    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    /// The `/v1/messages` requests being answered now (from reading their body to their
    /// response's last byte).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// The connections accepted since start (the accept loop's own wake-up at drop aside):
    /// how well a client keeps its connections alive.
    pub fn connections_accepted(&self) -> usize {
        (self.inner.next_id.load(Ordering::SeqCst) - 1) as usize
    }

    /// Keep each request's [`RecordedRequest`] (default), or only count requests: a
    /// 50,000-request bench must not grow the mock's memory. Counts
    /// ([`request_count`](Self::request_count), [`rate_limited`](Self::rate_limited), ...)
    /// stay right either way; requests answered while it is off are not in
    /// [`requests`](Self::requests).
    pub fn set_recording(&self, on: bool) {
        self.inner.recording.store(on, Ordering::SeqCst);
    }

    /// Every recorded `/v1/messages` request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.requests).list.clone()
    }

    /// The latest recorded `/v1/messages` request, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.inner.requests).list.last().cloned()
    }

    /// Number of `/v1/messages` requests so far, recorded or not (cheaper than
    /// `requests().len()`).
    pub fn request_count(&self) -> usize {
        lock(&self.inner.requests).count
    }

    /// Forget recorded requests, and restart the counts of requests and of the most in flight.
    pub fn clear_requests(&self) {
        let mut records = lock(&self.inner.requests);
        records.list.clear();
        records.count = 0;
        records.generation += 1;
        let now = self.inner.in_flight.load(Ordering::SeqCst);
        self.inner.max_in_flight.store(now, Ordering::SeqCst);
    }

    /// `"METHOD PATH"` of every request to another route.
    pub fn other_requests(&self) -> Vec<String> {
        lock(&self.inner.other).clone()
    }

    /// How long batches created from now on take (default zero): a batch's requests are
    /// processed evenly over that time from its creation, in submission order, and it ends
    /// when the last is; one longer than [`BATCH_EXPIRY`] expires then with the rest
    /// unprocessed. The mock does this lazily, at each look (any batch endpoint or batch
    /// control), so with zero a batch is `in_progress` in the answer that creates it and
    /// `ended` at the first look after.
    pub fn set_batch_processing_time(&self, d: Duration) {
        *lock(&self.inner.batch_processing_time) = d;
    }

    /// Choose what each batch request ends as, from its `custom_id` and its record (its
    /// `params` as `body`), when it is processed: [`BatchOutcome::Answer`] (the default for
    /// all) answers it as `/v1/messages` would, or make it `errored` or `expired`. Runs on
    /// the thread that looks at the batch, with the batch locked: it must not call the
    /// batch controls.
    pub fn set_batch_request_outcome(
        &self,
        f: impl Fn(&str, &RecordedRequest) -> BatchOutcome + Send + Sync + 'static,
    ) {
        *self
            .inner
            .batch_outcome
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(f);
    }

    /// Process up to `requests` more requests of batch `id` now, ahead of its processing
    /// time: a test's way to have a batch part-done without waiting. Returns how many were
    /// processed (0 for an unknown id or a batch no longer in progress); the batch ends if
    /// that was the last.
    pub fn advance_batch(&self, id: &str, requests: usize) -> usize {
        let now = Instant::now();
        let all = advance_batches(&self.inner, now);
        let Ok(batch) = find_batch(&all, id) else {
            return 0;
        };
        let mut b = lock(&batch);
        if b.status() != BatchStatus::InProgress {
            return 0;
        }
        let todo = requests.min(b.entries.len() - b.next);
        for _ in 0..todo {
            b.process_next(&self.inner, now);
        }
        if b.next == b.entries.len() {
            b.ended = Some(now);
        }
        todo
    }

    /// End batch `id` now as if its 24 hours had run out: its requests not processed yet
    /// become `expired`. Returns false for an unknown id or a batch that had already ended
    /// (a cancel asked before wins: it ends the batch first).
    pub fn expire_batch(&self, id: &str) -> bool {
        let now = Instant::now();
        let all = advance_batches(&self.inner, now);
        let Ok(batch) = find_batch(&all, id) else {
            return false;
        };
        let mut b = lock(&batch);
        if b.ended.is_some() {
            return false;
        }
        b.finish(|| Answer::Expired, now);
        true
    }

    /// Every batch created so far, oldest first, brought up to now (see
    /// [`set_batch_processing_time`](Self::set_batch_processing_time)).
    pub fn batches(&self) -> Vec<BatchRecord> {
        advance_batches(&self.inner, Instant::now())
            .iter()
            .map(|b| lock(b).record())
            .collect()
    }

    /// Batch `id`, brought up to now, if there is one.
    pub fn batch(&self, id: &str) -> Option<BatchRecord> {
        let all = advance_batches(&self.inner, Instant::now());
        find_batch(&all, id).ok().map(|b| lock(&b).record())
    }

    /// Fail a share of the calls to the batch endpoints, as [`set_faults`](Self::set_faults)
    /// does for `/v1/messages` (its own draws, from the seed and the batch call's arrival index
    /// counted from this call); `None` stops. A 429, 529, 500 or dropped connection is decided
    /// on arrival and the call has no effect (no batch created, no cancel); a *cut* call takes
    /// effect and its answer is cut: the status line, headers and half the body, then the
    /// connection closed. A create cut so is a batch that exists but whose id the client never
    /// read. Counted in [`injected_faults`](Self::injected_faults).
    pub fn set_batch_faults(&self, mix: Option<FaultMix>) {
        let mut faults = lock(&self.inner.batch_faults);
        self.inner.batch_arrivals.store(0, Ordering::SeqCst);
        *faults = mix;
    }

    /// How many batches have been created.
    pub fn batch_count(&self) -> usize {
        lock(&self.inner.batches).len()
    }

    /// Calls to the batch endpoints so far (create, retrieve, list, cancel, results; refused
    /// ones included). They are not `/v1/messages` requests: [`request_count`](Self::request_count)
    /// and [`requests`](Self::requests) leave them out, and
    /// [`clear_requests`](Self::clear_requests) does not touch batches.
    pub fn batch_api_calls(&self) -> usize {
        self.inner.batch_calls.load(Ordering::SeqCst)
    }

    /// Environment for a child `claude` pointed at this mock with `HOME=home`.
    /// Also remove `CLAUDECODE` from the child's env (`Command::env_remove`).
    /// Retries are left at the CLI default; add `CLAUDE_CODE_MAX_RETRIES` for fault tests.
    /// `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC` is deliberately not set here: the library's
    /// seal must set it, and the tests must see what a user's environment would give.
    pub fn cli_env(&self, home: &Path) -> Vec<(String, String)> {
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        vec![
            kv("ANTHROPIC_BASE_URL", &self.url()),
            kv("ANTHROPIC_API_KEY", "sk-ant-test-mock-key"),
            kv("HOME", &home.to_string_lossy()),
            // Keep the CLI off every other host and out of the user's real config.
            kv("XDG_CONFIG_HOME", &home.join(".config").to_string_lossy()),
            kv("CLAUDE_CONFIG_DIR", &home.join(".claude").to_string_lossy()),
            kv("DISABLE_AUTOUPDATER", "1"),
            kv("DISABLE_TELEMETRY", "1"),
            kv("DISABLE_ERROR_REPORTING", "1"),
            kv("CLAUDE_CODE_ENABLE_TELEMETRY", "0"),
            kv("NO_PROXY", "127.0.0.1,localhost"),
            kv("no_proxy", "127.0.0.1,localhost"),
        ]
    }
}

impl Drop for MockApi {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        // Wake the accept loop; if even that fails, leave the thread rather than hang.
        let woke = TcpStream::connect_timeout(&self.inner.addr, Duration::from_secs(1)).is_ok();
        if let Some(h) = self.accept.take() {
            if woke {
                let _ = h.join();
            }
        }
        for (_, s) in lock(&self.inner.conns).drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let handles: Vec<_> = lock(&self.inner.handles).drain(..).collect();
        for h in handles {
            let _ = h.join();
        }
    }
}

fn echo(prompt: &str) -> Reply {
    Reply::Text(echo_text(prompt))
}

fn echo_text(prompt: &str) -> String {
    format!("echo: {prompt}")
}

fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    for stream in listener.incoming() {
        if inner.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = inner.next_id.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            lock(&inner.conns).insert(id, clone);
        }
        let inner2 = Arc::clone(&inner);
        let spawned = thread::Builder::new()
            .name("mock-api-conn".into())
            .spawn(move || {
                let _ = serve_connection(stream, &inner2);
                lock(&inner2.conns).remove(&id);
            });
        let mut handles = lock(&inner.handles);
        handles.retain(|h| !h.is_finished());
        match spawned {
            Ok(h) => handles.push(h),
            Err(_) => {
                lock(&inner.conns).remove(&id);
            }
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// A batch-creation body above [`BATCH_MAX_BYTES`]: not read, answered 413, and the
    /// connection closed.
    too_large: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

const MAX_BODY: usize = 64 << 20;

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(64 << 10).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Read one request; `Ok(None)` on a clean EOF between requests.
fn read_request(r: &mut BufReader<TcpStream>, w: &mut TcpStream) -> io::Result<Option<Request>> {
    let mut line = String::new();
    while line.is_empty() {
        match read_line(r)? {
            None => return Ok(None),
            Some(l) => line = l,
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let l = read_line(r)?.ok_or_else(|| bad("eof in headers"))?;
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        if headers.len() > 1000 {
            return Err(bad("too many headers"));
        }
    }
    let mut req = Request {
        method,
        path,
        headers,
        body: Vec::new(),
        too_large: false,
    };
    // A batch may be four times the size of anything else; above that, the API answers 413.
    let creates_batch =
        req.method.eq_ignore_ascii_case("POST") && req.path.split('?').next() == Some(BATCHES);
    let limit = if creates_batch {
        BATCH_MAX_BYTES
    } else {
        MAX_BODY
    };
    if req
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let l = read_line(r)?.ok_or_else(|| bad("eof in chunk size"))?;
            let size_str = l.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_str, 16).map_err(|_| bad("chunk size"))?;
            if size == 0 {
                // Trailers until an empty line.
                while let Some(t) = read_line(r)? {
                    if t.is_empty() {
                        break;
                    }
                }
                break;
            }
            if req.body.len() + size > limit {
                if creates_batch {
                    req.too_large = true;
                    req.body = Vec::new();
                    return Ok(Some(req));
                }
                return Err(bad("body too large"));
            }
            let start = req.body.len();
            req.body.resize(start + size, 0);
            r.read_exact(&mut req.body[start..])?;
            let _ = read_line(r)?; // CRLF after the chunk
        }
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("content-length"))?;
        if len > limit {
            if creates_batch {
                req.too_large = true;
                return Ok(Some(req));
            }
            return Err(bad("body too large"));
        }
        req.body.resize(len, 0);
        r.read_exact(&mut req.body)?;
    }
    Ok(Some(req))
}

fn serve_connection(stream: TcpStream, inner: &Inner) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    while !inner.shutdown.load(Ordering::SeqCst) {
        let req = match read_request(&mut r, &mut w)? {
            Some(q) => q,
            None => return Ok(()),
        };
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let route = req.path.split('?').next().unwrap_or("");
        let keep = if req.method.eq_ignore_ascii_case("POST") && route == "/v1/messages" {
            handle_messages(&req, inner, &mut w)?
        } else if route == BATCHES || route.starts_with(BATCHES_SLASH) {
            handle_batches(&req, inner, &mut w)?
        } else {
            lock(&inner.other).push(format!("{} {}", req.method, req.path));
            let head = req.method.eq_ignore_ascii_case("HEAD");
            write_response(&mut w, 200, &[], "application/json", b"{}", head)?;
            true
        };
        if close || !keep {
            let _ = w.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
    Ok(())
}

fn write_response(
    w: &mut TcpStream,
    code: u16,
    extra: &[(String, String)],
    ctype: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n",
        reason(code),
        body.len()
    );
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    w.write_all(&bytes)?;
    w.flush()
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ => "Status",
    }
}

fn error_type(code: u16) -> &'static str {
    match code {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn is_context_text(t: &str) -> bool {
    let t = t.trim_start();
    CLI_CONTEXT_PREFIXES.iter().any(|p| t.starts_with(p))
}

/// User-text blocks of one message's content.
fn user_texts(content: &Value) -> Vec<&str> {
    match content {
        Value::String(s) if !is_context_text(s) => vec![s.as_str()],
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .filter(|t| !is_context_text(t))
            .collect(),
        _ => Vec::new(),
    }
}

/// Inspect the parsed body: (prompt, user_turns, tools, model, stream, last user message is a
/// tool_result, that tool_result is_error).
fn inspect(body: &Value) -> (String, usize, Vec<String>, String, bool, bool, bool) {
    let empty = Vec::new();
    let msgs = body
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let users: Vec<&Value> = msgs
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .collect();
    let mut prompt = String::new();
    let mut turns = 0;
    for m in &users {
        let texts = user_texts(m.get("content").unwrap_or(&Value::Null));
        if let Some(last) = texts.last() {
            turns += 1;
            prompt = last.to_string();
        }
    }
    let (mut tool_result, mut tool_error) = (false, false);
    if let Some(Value::Array(blocks)) = users.last().and_then(|m| m.get("content")) {
        for b in blocks {
            if b.get("type").and_then(Value::as_str) == Some("tool_result") {
                tool_result = true;
                tool_error |= b.get("is_error").and_then(Value::as_bool).unwrap_or(false);
            }
        }
    }
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    (prompt, turns, tools, model, stream, tool_result, tool_error)
}

/// Counts a `/v1/messages` request as being answered for as long as it lives.
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn enter(inner: &'a Inner) -> InFlight<'a> {
        let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Count the request and, when recording, keep it; returns where it was kept.
fn record(inner: &Inner, rec: &RecordedRequest) -> Option<Slot> {
    let mut records = lock(&inner.requests);
    records.count += 1;
    if !inner.recording.load(Ordering::SeqCst) {
        return None;
    }
    records.list.push(rec.clone());
    Some(Slot {
        generation: records.generation,
        index: records.list.len() - 1,
    })
}

/// Fill in a kept request, unless `clear_requests` has dropped it since.
fn update(inner: &Inner, slot: Option<Slot>, f: impl FnOnce(&mut RecordedRequest)) {
    let Some(slot) = slot else { return };
    let mut records = lock(&inner.requests);
    if records.generation == slot.generation {
        if let Some(r) = records.list.get_mut(slot.index) {
            f(r);
        }
    }
}

const REQUESTS_LIMITED: &str = "Number of requests has exceeded your rate limit (mock).";
const INPUT_TOKENS_LIMITED: &str =
    "Number of input tokens has exceeded your per-minute rate limit (mock).";

/// Take a request's share of every limit in force: one request, and `estimate` input tokens
/// (returned, to be settled once the request is billed). A refused request takes nothing;
/// the error is (seconds to wait, message).
fn admit(inner: &Inner, estimate: f64) -> Result<Option<f64>, (u32, &'static str)> {
    let mut requests = lock(&inner.bucket);
    let mut input = lock(&inner.input_bucket);
    if let Some(b) = requests.as_mut() {
        b.take(1.0).map_err(|secs| (secs, REQUESTS_LIMITED))?;
    }
    let Some(b) = input.as_mut() else {
        return Ok(None);
    };
    if let Err(secs) = b.take(estimate) {
        if let Some(r) = requests.as_mut() {
            r.adjust(1.0);
        }
        return Err((secs, INPUT_TOKENS_LIMITED));
    }
    Ok(Some(estimate))
}

/// The `anthropic-ratelimit-*` headers of the limits in force, as they stand now.
fn ratelimit_headers(inner: &Inner) -> Vec<(String, String)> {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let mut out = Vec::new();
    if let Some(b) = lock(&inner.bucket).as_mut() {
        b.describe("requests", now, wall, &mut out);
    }
    if let Some(b) = lock(&inner.input_bucket).as_mut() {
        b.describe("input-tokens", now, wall, &mut out);
        // `tokens-*` is the most restrictive token limit in force; the mock has only this one.
        b.describe("tokens", now, wall, &mut out);
    }
    out
}

/// Answer one `/v1/messages` request. Returns whether the connection may be reused.
fn handle_messages(req: &Request, inner: &Inner, w: &mut TcpStream) -> io::Result<bool> {
    let _in_flight = InFlight::enter(inner);
    let arrival = inner.arrivals.fetch_add(1, Ordering::SeqCst);
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let (prompt, user_turns, tools, model, stream, tool_result, tool_error) = inspect(&body);
    let rec = RecordedRequest {
        prompt,
        user_turns,
        bytes: req.body.len(),
        tools,
        model,
        stream,
        at: Instant::now(),
        status: 0,
        tool_result,
        path: req.path.clone(),
        body,
        headers: req.headers.clone(),
        cache_read: 0,
        cache_write: 0,
        input_tokens: 0,
    };
    let slot = record(inner, &rec);
    // The cache as the request finds it on arrival.
    let found = lock(&inner.cache).look_up(&rec.body, Instant::now());
    let set_status = |code: u16| update(inner, slot, |r| r.status = code);

    // Decided on arrival, as the API does: the model, then the rate limits, then (soak tests)
    // an injected failure.
    let unknown_model = lock(&inner.known_models)
        .as_ref()
        .is_some_and(|known| !known.contains(&rec.model));
    let admitted = if unknown_model {
        Ok(None)
    } else {
        admit(inner, InputTokens::plain(req.body.len()).input as f64)
    };
    let injected = match (&admitted, *lock(&inner.faults)) {
        (Ok(_), Some(mix)) if !unknown_model => mix.draw(arrival),
        _ => None,
    };
    if injected.is_some() {
        inner.injected.fetch_add(1, Ordering::SeqCst);
    }
    let latency = *lock(&inner.latency);
    sleep_unless_shutdown(inner, latency);

    if unknown_model {
        set_status(404);
        let body = error_body("not_found_error", &format!("model: {}", rec.model));
        send_error_body(w, &ratelimit_headers(inner), 404, None, &body)?;
        return Ok(true);
    }
    let reserved = match admitted {
        Ok(reserved) => reserved,
        Err((secs, message)) => {
            inner.rate_limited.fetch_add(1, Ordering::SeqCst);
            set_status(429);
            send_error(w, &ratelimit_headers(inner), 429, Some(secs), message)?;
            return Ok(true);
        }
    };
    // Bill the request: in its record, and in the input-token limit (which took an estimate).
    let bill = |tokens: InputTokens| {
        update(inner, slot, |r| {
            r.cache_read = tokens.read;
            r.cache_write = tokens.write;
            r.input_tokens = tokens.input;
        });
        if let (Some(reserved), Some(b)) = (reserved, lock(&inner.input_bucket).as_mut()) {
            b.adjust(reserved - (tokens.input + tokens.write) as f64);
        }
    };

    if let Some(fault) = injected {
        bill(InputTokens::plain(req.body.len()));
        let head = ratelimit_headers(inner);
        set_status(match fault {
            Injected::RateLimited(_) => 429,
            Injected::Overloaded => 529,
            Injected::ServerError => 500,
            Injected::Dropped => 0,
            Injected::CutStream => 200,
        });
        let keep = match fault {
            Injected::RateLimited(secs) => {
                let message = "Rate limited (mock injected fault).";
                send_error(w, &head, 429, Some(secs), message)?;
                true
            }
            Injected::Overloaded => {
                send_error(w, &head, 529, None, "Overloaded (mock injected fault).")?;
                true
            }
            Injected::ServerError => {
                send_error(
                    w,
                    &head,
                    500,
                    None,
                    "Internal server error (mock injected fault).",
                )?;
                true
            }
            Injected::Dropped => {
                let _ = w.shutdown(Shutdown::Both);
                false
            }
            Injected::CutStream => {
                let tokens = InputTokens::plain(req.body.len());
                let cut_at = Some(echo_text(&rec.prompt));
                cut(
                    w,
                    &head,
                    stream,
                    &next_message_id(),
                    &rec.model,
                    tokens,
                    cut_at.as_deref(),
                )?;
                false
            }
        };
        return Ok(keep);
    }

    let mut reply = if tool_result && !tool_error {
        Reply::Text(AFTER_TOOL_TEXT.to_string())
    } else {
        let f = Arc::clone(&*inner.reply.read().unwrap_or_else(|e| e.into_inner()));
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&rec))) {
            Ok(r) => r,
            Err(_) => {
                set_status(500);
                let head = ratelimit_headers(inner);
                send_error(w, &head, 500, None, "mock reply function panicked")?;
                return Ok(true);
            }
        }
    };
    // The message id the reply goes out under: a fresh one unless the script names it.
    let mut id = None;
    loop {
        match reply {
            Reply::After(d, next) => {
                sleep_unless_shutdown(inner, d);
                reply = *next;
            }
            Reply::WithId(named, next) => {
                id = Some(named);
                reply = *next;
            }
            Reply::Fault(Fault::Slow(d)) => {
                sleep_unless_shutdown(inner, d);
                reply = echo(&rec.prompt);
            }
            _ => break,
        }
    }
    let id = id.unwrap_or_else(next_message_id);
    // The response begins now: what it reads from the cache, and what it writes there (readable
    // by requests that arrive from now on).
    let tokens = match &reply {
        Reply::Fault(Fault::Status { .. } | Fault::SpendLimit) => {
            InputTokens::plain(req.body.len())
        }
        _ => lock(&inner.cache).begin(found, req.body.len(), Instant::now()),
    };
    bill(tokens);
    let head = ratelimit_headers(inner);
    let head = head.as_slice();
    // The status is recorded before the response goes out: a client that has its answer
    // finds it recorded.
    set_status(match &reply {
        Reply::Fault(Fault::Status { code, .. }) => *code,
        Reply::Fault(Fault::SpendLimit) => 429,
        _ => 200,
    });
    let keep = match &reply {
        Reply::Fault(Fault::Status { code, retry_after }) => {
            send_error(w, head, *code, *retry_after, &format!("mock fault {code}"))?;
            true
        }
        Reply::Fault(Fault::SpendLimit) => {
            let body = error_body("rate_limit_error", SPEND_LIMIT_MESSAGE);
            send_error_body(w, head, 429, None, &body)?;
            true
        }
        Reply::Fault(Fault::CutStream) => {
            cut(w, head, stream, &id, &rec.model, tokens, None)?;
            false
        }
        Reply::Text(t) => {
            let block = Block::Text(t, "end_turn");
            send_message(w, head, stream, &id, &rec.model, tokens, block)?;
            true
        }
        Reply::Stop { text, stop_reason } => {
            let block = Block::Text(text, stop_reason);
            send_message(w, head, stream, &id, &rec.model, tokens, block)?;
            true
        }
        Reply::Fault(Fault::NoStop(partial, whole)) => {
            if stream {
                send_without_stop(w, head, &id, &rec.model, tokens, partial, None)?;
            } else {
                let block = Block::Text(whole, "end_turn");
                send_message(w, head, stream, &id, &rec.model, tokens, block)?;
            }
            true
        }
        Reply::Fault(Fault::EndsBeforeStop { text, stop_reason }) => {
            if stream {
                let ending = Some(stop_reason.as_deref());
                send_without_stop(w, head, &id, &rec.model, tokens, text, ending)?;
            } else {
                let block = Block::Text(text, "end_turn");
                send_message(w, head, stream, &id, &rec.model, tokens, block)?;
            }
            true
        }
        Reply::StructuredOutput(v) => {
            let name = forced_tool(&rec.body).unwrap_or(STRUCTURED_OUTPUT_TOOL);
            send_message(
                w,
                head,
                stream,
                &id,
                &rec.model,
                tokens,
                Block::Tool(name, v),
            )?;
            true
        }
        Reply::ToolUse { name, input } => {
            let block = Block::Tool(name, input);
            send_message(w, head, stream, &id, &rec.model, tokens, block)?;
            true
        }
        Reply::After(..) | Reply::WithId(..) | Reply::Fault(Fault::Slow(_)) => unreachable!(),
    };
    Ok(keep)
}

/// The tool a request's `tool_choice` forces (`{"type":"tool","name":X}`): a client that asks
/// for structured output through its own tool gets the call under that tool's name.
fn forced_tool(body: &Value) -> Option<&str> {
    let choice = body.get("tool_choice")?;
    if choice.get("type").and_then(Value::as_str) != Some("tool") {
        return None;
    }
    choice.get("name").and_then(Value::as_str)
}

fn sleep_unless_shutdown(inner: &Inner, d: Duration) {
    let end = Instant::now() + d;
    while !inner.shutdown.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

fn send_error(
    w: &mut TcpStream,
    head: &[(String, String)],
    code: u16,
    retry_after: Option<u32>,
    msg: &str,
) -> io::Result<()> {
    let mut body = error_body(error_type(code), msg);
    body["request_id"] = json!("req_mock");
    send_error_body(w, head, code, retry_after, &body)
}

fn send_error_body(
    w: &mut TcpStream,
    head: &[(String, String)],
    code: u16,
    retry_after: Option<u32>,
    body: &Value,
) -> io::Result<()> {
    let mut extra = vec![("request-id".to_string(), "req_mock".to_string())];
    extra.extend_from_slice(head);
    if let Some(s) = retry_after {
        extra.push(("retry-after".to_string(), s.to_string()));
    }
    let body = body.to_string();
    write_response(w, code, &extra, "application/json", body.as_bytes(), false)
}

enum Block<'a> {
    /// Text and its stop reason.
    Text(&'a str, &'a str),
    Tool(&'a str, &'a Value),
}

static MSG_COUNTER: AtomicU64 = AtomicU64::new(1);

/// A message id no other reply of this process had.
fn next_message_id() -> String {
    format!("msg_mock_{:06}", MSG_COUNTER.fetch_add(1, Ordering::SeqCst))
}

fn usage(tokens: InputTokens, out_chars: usize) -> Value {
    json!({
        "input_tokens": tokens.input,
        "output_tokens": (out_chars / 4).max(1),
        "cache_creation_input_tokens": tokens.write,
        "cache_read_input_tokens": tokens.read,
    })
}

fn message_start(id: &str, model: &str, tokens: InputTokens) -> Value {
    json!({
        "type": "message_start",
        "message": {
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {
                "input_tokens": tokens.input, "output_tokens": 1,
                "cache_creation_input_tokens": tokens.write,
                "cache_read_input_tokens": tokens.read,
            },
        },
    })
}

fn sse(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

fn chunk(w: &mut TcpStream, s: &str) -> io::Result<()> {
    w.write_all(format!("{:x}\r\n{s}\r\n", s.len()).as_bytes())
}

fn sse_head(w: &mut TcpStream, head: &[(String, String)]) -> io::Result<()> {
    let mut out = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
cache-control: no-cache\r\nrequest-id: req_mock\r\ntransfer-encoding: chunked\r\n",
    );
    for (k, v) in head {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    w.write_all(out.as_bytes())
}

/// Split on char boundaries into pieces of about `n` bytes.
fn pieces(s: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < s.len() {
        let mut end = (start + n).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        out.push(&s[start..end]);
        start = end;
    }
    if out.is_empty() {
        out.push("");
    }
    out
}

/// A reply's content block, its stop reason and the characters its output tokens count.
fn block_content(block: &Block) -> (Value, String, usize) {
    match block {
        Block::Text(t, stop) => (
            json!({"type": "text", "text": t}),
            stop.to_string(),
            t.chars().count(),
        ),
        Block::Tool(name, input) => {
            let tid = format!(
                "toolu_mock_{:06}",
                MSG_COUNTER.fetch_add(1, Ordering::SeqCst)
            );
            let n = input.to_string().chars().count();
            (
                json!({"type": "tool_use", "id": tid, "name": name, "input": input}),
                "tool_use".to_string(),
                n,
            )
        }
    }
}

/// The non-streaming `Message` object of a reply.
fn message_object(id: &str, model: &str, content: Value, stop: &str, usage: Value) -> Value {
    json!({
        "id": id, "type": "message", "role": "assistant", "model": model,
        "content": [content], "stop_reason": stop, "stop_sequence": null, "usage": usage,
    })
}

fn send_message(
    w: &mut TcpStream,
    head: &[(String, String)],
    stream: bool,
    id: &str,
    model: &str,
    tokens: InputTokens,
    block: Block,
) -> io::Result<()> {
    let (content, stop, out_chars) = block_content(&block);
    let stop = stop.as_str();
    let usage = usage(tokens, out_chars);
    if !stream {
        let msg = message_object(id, model, content, stop, usage);
        let mut extra = vec![("request-id".to_string(), "req_mock".to_string())];
        extra.extend_from_slice(head);
        let body = msg.to_string();
        return write_response(w, 200, &extra, "application/json", body.as_bytes(), false);
    }
    sse_head(w, head)?;
    let mut out = sse("message_start", &message_start(id, model, tokens));
    let (start_block, deltas): (Value, Vec<Value>) = match &block {
        Block::Text(t, _) => (
            json!({"type": "text", "text": ""}),
            pieces(t, 256)
                .into_iter()
                .map(|p| json!({"type": "text_delta", "text": p}))
                .collect(),
        ),
        Block::Tool(..) => {
            let mut start = content.clone();
            start["input"] = json!({});
            let input = content["input"].to_string();
            (
                start,
                pieces(&input, 256)
                    .into_iter()
                    .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                    .collect(),
            )
        }
    };
    out += &sse(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": start_block}),
    );
    for d in deltas {
        out += &sse(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": d}),
        );
    }
    out += &sse(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    );
    out += &sse(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": usage}),
    );
    out += &sse("message_stop", &json!({"type": "message_stop"}));
    chunk(w, &out)?;
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}

/// A stream with its text but no `message_stop`, ended cleanly. With `ending`, the text
/// block is closed (`content_block_stop`) and, given a stop reason, a `message_delta` says it;
/// without, the stream stops inside the block.
fn send_without_stop(
    w: &mut TcpStream,
    head: &[(String, String)],
    id: &str,
    model: &str,
    tokens: InputTokens,
    text: &str,
    ending: Option<Option<&str>>,
) -> io::Result<()> {
    sse_head(w, head)?;
    let mut out = sse("message_start", &message_start(id, model, tokens));
    out += &sse(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    out += &sse(
        "content_block_delta",
        &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
    );
    if let Some(stop_reason) = ending {
        out += &sse(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        );
        if let Some(stop_reason) = stop_reason {
            let usage = usage(tokens, text.chars().count());
            out += &sse(
                "message_delta",
                &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": usage}),
            );
        }
    }
    chunk(w, &out)?;
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}

/// Start a 200 response and close the connection partway. A stream sends `message_start`
/// and, given the answer's text, its text block's start, a delta with the first half of the
/// text and the first half of the next delta's bytes (cut inside an event and inside a
/// chunk, as a dropped connection does). A non-streaming response sends half its body.
fn cut(
    w: &mut TcpStream,
    head: &[(String, String)],
    stream: bool,
    id: &str,
    model: &str,
    tokens: InputTokens,
    text: Option<&str>,
) -> io::Result<()> {
    if stream {
        sse_head(w, head)?;
        let mut out = sse("message_start", &message_start(id, model, tokens));
        if let Some(text) = text {
            let mut halves = pieces(text, text.len().div_ceil(2).max(1)).into_iter();
            let (first, second) = (halves.next().unwrap_or(""), halves.next().unwrap_or(""));
            let delta = |t: &str| {
                sse(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": t}}),
                )
            };
            out += &sse(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
            );
            out += &delta(first);
            chunk(w, &out)?;
            let next = delta(second);
            w.write_all(format!("{:x}\r\n", next.len()).as_bytes())?;
            w.write_all(&next.as_bytes()[..next.len() / 2])?;
        } else {
            chunk(w, &out)?;
        }
    } else {
        let body = message_start(id, model, tokens)["message"].to_string();
        let half = &body.as_bytes()[..body.len() / 2];
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in head {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        w.write_all(out.as_bytes())?;
        w.write_all(half)?;
    }
    w.flush()?;
    let _ = w.shutdown(Shutdown::Both);
    Ok(())
}

// Message Batches.

/// The batch endpoints' path (`POST` creates, `GET` lists).
const BATCHES: &str = "/v1/messages/batches";
const BATCHES_SLASH: &str = "/v1/messages/batches/";

/// The most requests one batch may hold, as the API documents.
pub const BATCH_MAX_REQUESTS: usize = 100_000;

/// The largest batch-creation body, as the API documents (256 MB, read as MiB); a larger one
/// is answered 413 `request_too_large` without being read.
pub const BATCH_MAX_BYTES: usize = 256 << 20;

/// How long a batch may run: one that has not ended 24 hours after its creation expires.
pub const BATCH_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// A batch's `processing_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStatus {
    /// `in_progress`: requests are being processed.
    InProgress,
    /// `canceling`: a cancel was asked; the batch ends at its next look.
    Canceling,
    /// `ended`: every request has its result; the results can be read.
    Ended,
}

impl BatchStatus {
    /// The API's name for it (`in_progress`, `canceling`, `ended`).
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Canceling => "canceling",
            BatchStatus::Ended => "ended",
        }
    }
}

/// A batch's `request_counts`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Not processed yet.
    pub processing: usize,
    /// Answered with a message.
    pub succeeded: usize,
    /// Answered with an error.
    pub errored: usize,
    /// Ended by a cancel before they were processed.
    pub canceled: usize,
    /// Ended by expiry before they were processed.
    pub expired: usize,
}

/// The tokens the mock billed for a batch's succeeded requests, at the same counts as
/// `/v1/messages` would (the half price is the client's arithmetic): errored, canceled and
/// expired requests are not billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchUsage {
    /// Input tokens outside the prompt cache.
    pub input_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

/// What one request of a batch ends as, chosen by
/// [`MockApi::set_batch_request_outcome`] when the request is processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Answered as `/v1/messages` would answer it: the reply function and the prompt cache
    /// (the default). A [`Fault::Status`] reply makes it `errored` (see module docs).
    Answer,
    /// `errored` with this error, not billed. The API's retryable kinds are
    /// `overloaded_error` and `api_error`; `invalid_request_error` is not.
    Errored {
        /// The error's `type`, e.g. `overloaded_error`.
        error_type: String,
        /// The error's `message`.
        message: String,
    },
    /// `expired`, not billed.
    Expired,
}

impl BatchOutcome {
    /// `errored` with this error type and a message saying it is the mock's.
    pub fn errored(error_type: impl Into<String>) -> BatchOutcome {
        let error_type = error_type.into();
        let message = format!("{error_type} (mock batch outcome)");
        BatchOutcome::Errored {
            error_type,
            message,
        }
    }
}

/// One batch as the mock holds it (see [`MockApi::batches`]).
#[derive(Debug, Clone)]
pub struct BatchRecord {
    /// `msgbatch_…`.
    pub id: String,
    /// The requests' `custom_id`s, in submission order.
    pub custom_ids: Vec<String>,
    /// Its `processing_status` now.
    pub status: BatchStatus,
    /// Its `request_counts` now.
    pub counts: BatchCounts,
    /// What its succeeded requests were billed.
    pub billed: BatchUsage,
    /// When it was created.
    pub created: Instant,
    /// When a cancel was asked, if one was.
    pub cancel_initiated: Option<Instant>,
    /// When it ended, if it has.
    pub ended: Option<Instant>,
    /// Every request, in submission order, as a [`RecordedRequest`] (`body` = its `params`,
    /// `headers` those of the creating call, `path` `/v1/messages/batches`, `at` when it was processed
    /// or created, `status` 200 if it succeeded, the error's HTTP status if it errored, 0
    /// otherwise; tokens billed filled in). Empty when the batch was created with recording
    /// off ([`MockApi::set_recording`]).
    pub requests: Vec<RecordedRequest>,
}

type OutcomeFn = dyn Fn(&str, &RecordedRequest) -> BatchOutcome + Send + Sync;

/// One request's result, once it has one.
enum Answer {
    Pending,
    Succeeded(Value),
    Errored(String, String),
    Canceled,
    Expired,
}

struct BatchEntry {
    custom_id: String,
    /// The request's `params` until it is processed (then `Null`: its record keeps it).
    params: Value,
    /// Its record once processed or ended, when the batch keeps records.
    record: Option<RecordedRequest>,
    answer: Answer,
}

struct Batch {
    id: String,
    seq: u64,
    created: Instant,
    created_wall: SystemTime,
    processing_time: Duration,
    /// Keep each request's record (recording was on at creation).
    keep: bool,
    /// The creating call's headers, for the records (empty when not kept).
    headers: Vec<(String, String)>,
    entries: Vec<BatchEntry>,
    /// Requests are processed in submission order: the first not processed yet.
    next: usize,
    counts: BatchCounts,
    billed: BatchUsage,
    cancel_initiated: Option<Instant>,
    ended: Option<Instant>,
}

/// A request's record as [`inspect`] reads it, and whether its tool_result is an error.
fn batch_recorded(
    body: Value,
    headers: &[(String, String)],
    at: Instant,
) -> (RecordedRequest, bool) {
    let (prompt, user_turns, tools, model, stream, tool_result, tool_error) = inspect(&body);
    let rec = RecordedRequest {
        prompt,
        user_turns,
        bytes: body.to_string().len(),
        tools,
        model,
        stream,
        at,
        status: 0,
        tool_result,
        path: BATCHES.to_string(),
        body,
        headers: headers.to_vec(),
        cache_read: 0,
        cache_write: 0,
        input_tokens: 0,
    };
    (rec, tool_error)
}

/// The HTTP status that goes with an error type (the inverse of [`error_type`]).
fn status_of(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// Answer one request of a batch the way `/v1/messages` would, without its timing
/// (`Reply::After` and `Fault::Slow` do not wait: a batch's pace is its processing time).
/// Returns its answer and, if it succeeded, what it is billed (input tokens, output tokens).
fn answer_batch_request(
    inner: &Inner,
    custom_id: &str,
    rec: &RecordedRequest,
    tool_error: bool,
    now: Instant,
) -> (Answer, Option<(InputTokens, usize)>) {
    let errored = |kind: &str, message: String| (Answer::Errored(kind.into(), message), None);
    let unknown_model = lock(&inner.known_models)
        .as_ref()
        .is_some_and(|known| !known.contains(&rec.model));
    if unknown_model {
        return errored("not_found_error", format!("model: {}", rec.model));
    }
    let outcome = Arc::clone(
        &*inner
            .batch_outcome
            .read()
            .unwrap_or_else(|e| e.into_inner()),
    );
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| outcome(custom_id, rec)));
    match outcome {
        Ok(BatchOutcome::Answer) => {}
        Ok(BatchOutcome::Errored {
            error_type,
            message,
        }) => return errored(&error_type, message),
        Ok(BatchOutcome::Expired) => return (Answer::Expired, None),
        Err(_) => return errored("api_error", "mock batch outcome function panicked".into()),
    }
    let mut reply = if rec.tool_result && !tool_error {
        Reply::Text(AFTER_TOOL_TEXT.to_string())
    } else {
        let f = Arc::clone(&*inner.reply.read().unwrap_or_else(|e| e.into_inner()));
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(rec))) {
            Ok(r) => r,
            Err(_) => return errored("api_error", "mock reply function panicked".into()),
        }
    };
    let mut id = None;
    loop {
        match reply {
            Reply::After(_, next) => reply = *next,
            Reply::WithId(named, next) => {
                id = Some(named);
                reply = *next;
            }
            Reply::Fault(Fault::Slow(_)) => reply = echo(&rec.prompt),
            _ => break,
        }
    }
    let block = match &reply {
        Reply::Fault(Fault::Status { code, .. }) => {
            return errored(error_type(*code), format!("mock fault {code}"))
        }
        Reply::Fault(Fault::SpendLimit) => {
            return errored("rate_limit_error", SPEND_LIMIT_MESSAGE.into())
        }
        Reply::Fault(Fault::CutStream) => {
            return errored("api_error", "mock fault: the answer was cut".into())
        }
        Reply::Text(t) => Block::Text(t, "end_turn"),
        Reply::Stop { text, stop_reason } => Block::Text(text, stop_reason),
        Reply::Fault(Fault::NoStop(_, text) | Fault::EndsBeforeStop { text, .. }) => {
            Block::Text(text, "end_turn")
        }
        Reply::StructuredOutput(v) => {
            Block::Tool(forced_tool(&rec.body).unwrap_or(STRUCTURED_OUTPUT_TOOL), v)
        }
        Reply::ToolUse { name, input } => Block::Tool(name, input),
        Reply::After(..) | Reply::WithId(..) | Reply::Fault(Fault::Slow(_)) => unreachable!(),
    };
    let tokens = {
        let mut cache = lock(&inner.cache);
        let found = cache.look_up(&rec.body, now);
        cache.begin(found, rec.bytes, now)
    };
    let (content, stop, out_chars) = block_content(&block);
    let usage = usage(tokens, out_chars);
    let output = (out_chars / 4).max(1);
    let id = id.unwrap_or_else(next_message_id);
    let message = message_object(&id, &rec.model, content, &stop, usage);
    (Answer::Succeeded(message), Some((tokens, output)))
}

impl Batch {
    fn status(&self) -> BatchStatus {
        if self.ended.is_some() {
            BatchStatus::Ended
        } else if self.cancel_initiated.is_some() {
            BatchStatus::Canceling
        } else {
            BatchStatus::InProgress
        }
    }

    /// The wall-clock time of an instant of this batch's life.
    fn wall(&self, at: Instant) -> SystemTime {
        self.created_wall + at.saturating_duration_since(self.created)
    }

    /// Bring the batch up to `now`: a cancel asked since the last look ends it; otherwise the
    /// requests due by now (spread evenly over the processing time) are processed, and it
    /// ends when all are, or expires at [`BATCH_EXPIRY`].
    fn advance(&mut self, inner: &Inner, now: Instant) {
        if self.ended.is_some() {
            return;
        }
        if self.cancel_initiated.is_some() {
            self.finish(|| Answer::Canceled, now);
            return;
        }
        let n = self.entries.len();
        let horizon = now
            .saturating_duration_since(self.created)
            .min(BATCH_EXPIRY);
        let due = if horizon >= self.processing_time {
            n
        } else {
            (n as u128 * horizon.as_nanos() / self.processing_time.as_nanos()) as usize
        };
        while self.next < due {
            self.process_next(inner, now);
        }
        if self.next == n {
            self.ended = Some((self.created + self.processing_time).min(now));
        } else if horizon >= BATCH_EXPIRY {
            self.finish(|| Answer::Expired, self.created + BATCH_EXPIRY);
        }
    }

    fn process_next(&mut self, inner: &Inner, now: Instant) {
        let keep = self.keep;
        let entry = &mut self.entries[self.next];
        self.next += 1;
        let (mut rec, tool_error) =
            batch_recorded(std::mem::take(&mut entry.params), &self.headers, now);
        let (answer, billed) = answer_batch_request(inner, &entry.custom_id, &rec, tool_error, now);
        self.counts.processing -= 1;
        match &answer {
            Answer::Succeeded(_) => {
                self.counts.succeeded += 1;
                rec.status = 200;
            }
            Answer::Errored(kind, _) => {
                self.counts.errored += 1;
                rec.status = status_of(kind);
            }
            _ => self.counts.expired += 1,
        }
        if let Some((tokens, output)) = billed {
            rec.input_tokens = tokens.input;
            rec.cache_write = tokens.write;
            rec.cache_read = tokens.read;
            self.billed.input_tokens += tokens.input as u64;
            self.billed.cache_write += tokens.write as u64;
            self.billed.cache_read += tokens.read as u64;
            self.billed.output_tokens += output as u64;
        }
        entry.answer = answer;
        if keep {
            entry.record = Some(rec);
        }
    }

    /// End the batch at `at`: every request not processed yet gets `answer` (canceled or
    /// expired).
    fn finish(&mut self, answer: impl Fn() -> Answer, at: Instant) {
        for entry in &mut self.entries[self.next..] {
            entry.answer = answer();
            let params = std::mem::take(&mut entry.params);
            if self.keep {
                entry.record = Some(batch_recorded(params, &self.headers, at).0);
            }
            match entry.answer {
                Answer::Canceled => self.counts.canceled += 1,
                _ => self.counts.expired += 1,
            }
        }
        self.counts.processing = 0;
        self.next = self.entries.len();
        self.ended = Some(at);
    }

    /// The API's batch object.
    fn json(&self, base: &str) -> Value {
        let at = |t: Option<Instant>| t.map(|t| rfc3339(self.wall(t)));
        let ended = self.ended.is_some();
        let c = self.counts;
        json!({
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status().as_str(),
            "request_counts": {
                "processing": c.processing, "succeeded": c.succeeded, "errored": c.errored,
                "canceled": c.canceled, "expired": c.expired,
            },
            "ended_at": at(self.ended),
            "created_at": rfc3339(self.created_wall),
            "expires_at": rfc3339(self.created_wall + BATCH_EXPIRY),
            "archived_at": null,
            "cancel_initiated_at": at(self.cancel_initiated),
            "results_url": ended.then(|| format!("{base}{BATCHES}/{}/results", self.id)),
        })
    }

    /// The results as JSON lines, in an order that is not the submission order (the same for
    /// the same batch every time).
    fn results(&self) -> String {
        let n = self.entries.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|i| splitmix64(self.seq ^ splitmix64(*i as u64)));
        if n > 1 && order.iter().enumerate().all(|(k, i)| k == *i) {
            order.rotate_left(1);
        }
        let mut out = String::new();
        for i in order {
            let entry = &self.entries[i];
            let result = match &entry.answer {
                Answer::Succeeded(message) => json!({"type": "succeeded", "message": message}),
                Answer::Errored(kind, message) => json!({"type": "errored",
                    "error": {"type": "error", "error": {"type": kind, "message": message}}}),
                Answer::Canceled => json!({"type": "canceled"}),
                Answer::Expired => json!({"type": "expired"}),
                Answer::Pending => unreachable!("results are read once the batch has ended"),
            };
            out += &json!({"custom_id": entry.custom_id, "result": result}).to_string();
            out.push('\n');
        }
        out
    }

    fn record(&self) -> BatchRecord {
        let requests = if self.keep {
            self.entries
                .iter()
                .map(|e| match &e.record {
                    Some(r) => r.clone(),
                    None => batch_recorded(e.params.clone(), &self.headers, self.created).0,
                })
                .collect()
        } else {
            Vec::new()
        };
        BatchRecord {
            id: self.id.clone(),
            custom_ids: self.entries.iter().map(|e| e.custom_id.clone()).collect(),
            status: self.status(),
            counts: self.counts,
            billed: self.billed,
            created: self.created,
            cancel_initiated: self.cancel_initiated,
            ended: self.ended,
            requests,
        }
    }
}

/// An error answer of a batch endpoint: status, error type, message.
type BatchError = (u16, &'static str, String);

fn invalid(message: String) -> BatchError {
    (400, "invalid_request_error", message)
}

fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Bring every batch up to `now`; returns them, oldest first.
fn advance_batches(inner: &Inner, now: Instant) -> Vec<Arc<Mutex<Batch>>> {
    let all = lock(&inner.batches).clone();
    for b in &all {
        lock(b).advance(inner, now);
    }
    all
}

fn find_batch(all: &[Arc<Mutex<Batch>>], id: &str) -> Result<Arc<Mutex<Batch>>, BatchError> {
    all.iter()
        .find(|b| lock(b).id == id)
        .cloned()
        .ok_or_else(|| {
            (
                404,
                "not_found_error",
                format!("message batch {id} not found"),
            )
        })
}

/// `POST /v1/messages/batches`: validate the whole batch, then create it.
fn create_batch(inner: &Inner, req: &Request, now: Instant) -> Result<Value, BatchError> {
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    let Some(Value::Array(requests)) = body.get("requests") else {
        return Err(invalid("requests: an array of requests is required".into()));
    };
    if requests.is_empty() {
        return Err(invalid(
            "requests: a batch needs at least one request".into(),
        ));
    }
    if requests.len() > BATCH_MAX_REQUESTS {
        return Err(invalid(format!(
            "requests: a batch holds at most {BATCH_MAX_REQUESTS} requests, this one has {}",
            requests.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, r) in requests.iter().enumerate() {
        let Some(id) = r.get("custom_id").and_then(Value::as_str) else {
            return Err(invalid(format!(
                "requests.{i}.custom_id: a string is required"
            )));
        };
        if !valid_custom_id(id) {
            return Err(invalid(format!(
                "requests.{i}.custom_id: {id:?} does not match ^[a-zA-Z0-9_-]{{1,64}}$"
            )));
        }
        if !seen.insert(id) {
            return Err(invalid(format!(
                "requests.{i}.custom_id: {id:?} is used by more than one request of the batch"
            )));
        }
        let Some(params) = r.get("params").filter(|p| p.is_object()) else {
            return Err(invalid(format!(
                "requests.{i}.params: an object is required ({id:?})"
            )));
        };
        if params.get("stream").and_then(Value::as_bool) == Some(true) {
            return Err(invalid(format!(
                "requests.{i}.params.stream: a batch request cannot stream ({id:?})"
            )));
        }
    }
    let Value::Object(mut body) = body else {
        unreachable!("a body with requests is an object")
    };
    let Some(Value::Array(requests)) = body.remove("requests") else {
        unreachable!("checked above")
    };
    let entries: Vec<BatchEntry> = requests
        .into_iter()
        .map(|mut r| BatchEntry {
            custom_id: r["custom_id"].as_str().unwrap_or_default().to_string(),
            params: r["params"].take(),
            record: None,
            answer: Answer::Pending,
        })
        .collect();
    let keep = inner.recording.load(Ordering::SeqCst);
    let seq = inner.batch_seq.fetch_add(1, Ordering::SeqCst);
    let batch = Batch {
        id: format!("msgbatch_mock_{seq:06}"),
        seq,
        created: now,
        created_wall: SystemTime::now(),
        processing_time: *lock(&inner.batch_processing_time),
        keep,
        headers: if keep {
            req.headers.clone()
        } else {
            Vec::new()
        },
        counts: BatchCounts {
            processing: entries.len(),
            ..BatchCounts::default()
        },
        entries,
        next: 0,
        billed: BatchUsage::default(),
        cancel_initiated: None,
        ended: None,
    };
    let answer = batch.json(&format!("http://{}", inner.addr));
    lock(&inner.batches).push(Arc::new(Mutex::new(batch)));
    Ok(answer)
}

/// `GET /v1/messages/batches`: newest first, `limit` (1 to 1,000, default 20) from the
/// `after_id` or `before_id` cursor.
fn list_batches(inner: &Inner, all: &[Arc<Mutex<Batch>>], query: &str) -> Value {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let limit = param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 1000);
    let newest_first: Vec<&Arc<Mutex<Batch>>> = all.iter().rev().collect();
    let position = |id: &str| newest_first.iter().position(|b| lock(b).id == id);
    let (page, has_more) = if let Some(before) = param("before_id") {
        let end = position(&before).unwrap_or(0);
        let start = end.saturating_sub(limit);
        (&newest_first[start..end], start > 0)
    } else {
        let start = match param("after_id") {
            Some(after) => position(&after).map_or(newest_first.len(), |p| p + 1),
            None => 0,
        };
        let end = (start + limit).min(newest_first.len());
        (&newest_first[start..end], end < newest_first.len())
    };
    let base = format!("http://{}", inner.addr);
    let data: Vec<Value> = page.iter().map(|b| lock(b).json(&base)).collect();
    let id_of = |v: Option<&Value>| v.map_or(Value::Null, |v| v["id"].clone());
    json!({
        "data": data,
        "has_more": has_more,
        "first_id": id_of(data.first()),
        "last_id": id_of(data.last()),
    })
}

/// Answer one call to a batch endpoint. Returns whether the connection may be reused.
fn handle_batches(req: &Request, inner: &Inner, w: &mut TcpStream) -> io::Result<bool> {
    inner.batch_calls.fetch_add(1, Ordering::SeqCst);
    let (route, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let rest = route.strip_prefix(BATCHES).unwrap_or("");
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let method = req.method.to_ascii_uppercase();
    let now = Instant::now();
    let base = format!("http://{}", inner.addr);
    let injected = match *lock(&inner.batch_faults) {
        Some(mix) if !req.too_large => {
            mix.draw(inner.batch_arrivals.fetch_add(1, Ordering::SeqCst))
        }
        _ => None,
    };
    if injected.is_some() {
        inner.injected.fetch_add(1, Ordering::SeqCst);
    }
    let refused = match injected {
        Some(Injected::RateLimited(secs)) => Some((429, Some(secs), "Rate limited")),
        Some(Injected::Overloaded) => Some((529, None, "Overloaded")),
        Some(Injected::ServerError) => Some((500, None, "Internal server error")),
        Some(Injected::Dropped) => {
            let _ = w.shutdown(Shutdown::Both);
            return Ok(false);
        }
        Some(Injected::CutStream) | None => None,
    };
    if let Some((code, retry_after, what)) = refused {
        sleep_unless_shutdown(inner, *lock(&inner.latency));
        let message = format!("{what} (mock injected fault).");
        send_error(w, &ratelimit_headers(inner), code, retry_after, &message)?;
        return Ok(true);
    }
    let answer: Result<(&str, String), BatchError> = if req.too_large {
        Err((
            413,
            "request_too_large",
            format!("a batch is at most {BATCH_MAX_BYTES} bytes"),
        ))
    } else {
        let all = advance_batches(inner, now);
        let json = |v: Value| ("application/json", v.to_string());
        match (method.as_str(), parts.as_slice()) {
            ("POST", []) => create_batch(inner, req, now).map(json),
            ("GET", []) => Ok(json(list_batches(inner, &all, query))),
            ("GET", [id]) => find_batch(&all, id).map(|b| json(lock(&b).json(&base))),
            ("POST", [id, "cancel"]) => find_batch(&all, id).map(|b| {
                let mut b = lock(&b);
                if b.status() == BatchStatus::InProgress {
                    b.cancel_initiated = Some(now);
                }
                json(b.json(&base))
            }),
            ("GET", [id, "results"]) => find_batch(&all, id).and_then(|b| {
                let b = lock(&b);
                if b.ended.is_none() {
                    return Err((
                        404,
                        "not_found_error",
                        format!("message batch {id} has not ended: no results yet"),
                    ));
                }
                Ok(("application/x-jsonl", b.results()))
            }),
            _ => Err((404, "not_found_error", format!("no route {method} {route}"))),
        }
    };
    sleep_unless_shutdown(inner, *lock(&inner.latency));
    let head = ratelimit_headers(inner);
    if injected == Some(Injected::CutStream) {
        let (code, body) = match answer {
            Ok((_, body)) => (200, body),
            Err((code, kind, message)) => (code, error_body(kind, &message).to_string()),
        };
        let mut out = format!(
            "HTTP/1.1 {code} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            reason(code),
            body.len()
        );
        for (k, v) in &head {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        // Bytes, not chars: the cut may fall inside a character, as on the wire.
        let mut out = out.into_bytes();
        out.extend_from_slice(&body.as_bytes()[..body.len() / 2]);
        w.write_all(&out)?;
        w.flush()?;
        let _ = w.shutdown(Shutdown::Both);
        return Ok(false);
    }
    match answer {
        Ok((ctype, body)) => {
            let mut extra = vec![("request-id".to_string(), "req_mock".to_string())];
            extra.extend(head);
            write_response(w, 200, &extra, ctype, body.as_bytes(), false)?;
            Ok(true)
        }
        Err((code, kind, message)) => {
            send_error_body(w, &head, code, None, &error_body(kind, &message))?;
            // An unread body leaves the connection unusable.
            Ok(!req.too_large)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One response as a plain HTTP/1.1 client reads it.
    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Response {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("a JSON body")
        }

        /// The SSE events of a streamed body: (event name, data).
        fn events(&self) -> Vec<(String, Value)> {
            String::from_utf8_lossy(&self.body)
                .split("\n\n")
                .filter(|e| !e.trim().is_empty())
                .map(|e| {
                    let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
                    let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                    (name.to_string(), serde_json::from_str(data).unwrap())
                })
                .collect()
        }
    }

    /// A keep-alive client on one connection, the way a blocking HTTP client uses it.
    struct Client {
        r: BufReader<TcpStream>,
        w: TcpStream,
    }

    impl Client {
        fn connect(api: &MockApi) -> Client {
            let w = TcpStream::connect(api.addr()).unwrap();
            Client {
                r: BufReader::new(w.try_clone().unwrap()),
                w,
            }
        }

        fn send(&mut self, headers: &[(&str, &str)], body: &Value) {
            let body = body.to_string();
            let mut head = format!(
                "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-length: {}\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            // One write: head and body in two would wait on Nagle and delayed ACKs (40 ms).
            head.push_str(&body);
            self.w.write_all(head.as_bytes()).unwrap();
        }

        /// The next response; an error if the connection closes before it is whole.
        fn response(&mut self) -> io::Result<Response> {
            let status_line = read_line(&mut self.r)?.ok_or_else(|| bad("closed"))?;
            let status = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| bad("status line"))?;
            let mut headers = Vec::new();
            loop {
                let l = read_line(&mut self.r)?.ok_or_else(|| bad("eof in headers"))?;
                if l.is_empty() {
                    break;
                }
                let (k, v) = l.split_once(':').unwrap();
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            let mut resp = Response {
                status,
                headers,
                body: Vec::new(),
            };
            if resp.header("transfer-encoding") == Some("chunked") {
                loop {
                    let l = read_line(&mut self.r)?.ok_or_else(|| bad("eof in chunk"))?;
                    let size = usize::from_str_radix(l.trim(), 16).map_err(|_| bad("size"))?;
                    let start = resp.body.len();
                    resp.body.resize(start + size, 0);
                    self.r.read_exact(&mut resp.body[start..])?;
                    read_line(&mut self.r)?;
                    if size == 0 {
                        break;
                    }
                }
            } else {
                let len: usize = resp.header("content-length").unwrap().parse().unwrap();
                resp.body.resize(len, 0);
                self.r.read_exact(&mut resp.body)?;
            }
            Ok(resp)
        }

        /// Everything the server sends until it closes the connection.
        fn rest(&mut self) -> Vec<u8> {
            let mut out = Vec::new();
            let _ = self.r.read_to_end(&mut out);
            out
        }

        fn call(&mut self, body: &Value) -> Response {
            self.send(&[], body);
            self.response().unwrap()
        }
    }

    /// A request body the way the HTTP backend sends it, `stream` as given.
    fn body(prompt: &str, stream: bool) -> Value {
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "stream": stream,
            "system": [{"type": "text", "text": "You sort support tickets by urgency."}],
            "messages": [{"role": "user", "content": prompt}],
        })
    }

    /// A ticket of the length a user's item has.
    fn ticket(n: usize) -> String {
        format!(
            "Ticket {n}: since this morning's update the invoice export stops at about eighty \
percent and the browser shows a spinner that never ends; we have a board meeting tomorrow \
and need last quarter's invoices as a spreadsheet, please advise what we can do meanwhile."
        )
    }

    #[test]
    fn records_headers_lower_cased_in_order_and_redacts_the_key_in_debug() {
        let api = MockApi::start();
        let mut c = Client::connect(&api);
        c.send(
            &[
                ("X-Api-Key", "sk-ant-test-secret"),
                ("Anthropic-Version", "2023-06-01"),
                ("Content-Type", "application/json"),
            ],
            &body(&ticket(1), false),
        );
        assert_eq!(c.response().unwrap().status, 200);
        let rec = api.last_request().unwrap();
        let names: Vec<&str> = rec.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "host",
                "content-length",
                "x-api-key",
                "anthropic-version",
                "content-type"
            ]
        );
        assert!(rec
            .headers
            .contains(&("x-api-key".into(), "sk-ant-test-secret".into())));
        assert!(rec
            .headers
            .contains(&("anthropic-version".into(), "2023-06-01".into())));
        let debug = format!("{rec:?}");
        assert!(!debug.contains("sk-ant-test-secret"), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
    }

    #[test]
    fn one_keep_alive_connection_serves_300_requests_streaming_and_not() {
        let api = MockApi::start();
        let mut c = Client::connect(&api);
        for i in 0..300 {
            let stream = i % 2 == 0;
            let prompt = ticket(i);
            let resp = c.call(&body(&prompt, stream));
            assert_eq!(resp.status, 200, "request {i}");
            let text = if stream {
                let events = resp.events();
                assert_eq!(events.last().unwrap().0, "message_stop", "request {i}");
                events
                    .iter()
                    .filter_map(|(_, d)| d["delta"]["text"].as_str())
                    .collect::<String>()
            } else {
                resp.json()["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            };
            assert_eq!(text, format!("echo: {prompt}"), "request {i}");
        }
        assert_eq!(api.request_count(), 300);
    }

    #[test]
    fn a_forced_tool_gets_the_structured_output_under_its_own_name() {
        let api = MockApi::start();
        api.set_reply(|_| Reply::StructuredOutput(json!({"urgency": "high"})));
        let mut c = Client::connect(&api);
        let mut forced = body(&ticket(2), true);
        forced["tools"] = json!([{"name": "record_answer", "description": "Record the answer.",
            "input_schema": {"type": "object", "properties": {"urgency": {"type": "string"}}}}]);
        forced["tool_choice"] = json!({"type": "tool", "name": "record_answer"});
        let events = c.call(&forced).events();
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let block = &events[1].1["content_block"];
        assert_eq!(block["type"], "tool_use");
        assert_eq!(block["name"], "record_answer");
        assert_eq!(block["input"], json!({}));
        assert_eq!(events[2].1["delta"]["type"], "input_json_delta");
        let partial = events[2].1["delta"]["partial_json"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(partial).unwrap(),
            json!({"urgency": "high"})
        );
        assert_eq!(events[4].1["delta"]["stop_reason"], "tool_use");

        // Without a forced tool, the CLI's tool name as before.
        let mut cli_like = body(&ticket(3), false);
        cli_like["tools"] = json!([{"name": STRUCTURED_OUTPUT_TOOL, "input_schema": {}}]);
        let msg = c.call(&cli_like).json();
        assert_eq!(msg["content"][0]["name"], STRUCTURED_OUTPUT_TOOL);
    }

    #[test]
    fn a_cached_system_block_is_written_once_then_read() {
        let api = MockApi::start();
        api.set_cache_min_tokens(1024);
        let rules = "Urgency is HIGH when customers cannot work, MEDIUM when a workaround \
exists, LOW otherwise; answer with the level and one sentence of reasons. "
            .repeat(40);
        assert!((5_500..7_000).contains(&rules.len()), "{}", rules.len());
        let request = |n: usize| {
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "stream": true,
                "system": [
                    {"type": "text", "text": "You sort support tickets."},
                    {"type": "text", "text": rules, "cache_control": {"type": "ephemeral"}},
                ],
                "messages": [{"role": "user", "content": [{"type": "text", "text": ticket(n)}]}],
            })
        };
        let mut c = Client::connect(&api);
        let first = c.call(&request(1)).events();
        let second = c.call(&request(2)).events();
        let usage = |events: &[(String, Value)]| events[0].1["message"]["usage"].clone();
        let (first, second) = (usage(&first), usage(&second));
        let write = first["cache_creation_input_tokens"].as_u64().unwrap();
        assert!(write >= 1024, "{first}");
        assert_eq!(first["cache_read_input_tokens"], 0, "{first}");
        assert_eq!(second["cache_read_input_tokens"], write, "{second}");
        assert_eq!(second["cache_creation_input_tokens"], 0, "{second}");
        let recs = api.requests();
        assert_eq!(
            (recs[0].cache_write as u64, recs[1].cache_read as u64),
            (write, write)
        );
    }

    /// A request's whole raw response on its own connection (`connection: close`), read until
    /// the server closes it: what a client sees of a dropped or cut response too.
    fn raw_call(api: &MockApi, body: &Value) -> Vec<u8> {
        let mut c = Client::connect(api);
        c.send(&[("connection", "close")], body);
        c.rest()
    }

    fn header_of<'a>(resp: &'a Response, name: &str) -> &'a str {
        resp.header(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", resp.headers))
    }

    fn number(resp: &Response, name: &str) -> i64 {
        header_of(resp, name).parse().unwrap()
    }

    /// `YYYY-MM-DDTHH:MM:SSZ`, digits where digits go.
    fn is_rfc3339_utc(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 20
            && b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b'T',
                13 | 16 => *c == b':',
                19 => *c == b'Z',
                _ => c.is_ascii_digit(),
            })
    }

    #[test]
    fn rfc3339_dates_round_up_to_the_second() {
        let at = |secs: u64, nanos: u32| rfc3339(UNIX_EPOCH + Duration::new(secs, nanos));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(at(0, 1), "1970-01-01T00:00:01Z");
        assert_eq!(at(1_000_000_000, 0), "2001-09-09T01:46:40Z");
        assert_eq!(at(1_709_164_800, 0), "2024-02-29T00:00:00Z");
        assert_eq!(at(4_102_444_799, 500), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn the_requests_limit_shows_in_headers_on_200s_and_429s() {
        let api = MockApi::start();
        let mut c = Client::connect(&api);
        let plain = c.call(&body(&ticket(0), false));
        assert!(plain.header("anthropic-ratelimit-requests-limit").is_none());

        api.set_rate_limit(Some(3));
        for left in [2, 1, 0] {
            let resp = c.call(&body(&ticket(left as usize), left % 2 == 0));
            assert_eq!(resp.status, 200);
            assert_eq!(number(&resp, "anthropic-ratelimit-requests-limit"), 3);
            assert_eq!(
                number(&resp, "anthropic-ratelimit-requests-remaining"),
                left
            );
            let reset = header_of(&resp, "anthropic-ratelimit-requests-reset");
            assert!(is_rfc3339_utc(reset), "{reset}");
            assert!(resp.header("anthropic-ratelimit-tokens-limit").is_none());
        }
        let refused = c.call(&body(&ticket(9), true));
        assert_eq!(refused.status, 429);
        assert_eq!(refused.json()["error"]["type"], "rate_limit_error");
        assert!(number(&refused, "retry-after") >= 1);
        assert_eq!(
            number(&refused, "anthropic-ratelimit-requests-remaining"),
            0
        );
        assert_eq!(number(&refused, "anthropic-ratelimit-requests-limit"), 3);
        // Full again in about a minute (3 taken at 3 a minute).
        let reset = header_of(&refused, "anthropic-ratelimit-requests-reset");
        assert!(reset > rfc3339(SystemTime::now()).as_str(), "{reset}");
        assert_eq!(api.rate_limited(), 1);
        assert_eq!(api.requests()[4].status, 429);
    }

    #[test]
    fn the_input_token_limit_counts_uncached_input_and_cache_writes_not_reads() {
        let api = MockApi::start();
        api.set_cache_min_tokens(1024);
        api.set_input_token_limit(Some(4_000));
        let rules = "Urgency is HIGH when customers cannot work, MEDIUM when a workaround \
exists, LOW otherwise; answer with the level and one sentence of reasons. "
            .repeat(40);
        let cached = |n: usize| {
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "system": [{"type": "text", "text": rules, "cache_control": {"type": "ephemeral"}}],
                "messages": [{"role": "user", "content": ticket(n)}],
            })
        };
        let mut c = Client::connect(&api);
        let first = c.call(&cached(1));
        let second = c.call(&cached(2));
        assert_eq!((first.status, second.status), (200, 200));
        let recs = api.requests();
        assert!(recs[0].cache_write >= 1024 && recs[1].cache_read >= 1024);
        for resp in [&first, &second] {
            assert_eq!(
                number(resp, "anthropic-ratelimit-input-tokens-limit"),
                4_000
            );
            for field in ["limit", "remaining", "reset"] {
                assert_eq!(
                    header_of(resp, &format!("anthropic-ratelimit-tokens-{field}")),
                    header_of(resp, &format!("anthropic-ratelimit-input-tokens-{field}")),
                );
            }
            let reset = header_of(resp, "anthropic-ratelimit-input-tokens-reset");
            assert!(is_rfc3339_utc(reset), "{reset}");
        }
        let left = |resp: &Response| number(resp, "anthropic-ratelimit-input-tokens-remaining");
        // The first paid its input and its cache write; the second only its input (the
        // bucket refills at ~67 tokens/s, far less than the ~1,500 a counted read would take).
        let first_cost = (recs[0].input_tokens + recs[0].cache_write) as i64;
        assert!(left(&first) <= 4_000 - first_cost + 100, "{}", left(&first));
        let read = recs[1].cache_read as i64;
        assert!(
            left(&second) > left(&first) - read,
            "{} {}",
            left(&second),
            left(&first)
        );
        assert!(left(&second) <= left(&first) - recs[1].input_tokens as i64 + 100);

        // Uncached and larger than what is left: refused until the bucket has refilled.
        let big = body(&ticket(3).repeat(45), false);
        let refused = c.call(&big);
        assert_eq!(refused.status, 429, "{}", left(&second));
        assert_eq!(refused.json()["error"]["type"], "rate_limit_error");
        assert!(number(&refused, "retry-after") >= 1);
        assert!(refused
            .header("anthropic-ratelimit-input-tokens-remaining")
            .is_some());
        // Larger than the limit itself: it never fits.
        let huge = c.call(&body(&ticket(4).repeat(80), false));
        assert_eq!((huge.status, number(&huge, "retry-after")), (429, 60));
        assert_eq!(api.rate_limited(), 2);
    }

    #[test]
    fn latency_holds_the_first_byte_after_the_request_is_recorded() {
        let api = MockApi::start();
        let latency = Duration::from_millis(300);
        api.set_latency(latency);
        let mut c = Client::connect(&api);
        for stream in [true, false] {
            c.send(&[], &body(&ticket(5), stream));
            // Wait for the first byte without consuming it.
            assert!(!c.r.fill_buf().unwrap().is_empty());
            let first_byte = Instant::now();
            // A lower bound only: the mock sleeps at least that long once it has the request.
            let recorded = api.last_request().unwrap().at;
            assert!(
                first_byte - recorded >= latency,
                "{:?}",
                first_byte - recorded
            );
            assert_eq!(c.response().unwrap().status, 200);
        }
        api.set_latency(Duration::ZERO);
        assert_eq!(c.call(&body(&ticket(6), true)).status, 200);
    }

    /// What a client saw of one raw response.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Seen {
        Ok,
        Status(u16),
        Dropped,
        Cut,
    }

    fn seen(raw: &[u8]) -> Seen {
        let text = String::from_utf8_lossy(raw);
        if raw.is_empty() {
            return Seen::Dropped;
        }
        let code: u16 = text[9..12].parse().unwrap();
        match code {
            200 if text.contains("event: message_stop") => Seen::Ok,
            200 => Seen::Cut,
            c => Seen::Status(c),
        }
    }

    #[test]
    fn injected_faults_are_deterministic_evenly_mixed_and_skip_the_reply() {
        let api = MockApi::start();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        api.set_reply_with(move |r| {
            counted.fetch_add(1, Ordering::SeqCst);
            echo(&r.prompt)
        });
        let mix = FaultMix {
            rate: 0.5,
            seed: 42,
            retry_after_secs: 7,
        };
        let run = || -> Vec<Seen> {
            api.set_faults(Some(mix));
            (0..200)
                .map(|i| {
                    let raw = raw_call(&api, &body(&ticket(i), true));
                    let text = String::from_utf8_lossy(&raw);
                    let got = seen(&raw);
                    match got {
                        Seen::Status(429) => assert!(text.contains("retry-after: 7\r\n")),
                        Seen::Status(529) => assert!(text.contains("overloaded_error")),
                        Seen::Status(500) => assert!(text.contains("\"api_error\"")),
                        Seen::Cut => {
                            assert!(text.contains("event: message_start"));
                            assert!(text.contains("\"text_delta\""));
                            assert!(!text.contains("message_delta"));
                            assert!(!text.ends_with("0\r\n\r\n"));
                        }
                        Seen::Ok | Seen::Dropped => {}
                        other => panic!("unexpected {other:?}"),
                    }
                    got
                })
                .collect()
        };
        let first = run();
        let faulted = first.iter().filter(|s| **s != Seen::Ok).count();
        assert!((60..140).contains(&faulted), "{faulted} of 200");
        assert_eq!(api.injected_faults(), faulted);
        assert_eq!(calls.load(Ordering::SeqCst), 200 - faulted);
        for kind in [
            Seen::Status(429),
            Seen::Status(529),
            Seen::Status(500),
            Seen::Dropped,
            Seen::Cut,
        ] {
            let n = first.iter().filter(|s| **s == kind).count();
            assert!(n >= 5, "{kind:?}: {n} of {faulted}");
        }
        let statuses: Vec<u16> = api.requests().iter().map(|r| r.status).collect();
        let expected: Vec<u16> = first
            .iter()
            .map(|s| match s {
                Seen::Ok | Seen::Cut => 200,
                Seen::Status(c) => *c,
                Seen::Dropped => 0,
            })
            .collect();
        assert_eq!(statuses, expected);
        // The same seed and arrival order again: the same faults.
        assert_eq!(run(), first);
        assert_eq!(
            api.rate_limited(),
            0,
            "injected 429s are not the rate limiter's"
        );

        api.set_faults(None);
        assert_eq!(seen(&raw_call(&api, &body(&ticket(1), true))), Seen::Ok);
    }

    #[test]
    fn spend_limit_is_a_429_without_retry_after() {
        let api = MockApi::start();
        api.set_reply(|_| Reply::Fault(Fault::SpendLimit));
        let mut c = Client::connect(&api);
        let resp = c.call(&body(&ticket(6), true));
        assert_eq!(resp.status, 429);
        assert!(resp.header("retry-after").is_none());
        assert_eq!(
            resp.json(),
            json!({"type": "error", "error": {"type": "rate_limit_error", "message":
                "You have reached your specified API usage limits. You will regain access on 2027-01-01 at 00:00 UTC."}})
        );
        assert_eq!(api.rate_limited(), 0);
        assert_eq!(api.last_request().unwrap().status, 429);
        // The connection stays usable.
        api.set_reply(|p| Reply::text(format!("ok {}", p.len())));
        assert_eq!(c.call(&body(&ticket(7), false)).status, 200);
    }

    #[test]
    fn an_unknown_model_is_404_not_found() {
        let api = MockApi::start();
        api.set_known_models(Some(vec!["claude-sonnet-4-5".into()]));
        let mut c = Client::connect(&api);
        assert_eq!(c.call(&body(&ticket(8), true)).status, 200);
        let mut wrong = body(&ticket(9), true);
        wrong["model"] = json!("claude-sonet-4-5");
        let resp = c.call(&wrong);
        assert_eq!(resp.status, 404);
        assert_eq!(
            resp.json(),
            json!({"type": "error", "error": {"type": "not_found_error",
                "message": "model: claude-sonet-4-5"}})
        );
        assert_eq!(api.last_request().unwrap().status, 404);
        api.set_known_models(None);
        assert_eq!(c.call(&wrong).status, 200);
    }

    #[test]
    fn serves_256_connections_in_flight_at_once() {
        const N: usize = 256;
        let api = MockApi::start();
        // Each reply waits until all N are being answered: this passes only if the mock
        // really holds N at once (a deadline turns a failure into an error, not a hang).
        let arrived = Arc::new((Mutex::new(0usize), std::sync::Condvar::new()));
        let gate = Arc::clone(&arrived);
        api.set_reply_with(move |r| {
            let (count, cv) = &*gate;
            let mut n = lock(count);
            *n += 1;
            cv.notify_all();
            let deadline = Instant::now() + Duration::from_secs(120);
            while *n < N && Instant::now() < deadline {
                n = cv.wait_timeout(n, Duration::from_secs(1)).unwrap().0;
            }
            if *n < N {
                return Reply::status(500, None);
            }
            echo(&r.prompt)
        });
        let clients: Vec<_> = (0..N)
            .map(|i| {
                let addr = api.addr();
                thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn(move || {
                        let w = TcpStream::connect(addr).unwrap();
                        let mut c = Client {
                            r: BufReader::new(w.try_clone().unwrap()),
                            w,
                        };
                        c.call(&body(&ticket(i), i % 2 == 0)).status
                    })
                    .unwrap()
            })
            .collect();
        for c in clients {
            assert_eq!(c.join().unwrap(), 200);
        }
        assert_eq!(api.max_in_flight(), N);
        assert_eq!(api.request_count(), N);
        let deadline = Instant::now() + Duration::from_secs(60);
        while api.in_flight() > 0 {
            assert!(
                Instant::now() < deadline,
                "{} still in flight",
                api.in_flight()
            );
            thread::yield_now();
        }
        api.clear_requests();
        assert_eq!((api.max_in_flight(), api.request_count()), (0, 0));
    }

    #[test]
    fn without_recording_requests_are_counted_not_kept() {
        let api = MockApi::start();
        api.set_recording(false);
        let mut c = Client::connect(&api);
        for i in 0..50 {
            assert_eq!(c.call(&body(&ticket(i), i % 2 == 0)).status, 200);
        }
        assert_eq!(api.request_count(), 50);
        assert!(api.requests().is_empty());
        assert!(api.last_request().is_none());
        api.set_recording(true);
        assert_eq!(c.call(&body(&ticket(50), true)).status, 200);
        assert_eq!(api.request_count(), 51);
        let kept = api.requests();
        assert_eq!((kept.len(), kept[0].status), (1, 200));
        assert!(kept[0].prompt.starts_with("Ticket 50:"));
    }

    // Message Batches.

    impl Client {
        /// Any method and path, with a JSON body or none.
        fn request(&mut self, method: &str, path: &str, body: Option<&Value>) -> Response {
            let body = body.map(Value::to_string).unwrap_or_default();
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: sk-ant-test-batch\r\n\
content-length: {}\r\n\r\n{body}",
                body.len()
            );
            self.w.write_all(head.as_bytes()).unwrap();
            self.response().unwrap()
        }

        fn create_batch(&mut self, requests: &[(String, Value)]) -> Response {
            let requests: Vec<Value> = requests
                .iter()
                .map(|(id, params)| json!({"custom_id": id, "params": params}))
                .collect();
            self.request("POST", BATCHES, Some(&json!({ "requests": requests })))
        }

        fn retrieve(&mut self, id: &str) -> Value {
            let resp = self.request("GET", &format!("{BATCHES}/{id}"), None);
            assert_eq!(resp.status, 200);
            resp.json()
        }

        /// The results of an ended batch, as (custom_id, result) in the order served.
        fn results(&mut self, id: &str) -> Vec<(String, Value)> {
            let resp = self.request("GET", &format!("{BATCHES}/{id}/results"), None);
            assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
            String::from_utf8(resp.body)
                .unwrap()
                .lines()
                .map(|l| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    (
                        v["custom_id"].as_str().unwrap().to_string(),
                        v["result"].clone(),
                    )
                })
                .collect()
        }
    }

    /// `n` ticket requests with ids `ticket-0`, `ticket-1`, ...
    fn tickets(n: usize) -> Vec<(String, Value)> {
        (0..n)
            .map(|i| {
                let mut params = body(&ticket(i), false);
                params.as_object_mut().unwrap().remove("stream");
                (format!("ticket-{i}"), params)
            })
            .collect()
    }

    fn counts(batch: &Value) -> [i64; 5] {
        let c = &batch["request_counts"];
        ["processing", "succeeded", "errored", "canceled", "expired"]
            .map(|k| c[k].as_i64().unwrap_or_else(|| panic!("{k} in {c}")))
    }

    fn result_types(results: &[(String, Value)]) -> HashMap<String, String> {
        results
            .iter()
            .map(|(id, r)| (id.clone(), r["type"].as_str().unwrap().to_string()))
            .collect()
    }

    /// What the succeeded results' usage adds up to, as the mock bills it.
    fn usage_sum(results: &[(String, Value)]) -> BatchUsage {
        let mut sum = BatchUsage::default();
        for (_, r) in results.iter().filter(|(_, r)| r["type"] == "succeeded") {
            let u = &r["message"]["usage"];
            let n = |k: &str| u[k].as_u64().unwrap();
            sum.input_tokens += n("input_tokens");
            sum.cache_write += n("cache_creation_input_tokens");
            sum.cache_read += n("cache_read_input_tokens");
            sum.output_tokens += n("output_tokens");
        }
        sum
    }

    #[test]
    fn a_batch_is_created_then_ended_and_its_results_come_back_complete_in_another_order() {
        let api = MockApi::start();
        let mut c = Client::connect(&api);
        let sent = tickets(20);
        let created = c.create_batch(&sent);
        assert_eq!(created.status, 200);
        assert_eq!(created.header("content-type"), Some("application/json"));
        let batch = created.json();
        let id = batch["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("msgbatch_"), "{id}");
        assert_eq!(batch["type"], "message_batch");
        assert_eq!(batch["processing_status"], "in_progress");
        assert_eq!(counts(&batch), [20, 0, 0, 0, 0]);
        assert_eq!(
            (
                &batch["ended_at"],
                &batch["cancel_initiated_at"],
                &batch["results_url"]
            ),
            (&Value::Null, &Value::Null, &Value::Null)
        );
        let created_at = batch["created_at"].as_str().unwrap();
        let expires_at = batch["expires_at"].as_str().unwrap();
        assert!(is_rfc3339_utc(created_at) && is_rfc3339_utc(expires_at));
        // 24 hours later: the same time of day, the next day.
        assert_eq!(created_at[11..], expires_at[11..]);
        assert_ne!(created_at[..10], expires_at[..10]);

        // Processing time zero: ended at the first look.
        let ended = c.retrieve(&id);
        assert_eq!(ended["processing_status"], "ended");
        assert_eq!(counts(&ended), [0, 20, 0, 0, 0]);
        assert!(is_rfc3339_utc(ended["ended_at"].as_str().unwrap()));
        let url = format!("{}{BATCHES}/{id}/results", api.url());
        assert_eq!(ended["results_url"], json!(url));

        let results = c.results(&id);
        let served: Vec<&str> = results.iter().map(|(id, _)| id.as_str()).collect();
        let submitted: Vec<&str> = sent.iter().map(|(id, _)| id.as_str()).collect();
        assert_ne!(served, submitted, "results come back in another order");
        let mut sorted = served.clone();
        sorted.sort_by_key(|id| id[7..].parse::<usize>().unwrap());
        assert_eq!(sorted, submitted, "every request exactly once");
        for (custom_id, result) in &results {
            let n: usize = custom_id[7..].parse().unwrap();
            assert_eq!(result["type"], "succeeded");
            let message = &result["message"];
            assert_eq!(message["type"], "message");
            assert_eq!(message["model"], "claude-sonnet-4-5");
            assert_eq!(message["stop_reason"], "end_turn");
            assert_eq!(
                message["content"][0]["text"],
                json!(format!("echo: {}", ticket(n)))
            );
            assert!(message["usage"]["input_tokens"].as_u64().unwrap() > 50);
        }
        // The same order every time.
        assert_eq!(c.results(&id), results);

        let record = api.batch(&id).unwrap();
        assert_eq!(record.status, BatchStatus::Ended);
        assert_eq!(record.custom_ids, submitted);
        assert_eq!(record.billed, usage_sum(&results));
        assert!(record.ended.unwrap() >= record.created);
        // Batch calls are not /v1/messages requests.
        assert_eq!((api.batch_api_calls(), api.request_count()), (4, 0));
        assert_eq!(api.batch_count(), 1);
    }

    #[test]
    fn batch_requests_are_recorded_with_their_params_and_the_creating_calls_headers() {
        let api = MockApi::start();
        let mut c = Client::connect(&api);
        let id = c.create_batch(&tickets(3)).json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let record = &api.batches()[0];
        assert_eq!(record.id, id);
        assert_eq!(record.requests.len(), 3);
        for (i, rec) in record.requests.iter().enumerate() {
            assert_eq!(rec.prompt, ticket(i));
            assert_eq!((rec.user_turns, rec.status, rec.stream), (1, 200, false));
            assert_eq!(rec.body, tickets(3)[i].1);
            assert_eq!(rec.path, BATCHES);
            assert!(rec.input_tokens > 0);
            assert!(rec
                .headers
                .contains(&("x-api-key".into(), "sk-ant-test-batch".into())));
        }
        let debug = format!("{record:?}");
        assert!(!debug.contains("sk-ant-test-batch"), "{debug}");
        assert!(api.requests().is_empty());
    }

    #[test]
    fn one_bad_custom_id_or_params_rejects_the_whole_batch_naming_it() {
        let api = MockApi::start();
        let mut c = Client::connect(&api);
        let long = "x".repeat(65);
        let bad_ids = ["", "has space", "ümlaut", long.as_str(), "a/b", "ticket-1"];
        for bad in bad_ids {
            let mut batch = tickets(4);
            batch[2].0 = bad.to_string();
            let resp = c.create_batch(&batch);
            assert_eq!(resp.status, 400, "{bad:?}");
            let error = resp.json();
            assert_eq!(error["type"], "error");
            assert_eq!(error["error"]["type"], "invalid_request_error");
            let message = error["error"]["message"].as_str().unwrap();
            assert!(message.contains(&format!("{bad:?}")), "{message}");
            assert!(message.starts_with("requests.2.custom_id"), "{message}");
        }
        let mut streamed = tickets(3);
        streamed[1].1["stream"] = json!(true);
        let resp = c.create_batch(&streamed);
        assert_eq!(resp.status, 400);
        let message = resp.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.contains("stream") && message.contains("ticket-1"),
            "{message}"
        );
        let mut no_params = tickets(3);
        no_params[0].1 = json!("Ticket 0");
        assert_eq!(c.create_batch(&no_params).status, 400);
        assert_eq!(c.create_batch(&[]).status, 400);
        let not_json = c.request("POST", BATCHES, Some(&json!({"requests": "all of them"})));
        assert_eq!(not_json.status, 400);
        // The longest id the pattern allows, and every character class, are fine.
        let mut good = tickets(2);
        good[0].0 = "Z".repeat(64);
        good[1].0 = "a-Z_09".into();
        assert_eq!(c.create_batch(&good).status, 200);
        assert_eq!(api.batch_count(), 1);
    }

    #[test]
    fn a_batch_above_the_request_or_byte_limits_is_refused() {
        let api = MockApi::start();
        let mut c = Client::connect(&api);
        let tiny = json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}]});
        let requests: Vec<Value> = (0..=BATCH_MAX_REQUESTS)
            .map(|i| json!({"custom_id": format!("r{i}"), "params": tiny}))
            .collect();
        let resp = c.request("POST", BATCHES, Some(&json!({ "requests": requests })));
        assert_eq!(resp.status, 400);
        let message = resp.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains("100000"), "{message}");
        assert_eq!(api.batch_count(), 0);

        // A declared size above 256 MB: refused before the body is read, then the connection
        // is closed (its body would follow).
        let head = format!(
            "POST {BATCHES} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-length: {}\r\n\r\n",
            BATCH_MAX_BYTES + 1
        );
        c.w.write_all(head.as_bytes()).unwrap();
        let resp = c.response().unwrap();
        assert_eq!(resp.status, 413);
        assert_eq!(resp.json()["error"]["type"], "request_too_large");
        assert!(c.rest().is_empty());
        assert_eq!(api.batch_count(), 0);
    }

    #[test]
    fn the_list_is_newest_first_and_pages_by_cursor() {
        let api = MockApi::start();
        let mut c = Client::connect(&api);
        let ids: Vec<String> = (0..5)
            .map(|i| {
                let resp = c.create_batch(&tickets(i + 1));
                resp.json()["id"].as_str().unwrap().to_string()
            })
            .collect();
        let page = |c: &mut Client, query: &str| {
            let resp = c.request("GET", &format!("{BATCHES}{query}"), None);
            assert_eq!(resp.status, 200);
            let v = resp.json();
            let data: Vec<String> = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["id"].as_str().unwrap().to_string())
                .collect();
            (data, v["has_more"].as_bool().unwrap(), v)
        };
        let newest: Vec<String> = ids.iter().rev().cloned().collect();
        let (all, more, v) = page(&mut c, "");
        assert_eq!((all, more), (newest.clone(), false));
        assert_eq!(
            (&v["first_id"], &v["last_id"]),
            (&json!(ids[4]), &json!(ids[0]))
        );
        assert_eq!(v["data"][0]["processing_status"], "ended");
        let (first, more, v) = page(&mut c, "?limit=2");
        assert_eq!((first, more), (newest[..2].to_vec(), true));
        let last = v["last_id"].as_str().unwrap().to_string();
        let (second, more, _) = page(&mut c, &format!("?limit=2&after_id={last}"));
        assert_eq!((second, more), (newest[2..4].to_vec(), true));
        let (third, more, _) = page(&mut c, &format!("?limit=2&after_id={}", newest[3]));
        assert_eq!((third, more), (newest[4..].to_vec(), false));
        let (back, more, _) = page(&mut c, &format!("?limit=2&before_id={}", newest[3]));
        assert_eq!((back, more), (newest[1..3].to_vec(), true));
        let (empty, more, v) = page(&mut c, &format!("?after_id={}", newest[4]));
        assert_eq!(
            (empty.len(), more, &v["first_id"]),
            (0, false, &Value::Null)
        );
    }

    #[test]
    fn an_unknown_batch_and_results_before_the_end_are_404() {
        let api = MockApi::start();
        api.set_batch_processing_time(Duration::from_secs(3600));
        let mut c = Client::connect(&api);
        for path in [
            format!("{BATCHES}/msgbatch_nope"),
            format!("{BATCHES}/msgbatch_nope/results"),
        ] {
            let resp = c.request("GET", &path, None);
            assert_eq!(resp.status, 404);
            assert_eq!(resp.json()["error"]["type"], "not_found_error");
        }
        let resp = c.request("POST", &format!("{BATCHES}/msgbatch_nope/cancel"), None);
        assert_eq!(resp.status, 404);
        let id = c.create_batch(&tickets(3)).json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let resp = c.request("GET", &format!("{BATCHES}/{id}/results"), None);
        assert_eq!(resp.status, 404);
        assert_eq!(c.retrieve(&id)["processing_status"], "in_progress");
        assert_eq!(api.advance_batch(&id, 10), 3);
        assert_eq!(c.results(&id).len(), 3);
    }

    #[test]
    fn a_cancel_mid_processing_keeps_what_succeeded_and_cancels_the_rest() {
        let api = MockApi::start();
        api.set_batch_processing_time(Duration::from_secs(3600));
        let mut c = Client::connect(&api);
        let id = c.create_batch(&tickets(10)).json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(api.advance_batch(&id, 4), 4);
        let part_done = c.retrieve(&id);
        assert_eq!(part_done["processing_status"], "in_progress");
        assert_eq!(counts(&part_done), [6, 4, 0, 0, 0]);

        let canceling = c.request("POST", &format!("{BATCHES}/{id}/cancel"), None);
        assert_eq!(canceling.status, 200);
        let canceling = canceling.json();
        assert_eq!(canceling["processing_status"], "canceling");
        assert!(is_rfc3339_utc(
            canceling["cancel_initiated_at"].as_str().unwrap()
        ));
        assert_eq!(canceling["results_url"], Value::Null);
        assert_eq!(
            api.advance_batch(&id, 1),
            0,
            "a canceling batch processes no more"
        );

        let ended = c.retrieve(&id);
        assert_eq!(ended["processing_status"], "ended");
        assert_eq!(counts(&ended), [0, 4, 0, 6, 0]);
        let results = c.results(&id);
        let types = result_types(&results);
        for i in 0..10 {
            let expected = if i < 4 { "succeeded" } else { "canceled" };
            assert_eq!(types[&format!("ticket-{i}")], expected);
        }
        let record = api.batch(&id).unwrap();
        assert_eq!(record.billed, usage_sum(&results));
        assert!(record.cancel_initiated.is_some());
        let billed_inputs: Vec<usize> = record.requests.iter().map(|r| r.input_tokens).collect();
        assert!(billed_inputs[..4].iter().all(|t| *t > 0));
        assert!(billed_inputs[4..].iter().all(|t| *t == 0));
        // A second cancel changes nothing.
        let again = c.request("POST", &format!("{BATCHES}/{id}/cancel"), None);
        assert_eq!(counts(&again.json()), [0, 4, 0, 6, 0]);
    }

    #[test]
    fn an_expired_batch_keeps_what_was_processed_and_expires_the_rest() {
        let api = MockApi::start();
        api.set_batch_processing_time(Duration::from_secs(3600));
        let mut c = Client::connect(&api);
        let id = c.create_batch(&tickets(6)).json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(api.advance_batch(&id, 2), 2);
        assert!(api.expire_batch(&id));
        assert!(!api.expire_batch(&id), "already ended");
        assert!(!api.expire_batch("msgbatch_nope"));
        let ended = c.retrieve(&id);
        assert_eq!(ended["processing_status"], "ended");
        assert_eq!(ended["cancel_initiated_at"], Value::Null);
        assert_eq!(counts(&ended), [0, 2, 0, 0, 4]);
        let results = c.results(&id);
        let types = result_types(&results);
        assert_eq!(types.values().filter(|t| *t == "expired").count(), 4);
        assert_eq!(
            (types["ticket-0"].as_str(), types["ticket-5"].as_str()),
            ("succeeded", "expired")
        );
        assert_eq!(api.batch(&id).unwrap().billed, usage_sum(&results));
    }

    #[test]
    fn chosen_requests_error_or_expire_and_only_successes_are_billed() {
        let api = MockApi::start();
        api.set_batch_request_outcome(|custom_id, rec| {
            assert!(rec.prompt.starts_with("Ticket "));
            match custom_id {
                "ticket-1" => BatchOutcome::errored("overloaded_error"),
                "ticket-2" => BatchOutcome::Errored {
                    error_type: "invalid_request_error".into(),
                    message: "max_tokens: too large".into(),
                },
                "ticket-3" => BatchOutcome::Expired,
                _ => BatchOutcome::Answer,
            }
        });
        // The reply function's faults become errored results too.
        api.set_reply(|prompt| {
            if prompt.starts_with("Ticket 4:") {
                Reply::status(529, None)
            } else {
                Reply::After(Duration::from_secs(3600), Box::new(echo(prompt)))
            }
        });
        let mut c = Client::connect(&api);
        let id = c.create_batch(&tickets(6)).json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(counts(&c.retrieve(&id)), [0, 2, 3, 0, 1]);
        let results: HashMap<String, Value> = c.results(&id).into_iter().collect();
        let error = |id: &str| results[id]["error"].clone();
        assert_eq!(results["ticket-1"]["type"], "errored");
        assert_eq!(error("ticket-1")["type"], "error");
        assert_eq!(error("ticket-1")["error"]["type"], "overloaded_error");
        assert_eq!(
            error("ticket-2")["error"],
            json!({"type": "invalid_request_error", "message": "max_tokens: too large"})
        );
        assert_eq!(results["ticket-3"], json!({"type": "expired"}));
        assert_eq!(error("ticket-4")["error"]["type"], "overloaded_error");
        for ok in ["ticket-0", "ticket-5"] {
            assert_eq!(results[ok]["type"], "succeeded");
        }
        let record = api.batch(&id).unwrap();
        let statuses: Vec<u16> = record.requests.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 529, 400, 0, 529, 200]);
        let billed: Vec<(String, Value)> = results.into_iter().collect();
        assert_eq!(record.billed, usage_sum(&billed));
        let one = record.requests[0].input_tokens as u64;
        assert!(record.billed.input_tokens < 3 * one, "{:?}", record.billed);
    }

    #[test]
    fn batch_requests_read_the_prefix_a_messages_request_wrote() {
        let api = MockApi::start();
        let rules = "Urgency is HIGH when customers cannot work, MEDIUM when a workaround \
exists, LOW otherwise; answer with the level and one sentence of reasons. "
            .repeat(40);
        let cached = |n: usize| {
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "system": [{"type": "text", "text": rules, "cache_control": {"type": "ephemeral"}}],
                "messages": [{"role": "user", "content": ticket(n)}],
            })
        };
        let mut c = Client::connect(&api);
        assert_eq!(c.call(&cached(0)).status, 200);
        let written = api.last_request().unwrap().cache_write as u64;
        assert!(written >= 1024);
        let batch: Vec<(String, Value)> = (1..=8).map(|i| (format!("t{i}"), cached(i))).collect();
        let id = c.create_batch(&batch).json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let results = c.results_after_end(&id);
        let billed = api.batch(&id).unwrap().billed;
        assert_eq!(billed, usage_sum(&results));
        assert_eq!((billed.cache_read, billed.cache_write), (8 * written, 0));
    }

    impl Client {
        /// Look once (which ends a batch of zero processing time), then read its results.
        fn results_after_end(&mut self, id: &str) -> Vec<(String, Value)> {
            assert_eq!(self.retrieve(id)["processing_status"], "ended");
            self.results(id)
        }
    }

    #[test]
    fn batch_endpoints_carry_the_rate_limit_headers_and_take_nothing_from_them() {
        let api = MockApi::start();
        api.set_rate_limit(Some(5));
        let mut c = Client::connect(&api);
        let created = c.create_batch(&tickets(2));
        let id = created.json()["id"].as_str().unwrap().to_string();
        let listed = c.request("GET", BATCHES, None);
        let missing = c.request("GET", &format!("{BATCHES}/msgbatch_nope"), None);
        for resp in [&created, &listed, &missing] {
            assert_eq!(number(resp, "anthropic-ratelimit-requests-limit"), 5);
            assert_eq!(number(resp, "anthropic-ratelimit-requests-remaining"), 5);
        }
        assert_eq!(c.results_after_end(&id).len(), 2);
        assert_eq!((api.batch_api_calls(), api.request_count()), (5, 0));
    }

    #[test]
    fn a_ten_thousand_request_batch_round_trips_without_recording() {
        const N: usize = 10_000;
        let api = MockApi::start();
        api.set_recording(false);
        let mut c = Client::connect(&api);
        let sent = tickets(N);
        let created = c.create_batch(&sent);
        assert_eq!(created.status, 200);
        let id = created.json()["id"].as_str().unwrap().to_string();
        let ended = c.retrieve(&id);
        assert_eq!(counts(&ended), [0, N as i64, 0, 0, 0]);
        let results = c.results(&id);
        assert_eq!(results.len(), N);
        let served: std::collections::HashSet<&str> =
            results.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(served.len(), N);
        assert!(sent.iter().all(|(id, _)| served.contains(id.as_str())));
        assert_ne!(results[0].0, "ticket-0");
        let record = api.batch(&id).unwrap();
        assert!(
            record.requests.is_empty(),
            "no bodies kept without recording"
        );
        assert_eq!(record.custom_ids.len(), N);
        assert_eq!(record.billed, usage_sum(&results));
    }

    #[test]
    fn a_batch_is_processed_evenly_over_its_processing_time_and_expires_after_24_hours() {
        let api = MockApi::start();
        let hour = Duration::from_secs(3600);
        let mut c = Client::connect(&api);
        // The mock reads the clock at each look; here the looks are at chosen instants.
        let look = |n: usize, after: Duration| {
            let batch = Arc::clone(&lock(&api.inner.batches)[n]);
            let mut b = lock(&batch);
            let at = b.created + after;
            b.advance(&api.inner, at);
            (b.counts, b.status(), b.ended.map(|e| e - b.created))
        };
        let part = |processing, succeeded, expired| BatchCounts {
            processing,
            succeeded,
            expired,
            ..BatchCounts::default()
        };
        api.set_batch_processing_time(hour);
        let id = c.create_batch(&tickets(10)).json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let half = (part(5, 5, 0), BatchStatus::InProgress, None);
        assert_eq!(look(0, hour / 2), half);
        assert_eq!(
            look(0, hour - Duration::from_secs(1)),
            (part(1, 9, 0), half.1, None)
        );
        assert_eq!(
            look(0, hour * 2),
            (part(0, 10, 0), BatchStatus::Ended, Some(hour))
        );
        let ended = c.retrieve(&id);
        assert_eq!(ended["processing_status"], "ended");
        assert!(ended["ended_at"].as_str().unwrap() > ended["created_at"].as_str().unwrap());

        // Two days to go: half done when the 24 hours run out, the rest expired.
        api.set_batch_processing_time(hour * 48);
        let id = c.create_batch(&tickets(10)).json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(look(1, hour * 12).0, part(8, 2, 0));
        let expired = (part(0, 5, 5), BatchStatus::Ended, Some(BATCH_EXPIRY));
        assert_eq!(look(1, hour * 30), expired);
        let batch = c.retrieve(&id);
        assert_eq!(batch["ended_at"], batch["expires_at"]);
        let types = result_types(&c.results(&id));
        assert_eq!(types.values().filter(|t| *t == "expired").count(), 5);
    }

    #[test]
    fn injected_batch_faults_refuse_calls_or_cut_their_answers_after_the_fact() {
        let api = MockApi::start();
        let mix = FaultMix {
            rate: 1.0,
            seed: 7,
            retry_after_secs: 3,
        };
        let create = |n: usize| {
            let requests: Vec<Value> = tickets(2)
                .into_iter()
                .map(|(id, params)| json!({"custom_id": format!("{id}-{n}"), "params": params}))
                .collect();
            let body = json!({ "requests": requests }).to_string();
            let mut c = Client::connect(&api);
            let head = format!(
                "POST {BATCHES} HTTP/1.1\r\nHost: 127.0.0.1\r\nconnection: close\r\n\
content-length: {}\r\n\r\n{body}",
                body.len()
            );
            c.w.write_all(head.as_bytes()).unwrap();
            let raw = c.rest();
            let text = String::from_utf8_lossy(&raw).into_owned();
            if raw.is_empty() {
                return Seen::Dropped;
            }
            match text[9..12].parse::<u16>().unwrap() {
                200 => {
                    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
                    assert!(serde_json::from_str::<Value>(body).is_err(), "{body}");
                    Seen::Cut
                }
                429 => {
                    assert!(text.contains("retry-after: 3\r\n"), "{text}");
                    Seen::Status(429)
                }
                code => Seen::Status(code),
            }
        };
        api.set_batch_faults(Some(mix));
        let seen: Vec<Seen> = (0..60).map(create).collect();
        for kind in [
            Seen::Status(429),
            Seen::Status(529),
            Seen::Status(500),
            Seen::Dropped,
            Seen::Cut,
        ] {
            let n = seen.iter().filter(|s| **s == kind).count();
            assert!(n >= 3, "{kind:?}: {n} of 60");
        }
        assert_eq!(api.injected_faults(), 60);
        // Only the cut calls took effect: their batches exist, unknown to the client.
        let cut = seen.iter().filter(|s| **s == Seen::Cut).count();
        assert_eq!(api.batch_count(), cut);
        // The same seed again: the same faults; and none once the mix is off.
        api.set_batch_faults(Some(mix));
        assert_eq!((0..60).map(create).collect::<Vec<_>>(), seen);
        api.set_batch_faults(None);
        let mut c = Client::connect(&api);
        assert_eq!(c.request("GET", BATCHES, None).status, 200);
        assert_eq!(api.request_count(), 0);
    }
}
