//! Settings that take one of a fixed list of values.

use std::fmt;

/// How hard the model thinks (`--effort`), from cheapest to most thorough.
///
/// # Examples
///
/// ```
/// use claude_rayon::{Effort, Session};
///
/// let builder = Session::builder().model("sonnet").effort(Effort::Low);
/// assert_eq!(Effort::Low.to_string(), "low");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Effort {
    /// `low`
    Low,
    /// `medium`
    Medium,
    /// `high`
    High,
    /// `xhigh`
    ExtraHigh,
    /// `max`
    Max,
}

impl Effort {
    /// The value the CLI takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
            Effort::ExtraHigh => "xhigh",
            Effort::Max => "max",
        }
    }
}

impl fmt::Display for Effort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the model may do without asking (`--permission-mode`). Matters only when tools are
/// on ([`SessionBuilder::tools`](crate::SessionBuilder::tools)).
///
/// # Examples
///
/// ```
/// use claude_rayon::{PermissionMode, Session};
///
/// let builder = Session::builder().tools(["Read"]).permission_mode(PermissionMode::Plan);
/// assert_eq!(PermissionMode::AcceptEdits.to_string(), "acceptEdits");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PermissionMode {
    /// `default`: ask before anything that needs permission (in `-p` mode: refuse it).
    Default,
    /// `acceptEdits`: file edits without asking.
    AcceptEdits,
    /// `auto`: the CLI decides.
    Auto,
    /// `bypassPermissions`: everything without asking.
    BypassPermissions,
    /// `dontAsk`: refuse what would need asking.
    DontAsk,
    /// `plan`: plan only, change nothing.
    Plan,
}

impl PermissionMode {
    /// The value the CLI takes.
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionMode::Default => "default",
            PermissionMode::AcceptEdits => "acceptEdits",
            PermissionMode::Auto => "auto",
            PermissionMode::BypassPermissions => "bypassPermissions",
            PermissionMode::DontAsk => "dontAsk",
            PermissionMode::Plan => "plan",
        }
    }
}

impl fmt::Display for PermissionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
