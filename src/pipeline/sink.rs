//! The sink: one thread that hands batches to the batch handler and failures to `on_failed`,
//! one at a time, in the order the batcher cut them. A panic in either is counted and the
//! pipeline goes on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crossbeam_channel::Receiver;

use super::shared::{OnFailed, Shared};
use super::Batch;
use crate::stats::add;
use crate::Failed;

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
