//! A connection to the Messages API, as the engine sees one: an HTTP agent (one keep-alive
//! connection) and, for a conversation, the history the library keeps.

use std::fmt;
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::answer::{self, Outcome};
use super::imp::Shared;
use super::reply;
use super::stream::{read_events, Message, Step};
use crate::backend::{Abort, Billed, Conn, TurnEvent, TurnFailure, TurnRequest};
use crate::budget::Rate;
use crate::{Error, Response, Usage};

/// The most of an error reply's body that is read.
pub(super) const MAX_ERROR_BODY: u64 = 64 << 10;

/// An error reply's body, as text, at most [`MAX_ERROR_BODY`] of it.
pub(super) fn error_body(response: ureq::http::Response<ureq::Body>) -> String {
    let mut text = String::new();
    let _ = response
        .into_body()
        .into_reader()
        .take(MAX_ERROR_BODY)
        .read_to_string(&mut text);
    text
}

/// A connection checked out of the backend; it goes back when dropped.
pub(crate) struct ApiConn {
    shared: Arc<Shared>,
    id: u64,
    /// `None` after an abort shut it: the next turn makes a new one.
    agent: Option<ureq::Agent>,
    /// Set by the abort handle, so a failure it caused is not mistaken for the network's.
    aborted: Arc<AtomicBool>,
    /// The handle's view of the agent, replaced with it.
    abort_target: Arc<parking_lot::Mutex<Option<ureq::Agent>>>,
    /// The conversation so far (user and assistant messages), kept only when asked.
    history: Vec<Value>,
    keep_next: bool,
    /// A turn was ended from outside (a cancel, a close): a conversation on it is over, as
    /// on a CLI process that was killed.
    lost: bool,
}

/// How one call ended, when it did not answer.
struct CallFailure {
    error: Error,
    usage: Usage,
    sent: bool,
    unreachable: bool,
}

impl CallFailure {
    fn unsent(error: Error) -> CallFailure {
        CallFailure {
            error,
            usage: Usage::default(),
            sent: false,
            unreachable: false,
        }
    }

    /// A call that went out (or may have), having billed `usage`.
    fn sent(error: Error, usage: Usage) -> CallFailure {
        CallFailure {
            error,
            usage,
            sent: true,
            unreachable: false,
        }
    }
}

impl ApiConn {
    pub(super) fn new(shared: Arc<Shared>, id: u64, agent: ureq::Agent) -> ApiConn {
        ApiConn {
            shared,
            id,
            abort_target: Arc::new(parking_lot::Mutex::new(Some(agent.clone()))),
            agent: Some(agent),
            aborted: Arc::new(AtomicBool::new(false)),
            history: Vec::new(),
            keep_next: false,
            lost: false,
        }
    }

    fn agent(&mut self) -> ureq::Agent {
        if let Some(agent) = &self.agent {
            return agent.clone();
        }
        let agent = self.shared.new_agent();
        self.shared.replace_agent(self.id, &agent);
        *self.abort_target.lock() = Some(agent.clone());
        self.agent = Some(agent.clone());
        agent
    }

