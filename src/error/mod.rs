//! The one error type of the crate, with enough context to act on.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod cli;

pub use cli::CliError;

/// Everything that can go wrong between a prompt and its [`Response`](crate::Response).
///
/// Errors are cheap to clone (I/O errors sit behind an [`Arc`]) so that one failure can be
/// reported to every item it affected. Secrets given through
/// [`CliOptions::env`](crate::CliOptions::env) are redacted from every message.
///
/// # Examples
///
/// ```
/// use claude_rayon::Error;
///
/// let err = Error::Api { status: Some(529), message: "Overloaded".into() };
/// assert!(err.is_retryable());
/// assert_eq!(err.to_string(), "API error (status 529): Overloaded");
/// ```
#[derive(Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Claude Code CLI backend failed: the `claude` program could not be found, checked
    /// or started, or one of its processes died, garbled its output or ended an item its own
    /// way (see [`CliError`]). Its message is the [`CliError`]'s.
    #[error(transparent)]
    Cli(#[from] CliError),

    /// A prompt was empty or only white space; the CLI would drop it and the model would
    /// answer something else, so it is refused without a call.
    #[error("the prompt is empty or only white space; nothing was sent")]
    EmptyPrompt,

    /// The settings given to a builder are invalid or contradict each other.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// An item ran longer than the configured timeout; its process was killed and replaced.
    #[error("the item timed out after {0:?}; its claude process was killed")]
    Timeout(Duration),

    /// The Messages API returned an error (on the CLI backend, after the CLI's own retries).
    #[error("API error{}: {message}", .status.map(|s| format!(" (status {s})")).unwrap_or_default())]
    Api {
        /// The HTTP status the API answered with, when the CLI reported one.
        status: Option<u16>,
        /// The CLI's message.
        message: String,
    },

    /// Calls in a row could not connect to the API at all (no network, connection refused,
    /// name not found; on the CLI backend, each after the CLI's own retries). Every item
    /// would fail the same way, so a run stops.
    #[error(
        "the API cannot be reached: {failures} calls in a row could not connect (last: \
         {message}). Check the network, a proxy (HTTPS_PROXY), ANTHROPIC_BASE_URL or \
         base_url(..) if you set one, and a firewall"
    )]
    ApiUnreachable {
        /// What the CLI said for the last call.
        message: String,
        /// Calls in a row that failed to connect.
        failures: u32,
    },

    /// A conversation's process died after earlier turns, taking their context with it; a
    /// new turn would be answered without it, so it is refused. Start a new conversation.
    #[error("the conversation lost its context after {turns} turns (its process died); start a new conversation")]
    ConversationLost {
        /// Turns that had been answered in the lost context.
        turns: u32,
    },

    /// The model refused to answer this item (`stop_reason: refusal`, for example under the
    /// usage policy). An answer about the content: not retried.
    #[error("the model refused to answer this item: {message}")]
    Refused {
        /// The CLI's message.
        message: String,
    },

    /// The API does not know the model or this key may not use it (HTTP 404). Every item
    /// would fail the same way, so a run stops.
    #[error(
        "the model is not available: {message} (check SessionBuilder::model; `claude --model` \
         lists what your account can use)"
    )]
    ModelNotFound {
        /// The CLI's message, naming the model.
        message: String,
    },

    /// The answer was cut at the output limit (`max_tokens`) or where the model's context
    /// window ran out (`model_context_window_exceeded`), and not completed; the part that
    /// came is kept here rather than returned as if whole.
    #[error("the answer was cut at a limit ({stop_reason}); {} bytes came", .partial.len())]
    Truncated {
        /// The stop reason the API gave.
        stop_reason: String,
        /// The text that came before the cut.
        partial: String,
    },

    /// The answer did not finish: its call's stream ended before the API said why it stopped
    /// (`stop_reason` `None`: a gateway or the network cut it, and the CLI took the part for
    /// the answer), or the API paused the turn (`pause_turn`), which the CLI does not resume.
    /// The part that came is kept here rather than returned as if whole. Retryable: the next
    /// try is likely to finish.
    ///
    /// ```
    /// use claude_rayon::Error;
    ///
    /// let cut = Error::IncompleteAnswer { stop_reason: None, partial: "The boots left".into() };
    /// assert!(cut.is_retryable());
    /// assert!(cut.to_string().contains("ended before the API said"));
    /// ```
    #[error("the answer did not finish ({}); {} bytes came",
        describe_unfinished(.stop_reason.as_deref()), .partial.len())]
    IncompleteAnswer {
        /// The stop reason the API gave (`pause_turn`), or `None` when none came.
        stop_reason: Option<String>,
        /// The text that came.
        partial: String,
    },

    /// A subscription (claude.ai login) usage window is used up: the CLI reported the window
    /// `rejected` and the call failed with HTTP 429. A session waits for the reset by
    /// itself, pausing every item (see
    /// [`SessionBuilder::max_usage_limit_wait`](crate::SessionBuilder::max_usage_limit_wait));
    /// this error comes when the reset is further away than that setting allows. Every item
    /// would fail the same way, so a run stops.
    ///
    /// ```
    /// use claude_rayon::{Error, UsageWindow};
    ///
    /// let limit = Error::UsageLimitReached {
    ///     window: UsageWindow::FiveHour,
    ///     resets_at: None,
    ///     message: "You've hit your 5-hour limit".into(),
    /// };
    /// assert!(limit.is_fatal() && !limit.is_retryable());
    /// assert!(limit.to_string().contains("five-hour"));
    /// ```
    #[error(
        "the subscription's {window} usage limit is reached{}: {message}. \
         SessionBuilder::max_usage_limit_wait sets how long a session waits for a reset",
        .resets_at.map(|t| format!(" (it resets at {})", utc_time(t))).unwrap_or_default()
    )]
    UsageLimitReached {
        /// The window that is used up.
        window: UsageWindow,
        /// When the CLI said it resets, if it said (and said something sane).
        resets_at: Option<SystemTime>,
        /// The CLI's message ("You've hit your 5-hour limit · resets 3pm").
        message: String,
    },

    /// The spend limit is reached: a subscription's spend cap ("You've hit your monthly spend
    /// limit", out of usage credits) or, with an API key, the organisation's spend limit or
    /// credit balance. No reset within the run, so it stops, without retries or a pause.
    #[error(
        "the spending limit is reached: {message}. Raise it (claude.ai/settings/usage for a \
         subscription, the Console's limits and billing for an API key) or ask your \
         organisation's admin"
    )]
    SpendLimitReached {
        /// The CLI's message.
        message: String,
    },

    /// The API rejected the credentials (HTTP 401 or an auth failure).
    #[error(
        "authentication failed: {message}. On the CLI backend log in with `claude` (then \
         /login), or set ANTHROPIC_API_KEY for the process (SessionBuilder::cli(|c| c.env(..))); \
         on the Messages API backend check ANTHROPIC_API_KEY or SessionBuilder::api_key"
    )]
    Authentication {
        /// The CLI's message.
        message: String,
    },

    /// A `json_schema` was set but the answer carried no structured output.
    #[error(
        "a json_schema was set but the answer has no structured output; answer text: {text:?}"
    )]
    StructuredOutputMissing {
        /// The plain text the model gave instead (shortened).
        text: String,
    },

    /// The structured output did not match what was asked for.
    #[error("invalid structured output: {0}")]
    StructuredOutputInvalid(String),

    /// A prompt closure or a user callback panicked while handling the item.
    #[error("panicked: {0}")]
    Panicked(String),

    /// The run was cancelled before this item started.
    #[error("cancelled before the item started")]
    Cancelled,

    /// An earlier fatal error stopped the run before this item started.
    #[error("not started: the run was stopped by an earlier fatal error: {0}")]
    Stopped(Box<Error>),

    /// The session's `max_budget_usd` is spent; no further calls are made.
    #[error("budget spent: {spent_usd:.4} USD of {budget_usd:.4} USD used or reserved")]
    BudgetExceeded {
        /// The configured budget.
        budget_usd: f64,
        /// What was spent or reserved when this item was refused.
        spent_usd: f64,
    },

    /// This item alone would cost more than is left of the session's `max_budget_usd` (its
    /// prompt's input tokens at the model's price): it was not sent. Only this item fails;
    /// the budget is not spent by the refusal, and smaller items go on.
    #[error(
        "this item alone would cost about {estimate_usd:.4} USD, more than the {left_usd:.4} USD \
         left of the {budget_usd:.4} USD budget: it was not sent (other items go on)"
    )]
    ItemOverBudget {
        /// What this item's prompt would cost at least.
        estimate_usd: f64,
        /// What was left of the budget (not spent or reserved) when it was refused.
        left_usd: f64,
        /// The configured budget.
        budget_usd: f64,
    },

    /// A strict answer (a yes/no verdict or a category) was not one of the allowed tokens.
    #[error("answer {answer:?} is not one of the allowed answers ({})", .allowed.join(", "))]
    InvalidAnswer {
        /// What the model said (shortened).
        answer: String,
        /// What it was allowed to say.
        allowed: Vec<String>,
    },

    /// An I/O error talking to the CLI.
    #[error("I/O error talking to the claude process: {0}")]
    Io(#[source] Arc<std::io::Error>),

    /// The session was closed.
    #[error("the session is closed")]
    Closed,

    /// Another program (or another `Journal` in this one) has this journal open; two writers
    /// would interleave their records.
    #[error(
        "the journal {} is in use by another program (or another Journal::open in this one); \
         share one Journal (it is Clone) or use another file",
        .path.display()
    )]
    JournalLocked {
        /// The journal's path.
        path: PathBuf,
    },

    /// A journal could not be opened, read or written.
    #[error("journal {}: {message}", .path.display())]
    Journal {
        /// The journal's path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// The Message Batches API did not process this item's request before its batch's 24
    /// hours ran out (not billed). Retryable: a follow-up batch asks again.
    ///
    /// ```
    /// use claude_rayon::Error;
    /// assert!(Error::BatchExpired { batch_id: "msgbatch_01".into() }.is_retryable());
    /// ```
    #[error("the batch {batch_id} expired (24 hours) before this request was processed")]
    BatchExpired {
        /// The batch the request was in.
        batch_id: String,
    },

    /// The Message Batches API refused a whole batch as invalid (HTTP 400 on its creation):
    /// nothing in it was created. Every later batch of the run would be built the same way,
    /// so the run stops.
    ///
    /// ```
    /// use claude_rayon::Error;
    /// let e = Error::BatchRejected { message: "requests.0.params.max_tokens: too large".into() };
    /// assert!(e.is_fatal() && !e.is_retryable());
    /// assert!(e.to_string().contains("max_tokens"));
    /// ```
    #[error("the Message Batches API refused the batch: {message}")]
    BatchRejected {
        /// The API's reason.
        message: String,
    },

    /// A store shared between programs (Redis, feature `redis`) could not be reached or
    /// refused a command, where waiting for it was not an option (opening it, reading a
    /// stream). The address carries no password.
    #[error("the shared store at {address}: {message}")]
    SharedStore {
        /// Where the store is, without credentials.
        address: String,
        /// What went wrong.
        message: String,
    },

    /// The shared budget's state in Redis (feature `redis`) is gone after this program had
    /// seen it: the server restarted without persistence, or evicted or flushed its keys.
    /// What every program spent is unknown, so no further call is made rather than counting
    /// again from zero past the cap. The store must persist (docs/scaling-out.md); a new cap
    /// starts under a new name. The address carries no password.
    #[error(
        "the shared budget `{name}` at {address} lost its state (Redis restarted without \
         persistence, or its keys were evicted or flushed): what was spent is unknown, so no \
         further calls are made"
    )]
    SharedBudgetLost {
        /// The budget's name, as given to `SharedBudget::redis`.
        name: String,
        /// Where the store is, without credentials.
        address: String,
    },
}

