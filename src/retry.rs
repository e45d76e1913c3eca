//! Retrying failed items: how often, how long to wait, and which errors are worth it.
//!
//! # How the CLI's retries and ours share the work
//!
//! The CLI retries an API call on its own (`CLAUDE_CODE_MAX_RETRIES`, 10 by default, backing
//! off up to ~32 s; a 529 took 182 s to fail that way). Left at that, one overloaded item
//! holds a process for minutes and the rest of the batch learns nothing. This crate sets the
//! CLI's count to 2 (see [`CliOptions::cli_max_retries`](crate::CliOptions::cli_max_retries)):
//! short blips are absorbed inside the CLI, and its `api_retry` lines pause the shared
//! throttle at once, while longer trouble comes back to this crate, which retries the item
//! [`max_retries`](RetryPolicy::max_retries) times with exponential backoff and full jitter.
//!
//! A 429 or 529 also pauses the session's shared throttle, so that no worker sends a new
//! request while the API is refusing them: for the delay the CLI announces on its `api_retry`
//! lines (the API's `retry-after`, or the CLI's own backoff if longer), or, for a throttled
//! result that came without one, for a cooldown that doubles (from
//! [`initial_backoff`](RetryPolicy::initial_backoff) up to
//! [`max_backoff`](RetryPolicy::max_backoff)) with each throttled request sent after the
//! previous pause began, and starts over after a success.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::Error;