    /// One call: send `messages`, read the answer's events as they come.
    fn call(
        &mut self,
        messages: &[Value],
        deadline: Instant,
        timeout: Duration,
        events: &mut dyn FnMut(TurnEvent),
    ) -> Result<Message, CallFailure> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CallFailure::unsent(Error::Timeout(timeout)));
        }
        let agent = self.agent();
        let body = self.shared.template.body(messages);
        let sent = self
            .shared
            .key
            .sign(agent.post(&self.shared.endpoint))
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .config()
            .timeout_global(Some(left))
            .build()
            .send(&body[..]);
        let response = match sent {
            Ok(response) => response,
            Err(error) => return Err(self.transport_failure(error, timeout, Usage::default())),
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let limits = reply::server_limits(&header);
        if limits != Default::default() {
            events(TurnEvent::Limits(limits));
        }
        if status != 200 {
            if let Some(wait) = reply::retry_after(&header) {
                events(TurnEvent::RetryAfter(wait));
            }
            return Err(CallFailure::sent(
                reply::error_of(status, &error_body(response)),
                Usage::default(),
            ));
        }
        let mut reader = BufReader::with_capacity(8 << 10, response.into_body().into_reader());
        let mut message = Message::default();
        let mut stream_error = None;
        let read = read_events(&mut reader, |data| {
            let Ok(value) = serde_json::from_str::<Value>(data) else {
                // Not an event of the API's: skip it rather than fail a good answer.
                return Ok(false);
            };
            match message.apply(&value) {
                Ok(Step::Began) => {
                    events(TurnEvent::Began);
                    Ok(false)
                }
                Ok(Step::Continue) => Ok(false),
                Ok(Step::Stopped) => Ok(true),
                Err(error) => {
                    stream_error = Some(reply::stream_error_of(&error.kind, &error.message));
                    Ok(true)
                }
            }
        });
        if matches!(read, Ok(true)) {
            // Read the body to its end, so the connection goes back to the agent alive.
            let _ = io::copy(&mut reader.take(MAX_ERROR_BODY), &mut io::sink());
        }
        if let Some(error) = stream_error {
            return Err(CallFailure::sent(error, message.usage));
        }
        match read {
            Ok(_) if message.stopped || message.stop_reason.is_some() => Ok(message),
            // The stream ended before the API said why the answer stopped: cut.
            Ok(_) => Err(CallFailure::sent(
                Error::IncompleteAnswer {
                    stop_reason: None,
                    partial: message.text,
                },
                message.usage,
            )),
            Err(error) => {
                let usage = message.usage;
                Err(self.read_failure(error, timeout, usage))
            }
        }
    }

    /// A call that failed in ureq (before a reply's head came).
    fn transport_failure(
        &mut self,
        error: ureq::Error,
        timeout: Duration,
        usage: Usage,
    ) -> CallFailure {
        if self.was_aborted() {
            return CallFailure::sent(Error::Cancelled, usage);
        }
        match transport_error(error, timeout) {
            Transport::Unreachable(error) => CallFailure {
                error,
                usage: Usage::default(),
                sent: false,
                unreachable: true,
            },
            Transport::TimedOut(error) => CallFailure::sent(error, usage),
            Transport::Lost(error) => {
                // The connection may have been reused after the server closed it: a new one
                // for the next call.
                self.agent = None;
                CallFailure::sent(error, usage)
            }
        }
    }

    /// A call whose answer's stream failed while being read.
    fn read_failure(&mut self, error: io::Error, timeout: Duration, usage: Usage) -> CallFailure {
        self.agent = None;
        if self.was_aborted() {
            return CallFailure::sent(Error::Cancelled, usage);
        }
        let timed_out = matches!(
            error.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        ) || error.to_string().to_ascii_lowercase().contains("timeout");
        let error = if timed_out {
            Error::Timeout(timeout)
        } else {
            Error::Api {
                status: None,
                message: format!("the connection to the API was lost mid-answer: {error}"),
            }
        };
        CallFailure::sent(error, usage)
    }

    fn was_aborted(&mut self) -> bool {
        if self.aborted.swap(false, Ordering::SeqCst) {
            // Its sockets are shut: a new agent for the next turn.
            self.agent = None;
            self.lost = true;
            true
        } else {
            false
        }
    }
}

impl Conn for ApiConn {
    fn turn(
        &mut self,
        request: &TurnRequest<'_>,
        events: &mut dyn FnMut(TurnEvent),
    ) -> Result<Response, TurnFailure> {
        if !std::mem::take(&mut self.keep_next) {
            self.history.clear();
        }
        // An abort that came after the last turn ended shut its agent: start on a new one.
        if self.aborted.swap(false, Ordering::SeqCst) {
            self.agent = None;
        }
        if !self.shared.begin_turn() {
            return Err(TurnFailure {
                error: Error::Closed,
                billed: Billed::default(),
                sent: false,
                unreachable: false,
            });
        }
        let outcome = self.run_turn(request, events);
        self.shared.end_turn();
        outcome
    }

    fn abort_handle(&self) -> Abort {
        let aborted = Arc::clone(&self.aborted);
        let target = Arc::clone(&self.abort_target);
        Arc::new(move || {
            aborted.store(true, Ordering::SeqCst);
            if let Some(agent) = target.lock().clone() {
                agent.shutdown();
            }
        })
    }

    fn hold(&mut self) {}

    fn keep_context(&mut self) {
        self.keep_next = true;
    }

    fn is_reusable(&mut self) -> bool {
        !self.lost && !self.shared.is_closed()
    }
}

