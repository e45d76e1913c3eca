//! A run's progress: counts of its own items, and the session's figures since it started,
//! handed to the callback and the bar at a bounded rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::progress::{BatchProgress, Callback, Progress};
use crate::{Session, Stats};

/// The longest a callback waits between two snapshots while items finish.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The progress of one run, fed by the run's workers as items finish.
pub(crate) struct RunProgress {
    run: &'static str,
    session: Session,
    callback: Option<Callback>,
    #[cfg(feature = "progress")]
    bar: Option<crate::progress::bar::Bar>,
    total: Option<u64>,
    started: Instant,
    base: Stats,
    done: AtomicU64,
    succeeded: AtomicU64,
    replayed: AtomicU64,
    failed: AtomicU64,
    last_report: Mutex<Instant>,
    batches: Mutex<Option<BatchProgress>>,
}

impl RunProgress {
    /// Progress for a run, or `None` when nobody watches (no callback, no bar); `show_bar`
    /// overrides the session's bar setting (a pipeline's own).
    pub(crate) fn start(
        session: &Session,
        run: &'static str,
        total: Option<u64>,
        show_bar: Option<bool>,
    ) -> Option<Self> {
        let callback = session.config().on_progress.clone();
        #[cfg(feature = "progress")]
        let bar = crate::progress::bar::Bar::new(
            run,
            total,
            show_bar.unwrap_or(session.config().progress),
            session.config().progress_draw_target.as_ref(),
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
            replayed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_report: Mutex::new(now),
            batches: Mutex::new(None),
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

    /// One item's answer came from the journal (it is also reported done).
    pub(crate) fn item_replayed(&self) {
        self.replayed.fetch_add(1, Ordering::Relaxed);
    }

    /// The run's batches as the API last reported them: a report now.
    pub(crate) fn batches(&self, batches: BatchProgress) {
        *self.batches.lock() = Some(batches);
        *self.last_report.lock() = Instant::now();
        self.report(false);
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
            replayed: self.replayed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: now.retried - self.base.retried,
            throttle_waits: now.throttle_waits - self.base.throttle_waits,
            backoff_pauses: now.backoff_pauses - self.base.backoff_pauses,
            tokens: now.usage.total() - self.base.usage.total(),
            cache_write_tokens: now.usage.cache_creation_input_tokens
                - self.base.usage.cache_creation_input_tokens,
            cache_read_tokens: now.usage.cache_read_input_tokens
                - self.base.usage.cache_read_input_tokens,
            cost_usd: now.cost_usd - self.base.cost_usd,
            elapsed,
            items_per_second: rate,
            eta,
            finished,
            retry_reason: now.last_retry_reason.clone().filter(|reason| {
                now.retried > self.base.retried
                    || Some(reason) != self.base.last_retry_reason.as_ref()
            }),
            batches: *self.batches.lock(),
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
