//! The source stage: one thread that takes in-flight slots, then one item per slot, and
//! sends each item to the session's threads. Taking the slots first means it never holds an
//! item it cannot send, and a full pipeline stops pulling (so an endless source runs in
//! bounded memory).
//!
//! On stop it takes nothing more. A channel is `select`ed against the stop signal, so it never
//! blocks a stop; an iterator blocked in `next()` cannot be interrupted, so the supervisor
//! stops waiting for it (the thread is detached), and whatever it yields later goes to
//! `on_failed`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crossbeam_channel::{select_biased, Receiver};

use super::process::Processor;
use super::shared::{OnFailed, Phase, Shared};
use crate::engine::panic_message;
use crate::Error;

/// Where the items come from.
pub(crate) enum Source<T> {
    Iter(Box<dyn Iterator<Item = T> + Send>),
    Channel(Receiver<T>),
}

enum Pulled<T> {
    Item(T),
    /// The source has no more items.
    End,
    /// The stop was seen; any item taken with it has gone to `on_failed`.
    Stopped,
    /// The supervisor has left this thread behind; its slots stay counted as held.
    Detached,
}

pub(crate) struct SourceStage<T, O, K> {
    pub source: Source<T>,
    pub shared: Arc<Shared>,
    pub processor: Arc<Processor<T, O, K>>,
    pub on_failed: OnFailed<T>,
}

/// Tells the supervisor the source is done however the thread ends, after giving back the
/// slots it still held.
struct DoneGuard {
    shared: Arc<Shared>,
    held: usize,
    /// Left behind inside `next()`: its slots stay counted as held, and the supervisor has
    /// stopped waiting for it.
    detached: bool,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.shared.slots.give_back(std::mem::take(&mut self.held));
        self.shared.source.lock().phase = Phase::Done;
        self.shared.source_changed.notify_all();
    }
}

impl<T, O, K> SourceStage<T, O, K>
where
    T: Send + 'static,
    O: Send + 'static,
    K: Send + 'static,
{
    pub(crate) fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let mut guard = DoneGuard {
            shared: Arc::clone(&shared),
            held: 0,
            detached: false,
        };
        // Refill only once half the slots are free, then pull that many items in a row:
        // the source sleeps and wakes once per burst, not once per item, and the session's
        // threads still always have items queued.
        let refill_at = shared.max_in_flight.div_ceil(2);
        loop {
            guard.held = shared.slots.take(refill_at, &|| shared.is_stopping());
            if guard.held == 0 {
                return;
            }
            while guard.held > 0 {
                let pulled = match &mut self.source {
                    Source::Iter(iter) => pull_iter(iter, &shared, &self.on_failed, guard.held),
                    Source::Channel(rx) => pull_channel(rx, &shared, &self.on_failed),
                };
                match pulled {
                    Pulled::Item(item) => {
                        // The slot goes with the item; the batcher gives it back.
                        guard.held -= 1;
                        self.processor.dispatch(item);
                    }
                    Pulled::End | Pulled::Stopped => return,
                    Pulled::Detached => {
                        guard.detached = true;
                        return;
                    }
                }
            }
        }
    }
}

fn pull_iter<T>(
    iter: &mut Box<dyn Iterator<Item = T> + Send>,
    shared: &Shared,
    on_failed: &OnFailed<T>,
    held: usize,
) -> Pulled<T> {
    {
        let mut state = shared.source.lock();
        if state.stop {
            return Pulled::Stopped;
        }
        state.phase = Phase::InNext;
        state.held = held;
    }
    let next = catch_unwind(AssertUnwindSafe(|| iter.next()));
    let mut state = shared.source.lock();
    if state.detached {
        // Too late for the run: the item still ends once, in `on_failed`.
        if let Ok(Some(item)) = next {
            shared.hand_stopped(on_failed, item);
        }
        return Pulled::Detached;
    }
    state.phase = Phase::Running;
    match next {
        Ok(Some(item)) if state.stop => {
            shared.hand_stopped(on_failed, item);
            Pulled::Stopped
        }
        Ok(Some(item)) => Pulled::Item(item),
        Ok(None) => Pulled::End,
        Err(panic) => {
            drop(state);
            let message = panic_message(panic.as_ref());
            shared.stop_fatally(Error::Panicked(format!(
                "the pipeline's source iterator panicked: {message}"
            )));
            Pulled::End
        }
    }
}

fn pull_channel<T>(rx: &Receiver<T>, shared: &Shared, on_failed: &OnFailed<T>) -> Pulled<T> {
    select_biased! {
        recv(shared.stop_rx) -> _ => Pulled::Stopped,
        recv(rx) -> message => match message {
            Ok(item) => {
                let state = shared.source.lock();
                if state.stop {
                    // Taken as the stop came: it ends in `on_failed`, unsent.
                    shared.hand_stopped(on_failed, item);
                    Pulled::Stopped
                } else {
                    Pulled::Item(item)
                }
            }
            Err(_) => Pulled::End,
        },
    }
}