impl ApiConn {
    fn run_turn(
        &mut self,
        request: &TurnRequest<'_>,
        events: &mut dyn FnMut(TurnEvent),
    ) -> Result<Response, TurnFailure> {
        let started = Instant::now();
        let deadline = crate::clock::saturating_add(started, request.timeout);
        let template = Arc::clone(&self.shared.template);
        let structured = template.is_structured();
        let mut messages = self.history.clone();
        messages.push(json!({"role": "user", "content": request.prompt}));
        let mut usage = Usage::default();
        // Of the cache writes in `usage`, those at the one-hour price.
        let mut one_hour_writes = 0u64;
        let mut text = String::new();
        let mut calls = 0u32;
        let mut continuations = 0u32;
        let mut id = String::new();
        let fail = |failure: CallFailure, usage: &mut Usage, one_hour_writes: u64, calls: u32| {
            usage.add(&failure.usage);
            let one_hour_writes = one_hour_writes
                + template.one_hour_writes(None, failure.usage.cache_creation_input_tokens);
            TurnFailure {
                billed: Billed {
                    cost_usd: template.cost_usd(usage, one_hour_writes, Rate::List),
                    usage: *usage,
                },
                error: failure.error,
                // A later call of the turn failing unsent still leaves the earlier ones sent.
                sent: failure.sent || calls > 1,
                unreachable: failure.unreachable,
            }
        };
        loop {
            calls += 1;
            if calls > 1 {
                events(TurnEvent::ExtraCall);
            }
            let message = match self.call(&messages, deadline, request.timeout, events) {
                Ok(message) => message,
                Err(failure) => {
                    let mut failure = fail(failure, &mut usage, one_hour_writes, calls);
                    if let Error::IncompleteAnswer { partial, .. } = &mut failure.error {
                        *partial = format!("{text}{partial}");
                    }
                    return Err(failure);
                }
            };
            usage.add(&message.usage);
            one_hour_writes += template.one_hour_writes(
                message.one_hour_writes,
                message.usage.cache_creation_input_tokens,
            );
            if id.is_empty() {
                id = message.id.clone();
            }
            text.push_str(&message.text);
            let may_continue = !structured && continuations < self.shared.max_continuations;
            match answer::outcome(text, &message, structured, may_continue) {
                Outcome::Cut(so_far) => {
                    // Go on from where it stopped: the part so far as the start of the
                    // assistant's answer (the API refuses one that ends in white space).
                    continuations += 1;
                    text = so_far;
                    let kept = text.trim_end().len();
                    text.truncate(kept);
                    let mut next = self.history.clone();
                    next.push(json!({"role": "user", "content": request.prompt}));
                    next.push(json!({"role": "assistant", "content": text}));
                    messages = next;
                }
                // The turn answered, but not with an answer: what it billed goes with the
                // error.
                Outcome::Failed(error) => {
                    return Err(TurnFailure {
                        error,
                        billed: Billed {
                            cost_usd: template.cost_usd(&usage, one_hour_writes, Rate::List),
                            usage,
                        },
                        sent: true,
                        unreachable: false,
                    });
                }
                Outcome::Answer {
                    text: answer_text,
                    structured: structured_value,
                } => {
                    self.history
                        .push(json!({"role": "user", "content": request.prompt}));
                    self.history
                        .push(json!({"role": "assistant", "content": answer_text}));
                    return Ok(Response {
                        text: answer_text,
                        structured: structured_value,
                        usage,
                        cost_usd: template.cost_usd(&usage, one_hour_writes, Rate::List),
                        duration: started.elapsed(),
                        num_turns: 1,
                        session_id: id,
                        api_retries: 0,
                        stop_reason: message.stop_reason,
                        continuations,
                        api_calls: calls,
                        replayed: false,
                    });
                }
            }
        }
    }
}

/// What a call that failed in ureq (before a reply's head came) stands for.
pub(super) enum Transport {
    /// It could not connect at all: nothing went out.
    Unreachable(Error),
    /// A timeout: it may have gone out.
    TimedOut(Error),
    /// The connection failed after it was made: it may have gone out.
    Lost(Error),
}

/// Sort a ureq failure; `timeout` is the limit a timeout reports.
pub(super) fn transport_error(error: ureq::Error, timeout: Duration) -> Transport {
    let unreachable = |why: &dyn fmt::Display| {
        Transport::Unreachable(Error::Api {
            status: None,
            message: format!("unable to connect to the API: {why}"),
        })
    };
    match error {
        ureq::Error::Timeout(_) => Transport::TimedOut(Error::Timeout(timeout)),
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => unreachable(&error),
        ureq::Error::Io(io) if is_connect_refusal(&io) => unreachable(&io),
        other => Transport::Lost(Error::Api {
            status: None,
            message: format!("the connection to the API was lost: {other}"),
        }),
    }
}

/// Whether an I/O error means the API could not be reached at all.
fn is_connect_refusal(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
    )
}

impl Drop for ApiConn {
    fn drop(&mut self) {
        let agent = if self.aborted.load(Ordering::SeqCst) {
            None
        } else {
            self.agent.take()
        };
        self.shared.check_in(self.id, agent);
    }
}

impl fmt::Debug for ApiConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConn")
            .field("id", &self.id)
            .field("history_messages", &self.history.len())
            .finish()
    }
}
