//! The errors only the Claude Code CLI backend produces: finding, checking and starting the
//! `claude` program, its processes' private folder, its stream-json protocol, its context
//! reset and how its results end. They sit here, in the `error` layer, because
//! [`Error`](crate::Error) names them; a backend without a CLI never makes one.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// What went wrong in the Claude Code CLI backend: the `claude` program, its processes and
/// what they wrote. It always reaches you inside [`Error::Cli`](crate::Error::Cli), whose
/// message is this one's.
///
/// # Examples
///
/// ```
/// use claude_rayon::{CliError, Error};
///
/// let err = Error::from(CliError::MaxTurns { turns: 3 });
/// assert!(matches!(err, Error::Cli(CliError::MaxTurns { turns: 3 })));
/// assert!(!err.is_retryable() && !err.is_fatal());
/// assert_eq!(
///     err.to_string(),
///     "the item used up its max_turns (3 turns) without a final answer"
/// );
/// ```
#[derive(Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// No `claude` executable was found.
    #[error(
        "the claude CLI was not found (looked in: {}). Install it with \
         `npm install -g @anthropic-ai/claude-code`, or set CLAUDE_CODE_BIN or \
         SessionBuilder::cli(|c| c.cli_path(..)) to its path",
        display_paths(.searched)
    )]
    NotFound {
        /// Every place that was searched, in order.
        searched: Vec<PathBuf>,
    },

    /// The CLI found is too old (or does not say its version) for the flags that seal its
    /// processes; the library never runs it unsealed.
    #[error(
        "the claude CLI at {} reports version {version:?}, but claude-rayon needs {minimum} or \
         newer to seal its processes (no memory files, hooks, MCP servers, project settings \
         or @-file mentions). Update it with `npm install -g @anthropic-ai/claude-code@latest` \
         (or `claude update`)",
        .path.display()
    )]
    Unsupported {
        /// The executable that was checked.
        path: PathBuf,
        /// What `claude --version` printed (shortened), or why it could not be read.
        version: String,
        /// The oldest version this crate accepts.
        minimum: String,
    },

    /// [`SessionBuilder::simulated`](crate::SessionBuilder::simulated) runs the program
    /// itself again as the simulator, and it did not answer as one: its `main` does not call
    /// `claude_rayon::simulator::serve_if_requested()` first. Also what `build()` returns in
    /// the copy of the program started as the simulator, so that it never starts another.
    #[error(
        "{} did not answer as the claude-rayon simulator ({detail}): a session built with \
         SessionBuilder::simulated() runs this program again as the simulator, so the first \
         line of its `main` must be `claude_rayon::simulator::serve_if_requested();`",
        .program.display()
    )]
    SimulatorNotServed {
        /// The program that was (or is) started as the simulator.
        program: PathBuf,
        /// What happened instead of the simulator's answer.
        detail: String,
    },

    /// The CLI exited before it wrote anything, twice in the same way (the same exit code
    /// and the same words on stderr): it cannot start with this session's settings (a flag
    /// it does not know, `bypassPermissions` as root, a broken install). Every item would fail
    /// the same way, so a run stops; no request was sent.
    #[error(
        "the claude CLI cannot start with this session's settings: it exited{} before writing \
         anything, twice in the same way. It said: {stderr:?}",
        .code.map(|c| format!(" with code {c}")).unwrap_or_default()
    )]
    CannotStart {
        /// Its exit code.
        code: Option<i32>,
        /// What it wrote to stderr (the tail, secrets redacted).
        stderr: String,
    },

    /// The CLI could not be started.
    #[error("could not start {path}: {source}")]
    Spawn {
        /// The executable that failed to start.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: Arc<std::io::Error>,
    },

    /// The private working folder of the session's processes could not be made in the temp
    /// folder: it does not exist or cannot be written. Without `cwd`, a session makes one in
    /// `XDG_RUNTIME_DIR` when that is a folder, else in `TMPDIR` (else `/tmp`).
    #[error(
        "cannot make the claude processes' private working folder in {}: {source}. The folder \
         comes from XDG_RUNTIME_DIR when that is a folder, else TMPDIR, else /tmp: make it \
         exist and be writable, point TMPDIR elsewhere, or give SessionBuilder::cli(|c| c.cwd(..))",
        .path.display()
    )]
    TempFolder {
        /// The folder the private folder was to be made in.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: Arc<std::io::Error>,
    },

    /// The CLI process ended while an item was in flight.
    #[error("{} while an item was in flight; stderr: {stderr_tail:?}",
        describe_exit(*.code, *.signal, *.killed_by_library))]
    ProcessExited {
        /// Exit code, when it exited normally.
        code: Option<i32>,
        /// Signal number, when a signal ended it.
        signal: Option<i32>,
        /// The last lines the process wrote to stderr (secrets redacted).
        stderr_tail: String,
        /// The process closed its output (or stopped reading) but did not exit, so this
        /// library killed it; `signal` is then the library's own SIGKILL.
        killed_by_library: bool,
    },

    /// The CLI wrote something this crate cannot read as its stream-json protocol.
    #[error("protocol error: {reason}; line: {line:?}")]
    Protocol {
        /// What was wrong.
        reason: String,
        /// The offending line, shortened.
        line: String,
    },

    /// A process did not reset its context between two items (its `/clear` did not start a
    /// new conversation). The process was killed and replaced so that items never share
    /// context; the item is retried.
    #[error("the claude process did not reset its context between items ({0}); it was killed and replaced")]
    ContextNotReset(String),

    /// The conversation hit `max_turns` before a final answer.
    #[error("the item used up its max_turns ({turns} turns) without a final answer")]
    MaxTurns {
        /// Turns used.
        turns: u32,
    },

    /// The CLI stopped the item for a reason of its own (`error_during_execution` and others).
    #[error("the CLI failed the item ({subtype}): {message}")]
    Execution {
        /// The result's `subtype`.
        subtype: String,
        /// Whatever message came with it.
        message: String,
    },
}

