//! The processing stage: each item runs as one job on the session's own threads (so at most
//! `concurrency` calls at once, throttled and retried like every other item), and its result
//! goes to the batcher. Ordering is not kept: a result goes on as soon as it is ready.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::shared::Shared;
use crate::engine::{panic_message, Policy};
use crate::{Error, Failed, Response};

/// The prompt closure, its answer made a `String` so that the builder needs no type for it.
pub(crate) type PromptFn<T> = Arc<dyn Fn(&T) -> String + Send + Sync>;
/// The user's transform of an answered item.
pub(crate) type TransformFn<T, O> = Arc<dyn Fn(&T, Response) -> O + Send + Sync>;
/// The batch key closure.
pub(crate) type KeyFn<O, K> = Arc<dyn Fn(&O) -> K + Send + Sync>;

/// How an answered item becomes the user's value.
pub(crate) enum Output<T, O> {
    /// The default, `O = (T, Response)`; `back` recovers the item if the key closure panics.
    Pair {
        make: fn(T, Response) -> O,
        back: fn(O) -> T,
    },
    /// The user's transform. It borrows the item, so a panic in it still hands the item back.
    Custom(TransformFn<T, O>),
}

/// What a job sends the batcher.
pub(crate) enum Processed<T, O, K> {
    Ok(O, K),
    /// A failure, and whether it is a stop (never sent because the pipeline was stopping).
    Failed(Failed<T>, bool),
    /// A panic in this crate's own code; the item is lost with it.
    Bug(String),
}

/// What the batcher receives: results, then the end once every item's result is in.
pub(crate) enum ToBatcher<T, O, K> {
    Item(Processed<T, O, K>),
    End,
}

pub(crate) struct Processor<T, O, K> {
    pub shared: Arc<Shared>,
    pub prompt: PromptFn<T>,
    pub output: Output<T, O>,
    pub key: KeyFn<O, K>,
    /// Never full: it holds at most one result per in-flight slot, plus the end.
    pub results: Sender<ToBatcher<T, O, K>>,
}

impl<T, O, K> Processor<T, O, K>
where
    T: Send + 'static,
    O: Send + 'static,
    K: Send + 'static,
{
    /// Send one item (which holds an in-flight slot) to the session's threads.
    pub(crate) fn dispatch(self: &Arc<Self>, item: T) {
        let counters = &self.shared.counters;
        crate::stats::add(&counters.received, 1);
        counters.in_flight.add(1);
        let (this, results) = (Arc::clone(self), self.results.clone());
        self.shared.run.answer_later(
            move || this.process(item),
            move |done| {
                // A panic must not lose the slot.
                let done =
                    done.unwrap_or_else(|panic| Processed::Bug(panic_message(panic.as_ref())));
                // The batcher lives until every slot is back, so this cannot fail or block.
                let _ = results.send(ToBatcher::Item(done));
            },
        );
    }

    fn process(&self, item: T) -> Processed<T, O, K> {
        let run = &self.shared.run;
        match run.item(item, |item: &T| (self.prompt)(item), &Policy::Plain) {
            Ok((item, answer)) => self.shape(item, answer.response, answer.attempts),
            Err(failed) => {
                if failed.error.is_fatal() {
                    // No other item can succeed: stop taking from the source.
                    self.shared.stop_fatally(failed.error.clone());
                }
                // Not sent because of the stop, or ended in flight by a bounded stop.
                let stopped = (failed.attempts == 0 || run.stop().is_aborted())
                    && matches!(failed.error, Error::Cancelled | Error::Stopped(_));
                Processed::Failed(failed, stopped)
            }
        }
    }

    /// The answered item as the user's value with its batch key; a panic in the transform or
    /// the key closure fails the item, handing it back.
    fn shape(&self, item: T, response: Response, attempts: u32) -> Processed<T, O, K> {
        let key = &self.key;
        let panicked = |what: &str, panic: Box<dyn std::any::Any + Send>| {
            Error::Panicked(format!(
                "{what} panicked: {}",
                panic_message(panic.as_ref())
            ))
        };
        match &self.output {
            Output::Pair { make, back } => {
                let output = make(item, response);
                match catch_unwind(AssertUnwindSafe(|| key(&output))) {
                    Ok(k) => Processed::Ok(output, k),
                    Err(panic) => Processed::Failed(
                        Failed {
                            item: back(output),
                            error: panicked("the batch key", panic),
                            attempts,
                        },
                        false,
                    ),
                }
            }
            Output::Custom(transform) => {
                let shaped = catch_unwind(AssertUnwindSafe(|| {
                    let output = transform(&item, response);
                    let k = key(&output);
                    (output, k)
                }));
                match shaped {
                    Ok((output, k)) => Processed::Ok(output, k),
                    Err(panic) => Processed::Failed(
                        Failed {
                            item,
                            error: panicked("the transform or the batch key", panic),
                            attempts,
                        },
                        false,
                    ),
                }
            }
        }
    }
}