impl Error {
    /// Whether trying the same item again may succeed: rate limits (429), overload (529),
    /// server errors (5xx), API errors without a status (cut streams), answers that did not
    /// finish, timeouts and crashed or garbled processes. Client errors (400, 401), `max_turns`, invalid answers and
    /// configuration errors are not retryable.
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::Error;
    /// assert!(Error::Api { status: Some(429), message: String::new() }.is_retryable());
    /// assert!(!Error::Api { status: Some(400), message: String::new() }.is_retryable());
    /// assert!(!Error::Authentication { message: String::new() }.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api { status, .. } => match status {
                None => true,
                Some(s) => *s == 408 || *s == 409 || *s == 429 || *s >= 500,
            },
            Error::Cli(cli) => cli.is_retryable(),
            Error::Timeout(_)
            | Error::Io(_)
            | Error::IncompleteAnswer { .. }
            | Error::BatchExpired { .. } => true,
            _ => false,
        }
    }

    /// Whether this error means no other item can succeed either (bad credentials, a spent
    /// budget, a missing CLI), so a run should stop instead of trying the rest.
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::Error;
    ///
    /// assert!(Error::Authentication { message: "invalid x-api-key".into() }.is_fatal());
    /// assert!(!Error::Timeout(std::time::Duration::from_secs(60)).is_fatal());
    /// ```
    pub fn is_fatal(&self) -> bool {
        match self {
            Error::Cli(cli) => cli.is_fatal(),
            Error::Authentication { .. }
            | Error::BudgetExceeded { .. }
            | Error::ModelNotFound { .. }
            | Error::ApiUnreachable { .. }
            | Error::UsageLimitReached { .. }
            | Error::SpendLimitReached { .. }
            | Error::InvalidConfig(_)
            | Error::BatchRejected { .. }
            | Error::SharedBudgetLost { .. }
            | Error::Closed => true,
            _ => false,
        }
    }

    /// The HTTP status of an API error, if the CLI reported one.
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::Error;
    ///
    /// let overloaded = Error::Api { status: Some(529), message: "Overloaded".into() };
    /// assert_eq!(overloaded.api_status(), Some(529));
    /// assert_eq!(Error::Cancelled.api_status(), None);
    /// ```
    pub fn api_status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => *status,
            Error::Authentication { .. } => Some(401),
            Error::ModelNotFound { .. } => Some(404),
            Error::UsageLimitReached { .. } | Error::SpendLimitReached { .. } => Some(429),
            _ => None,
        }
    }

    pub(crate) fn io(err: std::io::Error) -> Error {
        Error::Io(Arc::new(err))
    }
}

