//! How far a run is: a [`Progress`] snapshot handed to a callback at a bounded rate, and (with
//! the `progress` feature) a progress bar on stderr built on the same snapshots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::{Session, Stats};

/// A progress callback, as given to
/// [`SessionBuilder::on_progress`](crate::SessionBuilder::on_progress).
pub type ProgressCallback = Arc<dyn Fn(&Progress) + Send + Sync>;

/// The longest a callback waits between two snapshots while items finish.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

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
}

impl Progress {
    /// Done over total, when the total is known.
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

/// The progress of one run, fed by the run's workers as items finish.
pub(crate) struct RunProgress {
    run: &'static str,
    session: Session,
    callback: Option<ProgressCallback>,
    #[cfg(feature = "progress")]
    bar: Option<crate::progress_bar::Bar>,
    total: Option<u64>,
    started: Instant,
    base: Stats,
    done: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    last_report: Mutex<Instant>,
}

impl RunProgress {
    /// Progress for a run, or `None` when nobody watches (no callback, no bar).
    pub(crate) fn start(session: &Session, run: &'static str, total: Option<u64>) -> Option<Self> {
        Self::start_with_bar(session, run, total, None)
    }

    /// As [`start`](Self::start), with the session's bar setting overridden (a pipeline's own).
    pub(crate) fn start_with_bar(
        session: &Session,
        run: &'static str,
        total: Option<u64>,
        show_bar: Option<bool>,
    ) -> Option<Self> {
        let callback = session.inner.config.on_progress.clone();
        #[cfg(feature = "progress")]
        let bar = crate::progress_bar::Bar::for_session(
            session,
            run,
            total,
            show_bar.unwrap_or(session.inner.config.progress),
        );
        #[cfg(not(feature = "progress"))]
        let _ = show_bar;
        #[cfg(feature = "progress")]
        let watched = callback.is_some() || bar.is_some();
        #[cfg(not(feature = "progress"))]
        let watched = callback.is_some();
        if !watched {
            return None;
        }
        let now = Instant::now();
        Some(RunProgress {
            run,
            session: session.clone(),
            callback,
            #[cfg(feature = "progress")]
            bar,
            total,
            started: now,
            base: session.stats(),
            done: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_report: Mutex::new(now),
        })
    }

    /// One item finished; report if the last report is old enough.
    pub(crate) fn item_done(&self, succeeded: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if succeeded {
            self.succeeded.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let due = {
            let mut last = self.last_report.lock();
            let now = Instant::now();
            if now.duration_since(*last) >= MIN_INTERVAL {
                *last = now;
                true
            } else {
                false
            }
        };
        if due {
            self.report(false);
        }
    }

    /// The run ended: one last report.
    pub(crate) fn finish(&self) {
        self.report(true);
    }

    pub(crate) fn snapshot(&self, finished: bool) -> Progress {
        let now = self.session.stats();
        let elapsed = self.started.elapsed();
        let done = self.done.load(Ordering::Relaxed);
        let rate = if elapsed.is_zero() {
            0.0
        } else {
            done as f64 / elapsed.as_secs_f64()
        };
        let eta = match self.total {
            Some(total) if done > 0 && rate > 0.0 => Some(Duration::from_secs_f64(
                total.saturating_sub(done) as f64 / rate,
            )),
            _ => None,
        };
        Progress {
            run: self.run,
            done,
            total: self.total,
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: now.retried - self.base.retried,
            throttle_waits: now.throttle_waits - self.base.throttle_waits,
            backoff_pauses: now.backoff_pauses - self.base.backoff_pauses,
            tokens: now.usage.total() - self.base.usage.total(),
            cost_usd: now.cost_usd - self.base.cost_usd,
            elapsed,
            items_per_second: rate,
            eta,
            finished,
            retry_reason: now.last_retry_reason.clone().filter(|reason| {
                now.retried > self.base.retried
                    || Some(reason) != self.base.last_retry_reason.as_ref()
            }),
        }
    }

    fn report(&self, finished: bool) {
        let progress = self.snapshot(finished);
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.update(&progress);
        }
        if let Some(callback) = &self.callback {
            // A panicking callback must not take a worker (and its item) down with it.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(&progress)));
        }
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
