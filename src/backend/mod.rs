//! The seam between the item engine and whatever answers a turn.
//!
//! A [`Backend`] hands out connections ([`Conn`]); a connection answers one turn at a time
//! and goes back when dropped. The engine (`crate::engine`) does everything around a turn
//! (journal, budget, throttle, cache gate, retries, progress, stop) the same way for every
//! backend, and learns what happened on the way through [`TurnEvent`]s and, for a turn that
//! did not answer, a [`TurnFailure`] that says what it billed and whether it went out.
//!
//! Today's backend is the Claude Code CLI (`cli`): a connection is a warm process leased
//! from a pool. The shape is the one ureq gives its transports and crossbeam-channel its
//! flavours: one public face (`Session`), the implementations behind a private trait. See
//! ARCHITECTURE.md ("Backends") for why a turn-at-a-time seam, and how a backend that answers
//! many items at once (the Message Batches API) attaches to it. `spec` is what every
//! backend is told about answers (model, system prompt, schema, effort).

#[cfg_attr(not(feature = "api"), allow(dead_code))]
pub(crate) mod api;
pub(crate) mod batch;
pub(crate) mod cli;
pub(crate) mod spec;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Error, Response, Usage, UsageWindow};

/// Ends one turn in flight from another thread (a hard stop, a conversation's cancel).
pub(crate) type Abort = Arc<dyn Fn() + Send + Sync>;

/// One turn to answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TurnRequest<'a> {
    pub prompt: &'a str,
    /// How long the whole turn may take.
    pub timeout: Duration,
    /// The session asked for a structured answer (a JSON schema).
    pub structured: bool,
}

/// What a backend reports while a turn runs, for the throttle, the cache gate and the
/// statistics, which must know at once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TurnEvent {
    /// A subscription usage window changed state (claude.ai logins only).
    UsageWindow(RateLimitInfo),
    /// The backend retries a failed API call on its own: one more request; a 429 or 529
    /// pauses the shared throttle for `delay`.
    Retry {
        status: Option<u16>,
        delay: Duration,
    },
    /// One more API call in the same turn (the model was asked again).
    ExtraCall,
    /// The turn's first answer began: from now on the prompt cache holds the request's
    /// prefix.
    Began,
    /// The API said how much room its rate limits have left (its response headers).
    #[cfg_attr(not(feature = "api"), allow(dead_code))]
    Limits(ServerLimits),
    /// The API said to send nothing for this long (`retry-after` on a 429 or 529): every
    /// worker on the throttle holds off.
    #[cfg_attr(not(feature = "api"), allow(dead_code))]
    RetryAfter(Duration),
}

/// What is left of one of the API's rate limits, as a response's headers said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LimitLeft {
    pub limit: Option<u64>,
    pub remaining: u64,
    /// When the limit is whole again.
    pub resets_at: Option<SystemTime>,
}

/// The API's rate limits as one response reported them (`anthropic-ratelimit-*`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ServerLimits {
    pub requests: Option<LimitLeft>,
    /// The most restrictive token limit in force.
    pub tokens: Option<LimitLeft>,
    pub input_tokens: Option<LimitLeft>,
    pub output_tokens: Option<LimitLeft>,
}

/// What a turn that did not answer cost, as the backend learned it (a crash or a timeout
/// reports nothing: 0).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Billed {
    pub cost_usd: f64,
    pub usage: Usage,
}

/// A turn that did not answer.
#[derive(Debug)]
pub(crate) struct TurnFailure {
    pub error: Error,
    pub billed: Billed,
    /// Whether anything may have reached the API. `false`: the throttle's permit is given
    /// back whole and no request is counted.
    pub sent: bool,
    /// The call could not connect at all (not a stream cut midway): a few in a row make
    /// [`Error::ApiUnreachable`].
    pub unreachable: bool,
}

/// A connection that answers turns: a leased CLI process. Dropping it gives it back.
pub(crate) trait Conn: Send + fmt::Debug {
    /// Run one turn; `events` sees what the backend does on the way.
    fn turn(
        &mut self,
        request: &TurnRequest<'_>,
        events: &mut dyn FnMut(TurnEvent),
    ) -> Result<Response, TurnFailure>;

    /// Ends a turn in flight from another thread.
    fn abort_handle(&self) -> Abort;

    /// Kept across turns by a conversation: a close does not wait for it, and whoever uses
    /// it next starts from a fresh context.
    fn hold(&mut self);