/// `?` in `fn main() -> Result<(), Error>` prints an error's `Debug` form, so it carries the
/// whole message with its hint (how to install, how to log in), after the variant's name.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {self}", self.kind())
    }
}

impl Error {
    fn kind(&self) -> &'static str {
        match self {
            Error::Cli(cli) => cli.kind(),
            Error::EmptyPrompt => "EmptyPrompt",
            Error::InvalidConfig(..) => "InvalidConfig",
            Error::Timeout(..) => "Timeout",
            Error::Api { .. } => "Api",
            Error::ApiUnreachable { .. } => "ApiUnreachable",
            Error::ConversationLost { .. } => "ConversationLost",
            Error::Refused { .. } => "Refused",
            Error::ModelNotFound { .. } => "ModelNotFound",
            Error::Truncated { .. } => "Truncated",
            Error::IncompleteAnswer { .. } => "IncompleteAnswer",
            Error::UsageLimitReached { .. } => "UsageLimitReached",
            Error::SpendLimitReached { .. } => "SpendLimitReached",
            Error::Authentication { .. } => "Authentication",
            Error::StructuredOutputMissing { .. } => "StructuredOutputMissing",
            Error::StructuredOutputInvalid(..) => "StructuredOutputInvalid",
            Error::Panicked(..) => "Panicked",
            Error::Cancelled => "Cancelled",
            Error::Stopped(..) => "Stopped",
            Error::BudgetExceeded { .. } => "BudgetExceeded",
            Error::ItemOverBudget { .. } => "ItemOverBudget",
            Error::InvalidAnswer { .. } => "InvalidAnswer",
            Error::Io(..) => "Io",
            Error::Closed => "Closed",
            Error::JournalLocked { .. } => "JournalLocked",
            Error::Journal { .. } => "Journal",
            Error::BatchExpired { .. } => "BatchExpired",
            Error::BatchRejected { .. } => "BatchRejected",
            Error::SharedStore { .. } => "SharedStore",
            Error::SharedBudgetLost { .. } => "SharedBudgetLost",
        }
    }
}

