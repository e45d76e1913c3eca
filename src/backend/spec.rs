//! What every backend is told about answers: the model, the prompts around each item, the
//! schema and the effort (CLI flags today; a Messages request body later). Below the session,
//! so that a backend reads it without naming the session's settings.

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

/// What decides an answer besides the item, whatever answers it.
#[derive(Clone, Debug, Default)]
pub(crate) struct AnswerSpec {
    pub model: Option<String>,
    /// `None`: not given, so the backend's default (the CLI's is the empty prompt, unless
    /// its own is kept).
    pub system_prompt: Option<String>,
    pub append_system_prompt: Option<String>,
    pub json_schema: Option<serde_json::Value>,
    pub effort: Option<Effort>,
}

impl AnswerSpec {
    /// The tokens every item's request shares ahead of the item (system prompts), estimated
    /// at four bytes a token; a backend's own request overhead is not counted.
    pub(crate) fn shared_prefix_tokens(&self) -> u64 {
        let bytes = self.system_prompt.as_ref().map_or(0, String::len)
            + self.append_system_prompt.as_ref().map_or(0, String::len);
        bytes as u64 / 4
    }
}
