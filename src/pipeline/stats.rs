//! What a pipeline did: [`PipelineStats`] and the live counters behind it.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::stats::Gauge;
use crate::{Error, Stats};

/// What a pipeline has done: items in and out, batches, panics in the handlers, and how many
/// items it holds (the gauges that show its memory stays bounded).
///
/// [`PipelineBuilder::run`](super::PipelineBuilder::run) and [`Pipeline::stop`](super::Pipeline::stop)
/// return the final stats, in which every item received has ended exactly once:
/// `received == batched_items + failed`. [`Pipeline::stats`](super::Pipeline::stats)
/// gives live ones, whose counters are read one at a time and may be a moment apart.
///
/// # Examples
///
/// ```
/// use claude_rayon::pipeline::PipelineStats;
///
/// let stats = PipelineStats::default();
/// assert_eq!(stats.handled(), 0);
/// assert!(stats.is_settled());
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PipelineStats {
    /// Items taken from the source.
    pub received: u64,
    /// Items answered (and transformed): each goes into exactly one batch.
    pub succeeded: u64,
    /// Items handed to `on_failed`, stopped ones included.
    pub failed: u64,
    /// Of the failed items, those never sent because the pipeline was stopping (by
    /// `stop()` or a fatal error): [`Error::Cancelled`] or [`Error::Stopped`], no attempt.
    pub stopped: u64,
    /// Batches handed to the batch handler (those it panicked on included).
    pub batches: u64,
    /// Items in those batches.
    pub batched_items: u64,
    /// Batches on which the batch handler panicked. The pipeline goes on.
    pub handler_panics: u64,
    /// Items in the batches on which the handler panicked.
    pub handler_panic_items: u64,
    /// Calls of `on_failed` that panicked. The pipeline goes on.
    pub on_failed_panics: u64,
    /// Items now between the source and the batcher: pulled, queued for or in a call, or
    /// answered and waiting for the batcher. Never more than the builder's `max_in_flight`.
    pub in_flight: u64,
    /// The most items ever in flight at once.
    pub max_in_flight: u64,
    /// Items now past processing and not yet handled: taken by the batcher, in partial
    /// batches, in batches waiting for the handler or being handled, and failures waiting for
    /// `on_failed`. Without a batch key, never more than `max_in_flight + 4 × batch_size`
    /// (each key with a partial batch adds up to `batch_size - 1`).
    pub buffered: u64,
    /// The most items ever buffered at once.
    pub max_buffered: u64,
    /// Why the pipeline stopped by itself, if it did: a fatal error of the session (bad
    /// credentials, a spent budget, a closed session), or a panic in the source iterator.
    pub fatal_error: Option<Error>,
    /// The session's own statistics (for the whole session, not just this pipeline).
    pub session: Stats,
}

impl PipelineStats {
    /// Items that have ended: in a batch handed to the handler, or in `on_failed`.
    pub fn handled(&self) -> u64 {
        self.batched_items + self.failed
    }

    /// Whether every item received has ended (always true of the final stats).
    pub fn is_settled(&self) -> bool {
        self.handled() == self.received
    }
}

/// The live counters; stages add to them as items move.
#[derive(Default)]
pub(crate) struct Counters {
    pub received: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub stopped: AtomicU64,
    pub batches: AtomicU64,
    pub batched_items: AtomicU64,
    pub handler_panics: AtomicU64,
    pub handler_panic_items: AtomicU64,
    pub on_failed_panics: AtomicU64,
    pub in_flight: Gauge,
    pub buffered: Gauge,
}

impl Counters {
    pub(crate) fn snapshot(&self, fatal_error: Option<Error>, session: Stats) -> PipelineStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (in_flight, max_in_flight) = self.in_flight.read();
        let (buffered, max_buffered) = self.buffered.read();
        PipelineStats {
            received: load(&self.received),
            succeeded: load(&self.succeeded),
            failed: load(&self.failed),
            stopped: load(&self.stopped),
            batches: load(&self.batches),
            batched_items: load(&self.batched_items),
            handler_panics: load(&self.handler_panics),
            handler_panic_items: load(&self.handler_panic_items),
            on_failed_panics: load(&self.on_failed_panics),
            in_flight,
            max_in_flight,
            buffered,
            max_buffered,
            fatal_error,
            session,
        }
    }
}