/// A subscription usage window, as the CLI names it in its `rate_limit_event`
/// (`rateLimitType`).
///
/// # Examples
///
/// ```
/// use claude_rayon::UsageWindow;
///
/// assert_eq!(UsageWindow::FiveHour.to_string(), "five-hour");
/// assert_eq!(UsageWindow::Other("ten_day".into()).to_string(), "ten_day");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UsageWindow {
    /// The five-hour session window (`five_hour`).
    FiveHour,
    /// The weekly window (`seven_day`).
    SevenDay,
    /// The weekly window of Opus models (`seven_day_opus`).
    SevenDayOpus,
    /// The weekly window of Sonnet models (`seven_day_sonnet`).
    SevenDaySonnet,
    /// The weekly window with overage included (`seven_day_overage_included`).
    SevenDayOverageIncluded,
    /// Paid usage beyond the plan (`overage`).
    Overage,
    /// A window this crate does not know (a newer CLI), by the CLI's name; empty when the CLI
    /// named none.
    Other(String),
}

impl UsageWindow {
    /// The window the CLI calls `name`.
    pub(crate) fn from_cli_name(name: &str) -> UsageWindow {
        match name {
            "five_hour" => UsageWindow::FiveHour,
            "seven_day" => UsageWindow::SevenDay,
            "seven_day_opus" => UsageWindow::SevenDayOpus,
            "seven_day_sonnet" => UsageWindow::SevenDaySonnet,
            "seven_day_overage_included" => UsageWindow::SevenDayOverageIncluded,
            "overage" => UsageWindow::Overage,
            other => UsageWindow::Other(other.to_string()),
        }
    }
}