impl CliError {
    /// See [`Error::is_retryable`](crate::Error::is_retryable).
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            // Only a shortage the system may recover from; a bad path, permissions or an
            // argument list over the limit fail the same way every time.
            CliError::Spawn { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::EAGAIN | libc::ENOMEM | libc::EMFILE | libc::ENFILE | libc::EINTR)
            ),
            CliError::ProcessExited { .. }
            | CliError::Protocol { .. }
            | CliError::ContextNotReset(_) => true,
            _ => false,
        }
    }

    /// See [`Error::is_fatal`](crate::Error::is_fatal).
    pub(crate) fn is_fatal(&self) -> bool {
        matches!(
            self,
            CliError::NotFound { .. }
                | CliError::Unsupported { .. }
                | CliError::CannotStart { .. }
                | CliError::TempFolder { .. }
                | CliError::SimulatorNotServed { .. }
        )
    }

    /// The name `Debug` shows before the message: where the variant is, under
    /// [`Error`](crate::Error).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            CliError::NotFound { .. } => "Cli::NotFound",
            CliError::Unsupported { .. } => "Cli::Unsupported",
            CliError::SimulatorNotServed { .. } => "Cli::SimulatorNotServed",
            CliError::CannotStart { .. } => "Cli::CannotStart",
            CliError::Spawn { .. } => "Cli::Spawn",
            CliError::TempFolder { .. } => "Cli::TempFolder",
            CliError::ProcessExited { .. } => "Cli::ProcessExited",
            CliError::Protocol { .. } => "Cli::Protocol",
            CliError::ContextNotReset(..) => "Cli::ContextNotReset",
            CliError::MaxTurns { .. } => "Cli::MaxTurns",
            CliError::Execution { .. } => "Cli::Execution",
        }
    }
}

/// The same "Kind: message" shape as [`Error`](crate::Error)'s `Debug`, so a `CliError` prints
/// alike on its own and inside an `Error`.
impl fmt::Debug for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {self}", self.kind())
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nowhere".into();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_exit(code: Option<i32>, signal: Option<i32>, killed_by_library: bool) -> String {
    if killed_by_library {
        return "the claude process stopped talking (its output closed or a write to it \
                failed) without exiting, so claude-rayon killed it"
            .into();
    }
    match (code, signal) {
        (Some(c), _) => format!("the claude process exited (exit code {c})"),
        (None, Some(s)) => format!("the claude process was killed by signal {s} from outside"),
        (None, None) => "the claude process exited (exit status unknown)".into(),
    }
}
