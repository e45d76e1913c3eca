//! The sink: one thread that hands batches to the batch handler and failures to `on_failed`,
//! one at a time, in the order the batcher cut them. A panic in either is counted and the
//! pipeline goes on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Receiver;

use super::shared::{OnFailed, Shared};
use super::{Batch, PipelineStats};
use crate::stats::add;
use crate::{Error, Failed};

pub(crate) enum ToSink<T, O, K> {
    Batch(Batch<O, K>),
    /// A failure, and whether it is a stop.
    Failed(Failed<T>, bool),
}

pub(crate) struct Sink<T, O, K, H> {
    pub shared: Arc<Shared>,
    pub inbox: Receiver<ToSink<T, O, K>>,
    pub handler: H,
    pub on_failed: OnFailed<T>,
}

impl<T, O, K, H> Sink<T, O, K, H>
where
    H: FnMut(Batch<O, K>),
{
    pub(crate) fn run(mut self) {
        let counters = &self.shared.counters;
        for message in &self.inbox {
            match message {
                ToSink::Batch(batch) => {
                    let n = batch.items.len() as u64;
                    let handler = &mut self.handler;
                    let outcome = catch_unwind(AssertUnwindSafe(|| handler(batch)));
                    add(&counters.batches, 1);
                    add(&counters.batched_items, n);
                    if outcome.is_err() {
                        add(&counters.handler_panics, 1);
                        add(&counters.handler_panic_items, n);
                        log::error!(
                            "a pipeline's batch handler panicked on a batch of {n}; the \
                             pipeline goes on"
                        );
                    }
                    counters.buffered.sub(n);
                }
                ToSink::Failed(failed, stopped) => {
                    self.shared.hand_failed(&self.on_failed, failed, stopped);
                    counters.buffered.sub(1);
                }
            }
        }
    }
}

/// Where failures go when the pipeline was given no `on_failed`. They must not vanish unseen:
/// a `log::warn` reaches nobody in a program without a logger. So each is logged at warn, the
/// first that is not a stop is also written to stderr at once, and when the pipeline ends
/// one line on stderr says how many items failed with nobody to take them.
#[derive(Default)]
pub(crate) struct Unhandled {
    told: AtomicBool,
}

impl Unhandled {
    /// The `on_failed` handler that reports to this.
    pub(crate) fn handler<T>(self: &Arc<Self>) -> Box<dyn FnMut(Failed<T>) + Send> {
        let this = Arc::clone(self);
        Box::new(move |failed: Failed<T>| this.take(&failed.error))
    }

    fn take(&self, error: &Error) {
        log::warn!("a pipeline item failed, with no on_failed handler to take it: {error}");
        // Stopped items come in numbers at a stop; the summary at the end counts them.
        let stop = matches!(error, Error::Cancelled | Error::Stopped(_));
        if !stop && !self.told.swap(true, Ordering::Relaxed) {
            eprintln!("{}", first_failure_line(error));
        }
    }

    /// At the end: how many items failed with nobody to take them, if any did.
    pub(crate) fn summarise(&self, stats: &PipelineStats) {
        if let Some(line) = summary_line(stats) {
            eprintln!("{line}");
        }
    }
}

/// What stderr gets for the first failure.
fn first_failure_line(error: &Error) -> String {
    format!(
        "claude-rayon: a pipeline item failed and the pipeline has no on_failed handler to \
         take it: {}. Set PipelineBuilder::on_failed to keep failed items; the pipeline says \
         how many failed when it ends.",
        shorten(&error.to_string())
    )
}

/// What stderr gets at the end, when items failed with no handler.
fn summary_line(stats: &PipelineStats) -> Option<String> {
    if stats.failed == 0 {
        return None;
    }
    let items = if stats.failed == 1 { "item" } else { "items" };
    let stopped = match stats.stopped {
        0 => String::new(),
        n if n == stats.failed => " (all stopped before they were sent)".to_string(),
        n => format!(" ({n} of them stopped before they were sent)"),
    };
    Some(format!(
        "claude-rayon: the pipeline ended with {} failed {items}{stopped} and no on_failed \
         handler to take them; set PipelineBuilder::on_failed to keep them.",
        stats.failed
    ))
}

/// An error's first line, cut to a length that fits a terminal line or two.
fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 300;
    let first = text.lines().next().unwrap_or_default();
    let mut short: String = first.chars().take(MAX_CHARS).collect();
    if short.len() < first.len() || first.len() < text.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_failed_and_stopped_items() {
        let mut stats = PipelineStats::default();
        assert_eq!(summary_line(&stats), None);
        stats.failed = 1;
        let line = summary_line(&stats).unwrap();
        assert!(
            line.contains("with 1 failed item and no on_failed"),
            "{line}"
        );
        stats.failed = 5;
        stats.stopped = 2;
        let line = summary_line(&stats).unwrap();
        assert!(line.contains("5 failed items (2 of them stopped"), "{line}");
        stats.stopped = 5;
        assert!(summary_line(&stats).unwrap().contains("(all stopped"));
    }

    #[test]
    fn a_long_error_is_shortened_to_its_first_line() {
        let long = format!("{}\nsecond line", "x".repeat(400));
        let short = shorten(&long);
        assert_eq!(short.chars().count(), 301);
        assert!(short.ends_with('…'));
        assert_eq!(shorten("API error 529"), "API error 529");
    }
}