impl fmt::Display for UsageWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UsageWindow::FiveHour => "five-hour",
            UsageWindow::SevenDay => "weekly",
            UsageWindow::SevenDayOpus => "weekly Opus",
            UsageWindow::SevenDaySonnet => "weekly Sonnet",
            UsageWindow::SevenDayOverageIncluded => "weekly (overage included)",
            UsageWindow::Overage => "overage",
            UsageWindow::Other(name) if name.is_empty() => "unnamed",
            UsageWindow::Other(name) => name,
        })
    }
}

/// `time` as `YYYY-MM-DD HH:MM:SS UTC` (no time-zone database here: UTC is always right).
pub(crate) fn utc_time(time: SystemTime) -> String {
    let secs = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs(),
        Err(_) => return "before 1970".into(),
    };
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil, for days since 1970-01-01.
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
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

fn describe_unfinished(stop_reason: Option<&str>) -> String {
    match stop_reason {
        None => "its stream ended before the API said it was done".into(),
        Some("pause_turn") => "the API paused the turn (pause_turn)".into(),
        Some(other) => format!("stop_reason {other}"),
    }
}

/// Shorten `text` to at most `max` bytes (on a char boundary), marking the cut.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_by_status() {
        let api = |s| Error::Api {
            status: s,
            message: String::new(),
        };
        assert!(api(Some(429)).is_retryable());
        assert!(api(Some(529)).is_retryable());
        assert!(api(Some(500)).is_retryable());
        assert!(api(None).is_retryable());
        assert!(!api(Some(400)).is_retryable());
        assert!(!api(Some(404)).is_retryable());
        assert!(Error::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(!Error::Cli(CliError::MaxTurns { turns: 1 }).is_retryable());
        assert!(!Error::StructuredOutputInvalid("x".into()).is_retryable());
    }

    #[test]
    fn fatal_errors() {
        assert!(Error::Authentication {
            message: String::new()
        }
        .is_fatal());
        assert!(!Error::Timeout(Duration::from_secs(1)).is_fatal());
    }

    #[test]
    fn not_found_says_how_to_install() {
        let e = Error::Cli(CliError::NotFound {
            searched: vec![PathBuf::from("/usr/bin/claude")],
        });
        let s = e.to_string();
        assert!(
            s.contains("/usr/bin/claude") && s.contains("npm install"),
            "{s}"
        );
    }

    #[test]
    fn shorten_respects_char_boundaries() {
        let s = "ééééé";
        let out = shorten(s, 3);
        assert!(out.starts_with('é') && out.contains("10 bytes"), "{out}");
        assert_eq!(shorten("abc", 10), "abc");
    }

    #[test]
    fn debug_carries_the_message_and_its_hint() {
        let e = Error::Cli(CliError::NotFound {
            searched: vec![PathBuf::from("/x/claude")],
        });
        let debug = format!("{e:?}");
        assert!(debug.starts_with("Cli::NotFound: "), "{debug}");
        assert!(debug.contains("npm install"), "{debug}");
        let auth = format!(
            "{:?}",
            Error::Authentication {
                message: "401".into()
            }
        );
        assert!(auth.contains("ANTHROPIC_API_KEY"), "{auth}");
    }

    /// Grouped under `Error::Cli`, a CLI error still says the same on its own and inside, and
    /// still leads to what the operating system said.
    #[test]
    fn a_cli_error_reads_the_same_inside_an_error() {
        use std::error::Error as _;
        let spawn = CliError::Spawn {
            path: PathBuf::from("/x/claude"),
            source: Arc::new(std::io::Error::from_raw_os_error(libc::ENOENT)),
        };
        let outer = Error::from(spawn.clone());
        assert_eq!(outer.to_string(), spawn.to_string());
        assert_eq!(format!("{outer:?}"), format!("{spawn:?}"));
        let source = outer.source().expect("the OS error").to_string();
        assert_eq!(
            source,
            std::io::Error::from_raw_os_error(libc::ENOENT).to_string()
        );
    }

    #[test]
    fn utc_times_are_civil_dates() {
        let at = |secs| utc_time(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_796_256_415), "2026-12-03 00:06:55 UTC");
    }

    #[test]
    fn usage_limits_are_fatal_and_not_retried() {
        let spend = Error::SpendLimitReached {
            message: "You've hit your monthly spend limit".into(),
        };
        assert!(spend.is_fatal() && !spend.is_retryable());
        assert_eq!(spend.api_status(), Some(429));
        let limit = Error::UsageLimitReached {
            window: UsageWindow::SevenDay,
            resets_at: Some(UNIX_EPOCH + Duration::from_secs(1_796_256_415)),
            message: "You've hit your weekly limit".into(),
        };
        let text = limit.to_string();
        assert!(
            text.contains("weekly") && text.contains("2026-12-03 00:06:55 UTC"),
            "{text}"
        );
        assert!(format!("{limit:?}").starts_with("UsageLimitReached: "));
    }

    #[test]
    fn error_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Error>();
    }

    /// One of every variant, so that moving or grouping them (a backend seam) shows at once
    /// if any changes how it is treated.
    fn one_of_each() -> Vec<Error> {
        let io = || Arc::new(std::io::Error::other("disk"));
        let path = || PathBuf::from("/p");
        let text = || "t".to_string();
        vec![
            Error::Cli(CliError::NotFound {
                searched: vec![path()],
            }),
            Error::Cli(CliError::Unsupported {
                path: path(),
                version: text(),
                minimum: text(),
            }),
            Error::Cli(CliError::SimulatorNotServed {
                program: path(),
                detail: text(),
            }),
            Error::EmptyPrompt,
            Error::Cli(CliError::ContextNotReset(text())),
            Error::InvalidConfig(text()),
            Error::Cli(CliError::Spawn {
                path: path(),
                source: io(),
            }),
            Error::Cli(CliError::CannotStart {
                code: Some(1),
                stderr: text(),
            }),
            Error::Cli(CliError::TempFolder {
                path: path(),
                source: io(),
            }),
            Error::Cli(CliError::ProcessExited {
                code: Some(1),
                signal: None,
                stderr_tail: text(),
                killed_by_library: false,
            }),
            Error::Cli(CliError::Protocol {
                reason: text(),
                line: text(),
            }),
            Error::Timeout(Duration::from_secs(1)),
            Error::Api {
                status: Some(529),
                message: text(),
            },
            Error::Api {
                status: Some(400),
                message: text(),
            },
            Error::ApiUnreachable {
                message: text(),
                failures: 3,
            },
            Error::ConversationLost { turns: 2 },
            Error::Refused { message: text() },
            Error::ModelNotFound { message: text() },
            Error::Truncated {
                stop_reason: text(),
                partial: text(),
            },
            Error::IncompleteAnswer {
                stop_reason: None,
                partial: text(),
            },
            Error::UsageLimitReached {
                window: UsageWindow::FiveHour,
                resets_at: None,
                message: text(),
            },
            Error::SpendLimitReached { message: text() },
            Error::Authentication { message: text() },
            Error::Cli(CliError::MaxTurns { turns: 3 }),
            Error::Cli(CliError::Execution {
                subtype: text(),
                message: text(),
            }),
            Error::StructuredOutputMissing { text: text() },
            Error::StructuredOutputInvalid(text()),
            Error::Panicked(text()),
            Error::Cancelled,
            Error::Stopped(Box::new(Error::Cancelled)),
            Error::BudgetExceeded {
                budget_usd: 1.0,
                spent_usd: 1.0,
            },
            Error::ItemOverBudget {
                estimate_usd: 2.0,
                left_usd: 1.0,
                budget_usd: 1.0,
            },
            Error::InvalidAnswer {
                answer: text(),
                allowed: vec![text()],
            },
            Error::Io(io()),
            Error::Closed,
            Error::JournalLocked { path: path() },
            Error::Journal {
                path: path(),
                message: text(),
            },
            Error::BatchExpired { batch_id: text() },
            Error::BatchRejected { message: text() },
            Error::SharedStore {
                address: text(),
                message: text(),
            },
            Error::SharedBudgetLost {
                name: text(),
                address: text(),
            },
        ]
    }

    #[test]
    fn how_every_variant_is_treated_is_pinned() {
        let table: Vec<String> = one_of_each()
            .iter()
            .map(|e| {
                format!(
                    "{} retryable={} fatal={} status={:?}",
                    e.kind(),
                    e.is_retryable(),
                    e.is_fatal(),
                    e.api_status()
                )
            })
            .collect();
        let pinned = PINNED.lines().map(str::trim).filter(|l| !l.is_empty());
        assert_eq!(table, pinned.collect::<Vec<_>>(), "\n{}", table.join("\n"));
    }

    const PINNED: &str = "
    Cli::NotFound retryable=false fatal=true status=None
    Cli::Unsupported retryable=false fatal=true status=None
    Cli::SimulatorNotServed retryable=false fatal=true status=None
    EmptyPrompt retryable=false fatal=false status=None
    Cli::ContextNotReset retryable=true fatal=false status=None
    InvalidConfig retryable=false fatal=true status=None
    Cli::Spawn retryable=false fatal=false status=None
    Cli::CannotStart retryable=false fatal=true status=None
    Cli::TempFolder retryable=false fatal=true status=None
    Cli::ProcessExited retryable=true fatal=false status=None
    Cli::Protocol retryable=true fatal=false status=None
    Timeout retryable=true fatal=false status=None
    Api retryable=true fatal=false status=Some(529)
    Api retryable=false fatal=false status=Some(400)
    ApiUnreachable retryable=false fatal=true status=None
    ConversationLost retryable=false fatal=false status=None
    Refused retryable=false fatal=false status=None
    ModelNotFound retryable=false fatal=true status=Some(404)
    Truncated retryable=false fatal=false status=None
    IncompleteAnswer retryable=true fatal=false status=None
    UsageLimitReached retryable=false fatal=true status=Some(429)
    SpendLimitReached retryable=false fatal=true status=Some(429)
    Authentication retryable=false fatal=true status=Some(401)
    Cli::MaxTurns retryable=false fatal=false status=None
    Cli::Execution retryable=false fatal=false status=None
    StructuredOutputMissing retryable=false fatal=false status=None
    StructuredOutputInvalid retryable=false fatal=false status=None
    Panicked retryable=false fatal=false status=None
    Cancelled retryable=false fatal=false status=None
    Stopped retryable=false fatal=false status=None
    BudgetExceeded retryable=false fatal=true status=None
    ItemOverBudget retryable=false fatal=false status=None
    InvalidAnswer retryable=false fatal=false status=None
    Io retryable=true fatal=false status=None
    Closed retryable=false fatal=true status=None
    JournalLocked retryable=false fatal=false status=None
    Journal retryable=false fatal=false status=None
    BatchExpired retryable=true fatal=false status=None
    BatchRejected retryable=false fatal=true status=None
    SharedStore retryable=false fatal=false status=None
    SharedBudgetLost retryable=false fatal=true status=None
";
}
