//! The settings only the Messages API backend understands, set through
//! [`SessionBuilder::api`](crate::SessionBuilder::api).

use std::fmt;

/// The API version this crate speaks (the `anthropic-version` header).
pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Where the API is when neither `base_url` nor `ANTHROPIC_BASE_URL` says.
pub(crate) const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// Output tokens one call may write before it is asked to go on.
const DEFAULT_MAX_TOKENS: u32 = 8192;
/// How many times an answer cut at `max_tokens` is asked to go on.
const DEFAULT_MAX_CONTINUATIONS: u32 = 3;

/// Settings of the Messages API backend ([`Backend::MessagesApi`](crate::Backend)), set
/// through [`SessionBuilder::api`](crate::SessionBuilder::api).
///
/// # Examples
///
/// ```
/// use claude_rayon::{Backend, Session};
///
/// let builder = Session::builder()
///     .backend(Backend::MessagesApi)
///     .api_key("sk-ant-secret")
///     .api(|a| a.max_tokens(2048).max_continuations(1));
/// // The key never shows:
/// assert!(!format!("{builder:?}").contains("sk-ant-secret"));
/// ```
#[derive(Clone)]
#[must_use]
pub struct ApiOptions {
    pub(crate) api_key: Option<String>,
    pub(crate) base_url: Option<String>,
    pub(crate) max_tokens: u32,
    pub(crate) max_continuations: u32,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            api_key: None,
            base_url: None,
            max_tokens: DEFAULT_MAX_TOKENS,
            max_continuations: DEFAULT_MAX_CONTINUATIONS,
        }
    }
}

impl ApiOptions {
    /// The API key (`x-api-key`); without it, `ANTHROPIC_API_KEY` is read at `build()`. It is
    /// sent to the API only, and never shows in logs, errors or `Debug` output.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Where the API is; without it, `ANTHROPIC_BASE_URL`, else `https://api.anthropic.com`.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The most output tokens one call may write (`max_tokens`, default 8,192). An answer
    /// cut there is asked to go on (see [`max_continuations`](Self::max_continuations)).
    pub fn max_tokens(mut self, tokens: u32) -> Self {
        self.max_tokens = tokens;
        self
    }

    /// How many times an answer cut at `max_tokens` is asked to go on (default 3); past
    /// that it is [`Error::Truncated`](crate::Error::Truncated), with the part that came.
    /// `0` never asks.
    pub fn max_continuations(mut self, continuations: u32) -> Self {
        self.max_continuations = continuations;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        if self.max_tokens == 0 {
            return Err(crate::Error::InvalidConfig(
                "api max_tokens must be at least 1".into(),
            ));
        }
        if let Some(url) = &self.base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(crate::Error::InvalidConfig(format!(
                    "base_url must start with http:// or https://, not {:?}",
                    crate::error::shorten(url, 80)
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ApiOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiOptions")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("base_url", &self.base_url)
            .field("max_tokens", &self.max_tokens)
            .field("max_continuations", &self.max_continuations)
            .finish()
    }
}