/// Decides which errors to retry and how long to wait before each retry.
///
/// The wait before retry `n` (1-based) is a random duration between zero and
/// `min(max_backoff, initial_backoff * multiplier^(n-1))` ("full jitter"), so that workers
/// that failed together do not retry together.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use claude_rayon::{CliError, Error, RetryPolicy};
///
/// let policy = RetryPolicy::default()
///     .max_retries(5)
///     .initial_backoff(Duration::from_millis(100))
///     .max_backoff(Duration::from_secs(10))
///     .retry_if(|e| e.is_retryable() || matches!(e, Error::Cli(CliError::MaxTurns { .. })));
/// assert!(policy.should_retry(&Error::Cli(CliError::MaxTurns { turns: 3 }), 1));
/// assert!(!policy.should_retry(&Error::Cli(CliError::MaxTurns { turns: 3 }), 6));
/// assert!(policy.backoff(3) <= Duration::from_millis(400));
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    /// How many times one item is tried again (default 3; 0 turns retries off).
    pub max_retries: u32,
    /// The ceiling of the first wait (default 1 s).
    pub initial_backoff: Duration,
    /// The largest ceiling any wait can have (default 60 s).
    pub max_backoff: Duration,
    /// How much the ceiling grows per retry (default 2).
    pub multiplier: f64,
    retryable: Arc<dyn Fn(&Error) -> bool + Send + Sync>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            retryable: Arc::new(Error::is_retryable),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::{Error, RetryPolicy};
    ///
    /// let overloaded = Error::Api { status: Some(529), message: "Overloaded".into() };
    /// assert!(RetryPolicy::default().should_retry(&overloaded, 1));
    /// assert!(!RetryPolicy::none().should_retry(&overloaded, 1));
    /// ```
    pub fn none() -> Self {
        RetryPolicy::default().max_retries(0)
    }

    /// Set how many times one item is tried again.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use claude_rayon::RetryPolicy;
    ///
    /// // Up to 5 retries; waits of at most 1, 2, 4, 8, then 10 seconds (each a random part).
    /// let patient = RetryPolicy::default()
    ///     .max_retries(5)
    ///     .initial_backoff(Duration::from_secs(1))
    ///     .multiplier(2.0)
    ///     .max_backoff(Duration::from_secs(10));
    /// assert_eq!(patient.ceiling(4), Duration::from_secs(8));
    /// assert_eq!(patient.ceiling(5), Duration::from_secs(10));
    /// assert!(patient.backoff(3) <= Duration::from_secs(4));
    /// ```
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Set the ceiling of the first wait.
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// Set the largest ceiling any wait can have.
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Set how much the ceiling grows per retry.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Choose which errors are retried (default: [`Error::is_retryable`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::{Error, RetryPolicy};
    ///
    /// // Also retry an answer cut at the output limit.
    /// let policy = RetryPolicy::default()
    ///     .retry_if(|e| e.is_retryable() || matches!(e, Error::Truncated { .. }));
    /// let cut = Error::Truncated { stop_reason: "max_tokens".into(), partial: String::new() };
    /// assert!(policy.should_retry(&cut, 1));
    /// ```
    pub fn retry_if(mut self, retryable: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.retryable = Arc::new(retryable);
        self
    }

    /// Whether an item that failed with `error` on attempt `attempt` (1-based) is tried again.
    /// Fatal errors ([`Error::is_fatal`]) are never retried.
    pub fn should_retry(&self, error: &Error, attempt: u32) -> bool {
        attempt <= self.max_retries && !error.is_fatal() && (self.retryable)(error)
    }

    /// The wait before retry `retry` (1-based): random, up to the exponential ceiling.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        Duration::try_from_secs_f64(ceiling.as_secs_f64() * random_unit()).unwrap_or(ceiling)
    }

    /// The exponential ceiling of the wait before retry `retry`, without jitter.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exp = self.multiplier.powi(retry.saturating_sub(1).min(64) as i32);
        let secs = (self.initial_backoff.as_secs_f64() * exp).min(self.max_backoff.as_secs_f64());
        // A `Duration::MAX` setting is longer than an f64 of seconds can bring back.
        Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(self.max_backoff)
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(Error::InvalidConfig(format!(
                "retry multiplier must be at least 1, not {}",
                self.multiplier
            )));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(Error::InvalidConfig(
                "initial_backoff is longer than max_backoff".into(),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("multiplier", &self.multiplier)
            .finish_non_exhaustive()
    }
}

/// The exponential cooldown after throttled results (429, 529) that carry no delay of the API's.
///
/// Escalation is per episode, not per result: requests that were already in flight when a
/// pause began come back throttled together, and counting each of them would turn one burst
/// of `concurrency` 429s into a pause `2^concurrency` times too long. Likewise only a success
/// sent after the pause began shows that the API has recovered.
#[derive(Default)]
pub(crate) struct Cooldown {
    state: Mutex<CooldownState>,
}

#[derive(Default)]
struct CooldownState {
    /// Pauses in a row without a success in between.
    level: u32,
    /// When the latest pause began.
    since: Option<Instant>,
}

impl Cooldown {
    /// A request sent at `sent_at` came back throttled at `now`: how long to pause.
    pub(crate) fn throttled(
        &self,
        policy: &RetryPolicy,
        sent_at: Instant,
        now: Instant,
    ) -> Duration {
        let mut s = self.state.lock();
        let same_episode = s.since.is_some_and(|since| sent_at < since);
        if !same_episode {
            s.level = s.level.saturating_add(1).min(32);
            s.since = Some(now);
        }
        policy.ceiling(s.level)
    }

    /// A request sent at `sent_at` succeeded: the next throttled one starts from the bottom.
    pub(crate) fn succeeded(&self, sent_at: Instant) {
        let mut s = self.state.lock();
        if s.since.is_none_or(|since| sent_at >= since) {
            *s = CooldownState::default();
        }
    }
}

/// A number in [0, 1) from a small xorshift generator; jitter needs spread, not secrecy.
pub(crate) fn random_unit() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_grow_then_cap() {
        let p = RetryPolicy::default()
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(350));
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(3), Duration::from_millis(350));
        assert_eq!(p.ceiling(40), Duration::from_millis(350));
        for retry in 1..10 {
            assert!(p.backoff(retry) <= p.ceiling(retry));
        }
    }

    #[test]
    fn jitter_spreads() {
        let values: Vec<f64> = (0..200).map(|_| random_unit()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((0.3..0.7).contains(&mean), "mean {mean}");
    }

    #[test]
    fn retry_decisions() {
        let p = RetryPolicy::default().max_retries(2);
        let overloaded = Error::Api {
            status: Some(529),
            message: String::new(),
        };
        assert!(p.should_retry(&overloaded, 1));
        assert!(p.should_retry(&overloaded, 2));
        assert!(!p.should_retry(&overloaded, 3));
        let bad = Error::Api {
            status: Some(400),
            message: String::new(),
        };
        assert!(!p.should_retry(&bad, 1));
        assert!(!p.should_retry(
            &Error::Authentication {
                message: String::new()
            },
            1
        ));
        let everything = RetryPolicy::default().retry_if(|_| true);
        assert!(!everything.should_retry(
            &Error::BudgetExceeded {
                budget_usd: 1.0,
                spent_usd: 1.0
            },
            1
        ));
    }

    #[test]
    fn cooldown_doubles_per_episode_and_resets_on_a_later_success() {
        let p = RetryPolicy::default()
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(1000));
        let c = Cooldown::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(c.throttled(&p, at(0), at(10)), Duration::from_millis(100));
        // Sent before that pause began: the same burst, no escalation.
        assert_eq!(c.throttled(&p, at(5), at(11)), Duration::from_millis(100));
        // Sent after it: the API still refuses, so the next pause is twice as long.
        assert_eq!(
            c.throttled(&p, at(200), at(210)),
            Duration::from_millis(200)
        );
        assert_eq!(
            c.throttled(&p, at(500), at(510)),
            Duration::from_millis(400)
        );
        // A success from a request sent before the latest pause says nothing about now.
        c.succeeded(at(300));
        assert_eq!(
            c.throttled(&p, at(600), at(610)),
            Duration::from_millis(800)
        );
        assert_eq!(
            c.throttled(&p, at(700), at(710)),
            Duration::from_millis(1000)
        );
        c.succeeded(at(800));
        assert_eq!(
            c.throttled(&p, at(900), at(910)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn invalid_policies_are_rejected() {
        assert!(RetryPolicy::default().multiplier(0.5).validate().is_err());
        assert!(RetryPolicy::default()
            .initial_backoff(Duration::from_secs(5))
            .max_backoff(Duration::from_secs(1))
            .validate()
            .is_err());
    }
}