    /// The next turn continues this one's context (a conversation's next turn).
    fn keep_context(&mut self);

    /// Whether it can take another turn (a conversation is lost when not).
    fn is_reusable(&mut self) -> bool;
}

/// What, besides the prompt, decides an answer, hashed (the journal's key); `Err` says why
/// it cannot be known, and a journal then refuses the session.
pub(crate) type AnswerSettings = Result<String, String>;

/// A session's backend, ready to answer (no connection made yet).
pub(crate) struct Started {
    pub backend: Box<dyn Backend>,
    /// The CLI executable, for the CLI backend.
    pub program: Option<PathBuf>,
    pub answer_settings: AnswerSettings,
    /// The model the backend asks for, as the API names it, when it knows (prices by it).
    pub model: Option<String>,
}

/// What [`Backend::checkout`] gives.
pub(crate) enum Checkout {
    Ready(Box<dyn Conn>),
    /// The wait for a free connection ended because `should_stop` said so.
    Stopped,
}

/// What the backend reports into [`Stats`](crate::Stats).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BackendStats {
    pub processes_started: u64,
    pub processes_live: u64,
    pub processes_recycled: u64,
}

/// Whatever answers turns for a session.
pub(crate) trait Backend: Send + Sync + fmt::Debug {
    /// A connection: a free one, a new one if there is room, or the first to come free,
    /// waiting until then unless `should_stop()` (asked again on every [`wake`](Self::wake)).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`close`](Self::close), or why a connection could not be made.
    fn checkout(&self, should_stop: &dyn Fn() -> bool) -> Result<Checkout, Error>;

    /// Make waiting checkouts ask their `should_stop` again (a run's stop changed).
    fn wake(&self);

    /// Tokens a request carries besides the prompt and the system prompt, for the
    /// throttle's estimate.
    fn request_overhead_tokens(&self) -> u64;

    /// The most output tokens one call may write, when the backend sets it (for a cost
    /// estimate's ceiling); `None` when another program decides (the CLI).
    fn max_output_tokens(&self) -> Option<u64> {
        None
    }

    /// End every connection and refuse new checkouts: idle ones cleanly, busy ones at once;
    /// turns in flight are waited for up to `settle`.
    fn close(&self, settle: Duration);

    /// After the session's items have ended: let go of what outlived the connections (the
    /// CLI's private folder).
    fn release(&self);

    fn stats(&self) -> BackendStats;

    /// The backend's batch submission, when it answers items in batches (the Message
    /// Batches API); `checkout` then still answers what cannot wait for a batch (the one
    /// request that warms the prompt cache first).
    fn batches(&self) -> Option<&dyn batch::BatchApi> {
        None
    }
}

/// How a usage window stands (`status`, `overageStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WindowStatus {
    Allowed,
    /// Past a warning threshold, still allowed.
    Warning,
    /// Used up: calls are refused until it resets.
    Rejected,
    /// A status this crate does not know (a newer CLI).
    Other(String),
}

/// A subscription usage window's state, as a backend reported it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RateLimitInfo {
    pub status: WindowStatus,
    /// When the window resets, in seconds since the UNIX epoch.
    pub resets_at: Option<u64>,
    pub window: UsageWindow,
    /// The share of the window used, 0 to 1.
    pub utilization: Option<f64>,
    /// The warning threshold that was passed, 0 to 1.
    pub surpassed_threshold: Option<f64>,
    pub overage_status: Option<WindowStatus>,
    pub overage_resets_at: Option<u64>,
    pub overage_disabled_reason: Option<String>,
    /// `credits_required` when the account has no credit left.
    pub error_code: Option<String>,
}

impl RateLimitInfo {
    /// When the window resets, if the backend said.
    pub(crate) fn resets_at(&self) -> Option<SystemTime> {
        self.resets_at
            .or(self.overage_resets_at)
            .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
    }

    /// Whether this rejection is a spend cap (no reset within the run), not a window that
    /// resets.
    pub(crate) fn is_spend_cap(&self) -> bool {
        self.error_code.as_deref() == Some("credits_required")
            || (self.window == UsageWindow::Overage
                && matches!(
                    self.overage_disabled_reason.as_deref(),
                    Some("org_level_disabled_until" | "org_spend_cap_reached" | "out_of_credits")
                ))
    }
}
