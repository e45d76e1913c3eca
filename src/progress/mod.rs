//! How far a run is: the [`Progress`] snapshot a callback receives, and (with the `progress`
//! feature) the progress bar drawn from the same snapshots. The engine takes the snapshots.

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "progress")]
pub(crate) mod bar;

/// A progress callback, as given to
/// [`SessionBuilder::on_progress`](crate::SessionBuilder::on_progress).
pub(crate) type Callback = Arc<dyn Fn(&Progress) + Send + Sync>;

/// One run's progress: what is done, what it cost so far, and how fast it goes.
///
/// Item counts are this run's own; retries, throttle and token figures are the session's
/// since the run started.
///
/// # Examples
///
/// ```
/// use claude_rayon::Session;
///
/// let builder = Session::builder().on_progress(|p| {
///     if let Some(fraction) = p.fraction() {
///         eprintln!("{:.0}% done, {} failed, ${:.4}", fraction * 100.0, p.failed, p.cost_usd);
///     }
/// });
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// What kind of run this is (`claude_map`, `claude_filter`, a stream, a pipeline, …).
    pub run: &'static str,
    /// Items finished, with either outcome.
    pub done: u64,
    /// Items in the run, when known (not for streams and pipelines).
    pub total: Option<u64>,
    /// Items that ended with an answer.
    pub succeeded: u64,
    /// Of those, answers taken from the journal without a call.
    pub replayed: u64,
    /// Items that ended failed.
    pub failed: u64,
    /// Retries made by this crate since the run started.
    pub retried: u64,
    /// Times a request waited on the throttle since the run started.
    pub throttle_waits: u64,
    /// Shared back-off pauses since the run started.
    pub backoff_pauses: u64,
    /// Input and output tokens since the run started.
    pub tokens: u64,
    /// Of the input, tokens written to the prompt cache since the run started (1.25× price).
    pub cache_write_tokens: u64,
    /// Of the input, tokens read from the prompt cache since the run started (0.1× price).
    pub cache_read_tokens: u64,
    /// Cost since the run started, in US dollars.
    pub cost_usd: f64,
    /// Time since the run started.
    pub elapsed: Duration,
    /// Items finished per second so far.
    pub items_per_second: f64,
    /// Estimated time to the end, when the total is known and an item has finished.
    pub eta: Option<Duration>,
    /// Whether this is the last snapshot of the run.
    pub finished: bool,
    /// Why items are being retried, when this run has retried or failed to connect: the
    /// last such error, shortened.
    pub retry_reason: Option<String>,
    /// On a [`Backend::Batches`](crate::Backend::Batches) session, the run's batches: how
    /// many were submitted, how many still run, and their requests' counts as the API last
    /// reported them (`None` on other sessions).
    pub batches: Option<BatchProgress>,
}

/// The batches of one run, as the Message Batches API last reported them (see
/// [`Progress::batches`]). Request counts are summed over the run's batches.
///
/// # Examples
///
/// ```
/// let builder = claude_rayon::Session::builder().on_progress(|p| {
///     if let Some(b) = p.batches {
///         eprintln!("{} batches, {} requests processing, {} done", b.submitted, b.processing,
///             b.succeeded + b.errored + b.expired + b.canceled);
///     }
/// });
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchProgress {
    /// Batches this run submitted or picked up from its journal.
    pub submitted: u64,
    /// Of those, batches that have not ended.
    pub running: u64,
    /// Requests not processed yet.
    pub processing: u64,
    /// Requests answered.
    pub succeeded: u64,
    /// Requests that ended with an error (not billed).
    pub errored: u64,
    /// Requests a cancel ended before they were processed.
    pub canceled: u64,
    /// Requests the batch's 24 hours ended before they were processed (not billed).
    pub expired: u64,
}

impl Progress {
    /// Done over total, when the total is known.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = claude_rayon::Session::builder().on_progress(|p| {
    ///     if let Some(f) = p.fraction() {
    ///         eprintln!("{:>3.0}%", f * 100.0);
    ///     }
    /// });
    /// ```
    pub fn fraction(&self) -> Option<f64> {
        self.total.map(|t| {
            if t == 0 {
                1.0
            } else {
                self.done as f64 / t as f64
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction_handles_unknown_and_empty_totals() {
        let p = Progress::default();
        assert_eq!(p.fraction(), None);
        let p = Progress {
            total: Some(0),
            ..Progress::default()
        };
        assert_eq!(p.fraction(), Some(1.0));
    }
}
