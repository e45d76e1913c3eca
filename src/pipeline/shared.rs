//! What every stage of a pipeline shares: the counters, the stop, and the source's phase,
//! which tells the supervisor when no more items can come in.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use super::stats::{Counters, PipelineStats};
use crate::engine::Run;
use crate::stats::add;
use crate::{Cancel, Error, Failed, Session};

/// The failure handler, shared by the sink and the source thread (which hands over the
/// items it holds when the pipeline stops).
pub(crate) type OnFailed<T> = Arc<Mutex<Box<dyn FnMut(Failed<T>) + Send>>>;

/// Where the source thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Phase {
    /// Waiting for a slot, dispatching, or in a channel source's `select`.
    #[default]
    Running,
    /// Inside an iterator's `next()`: a call that may never return.
    InNext,
    /// Gone: the source ended, or the stop was seen.
    Done,
}

#[derive(Default)]
pub(crate) struct SourceState {
    pub phase: Phase,
    /// In-flight slots the source thread holds and has not passed to items (kept up to date
    /// when it enters `next()`, the one place it can be left behind).
    pub held: usize,
    /// A stop was requested: take nothing more from the source.
    pub stop: bool,
    /// The supervisor gave up waiting for a `next()` that did not return: whatever it yields
    /// is the source thread's to hand to `on_failed`.
    pub detached: bool,
}

/// The in-flight slots: a counting semaphore. The source takes them in bursts and the batcher
/// gives them back as results arrive, so neither wakes the other for every item.
pub(crate) struct Slots {
    state: Mutex<SlotsState>,
    freed: Condvar,
}

struct SlotsState {
    free: usize,
    /// How many free slots the waiter (the source, or the supervisor at the end) waits for;
    /// 0 when nobody waits.
    wanted: usize,
}

impl Slots {
    fn new(total: usize) -> Slots {
        Slots {
            state: Mutex::new(SlotsState {
                free: total,
                wanted: 0,
            }),
            freed: Condvar::new(),
        }
    }

    /// Wait until at least `at_least` slots are free, then take every free one; 0 if
    /// `stopped` says so first.
    pub(crate) fn take(&self, at_least: usize, stopped: &dyn Fn() -> bool) -> usize {
        let mut state = self.state.lock();
        loop {
            if stopped() {
                state.wanted = 0;
                return 0;
            }
            if state.free >= at_least {
                state.wanted = 0;
                return std::mem::take(&mut state.free);
            }
            state.wanted = at_least;
            self.freed.wait(&mut state);
        }
    }

    pub(crate) fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut state = self.state.lock();
        state.free += n;
        if state.wanted > 0 && state.free >= state.wanted {
            state.wanted = 0;
            drop(state);
            self.freed.notify_all();
        }
    }

    /// Wake a waiter so that it rechecks its stop. Under the lock, so no wake-up is lost
    /// between its check and its wait.
    fn wake(&self) {
        let _state = self.state.lock();
        self.freed.notify_all();
    }
}

pub(crate) struct Shared {
    pub session: Session,
    pub slots: Slots,
    pub max_in_flight: usize,
    pub counters: Counters,
    /// The items' run: its stop is checked by every item before its call, set by a stop
    /// request and by a fatal error, and it reports the progress.
    pub run: Run,
    stop_requested: AtomicBool,
    /// Closed (its sender dropped) on stop, so that every `select` on it wakes at once.
    pub stop_rx: Receiver<()>,
    stop_tx: Mutex<Option<Sender<()>>>,
    pub source: Mutex<SourceState>,
    pub source_changed: Condvar,
}

impl Shared {
    pub(crate) fn new(
        session: &Session,
        max_in_flight: usize,
        show_bar: Option<bool>,
        journal: Option<&crate::Journal>,
    ) -> Shared {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        Shared {
            session: session.clone(),
            slots: Slots::new(max_in_flight),
            max_in_flight,
            counters: Counters::default(),
            run: Run::with_bar(session, "pipeline", None, None, show_bar).with_journal(journal),
            stop_requested: AtomicBool::new(false),
            stop_rx,
            stop_tx: Mutex::new(Some(stop_tx)),
            source: Mutex::new(SourceState::default()),
            source_changed: Condvar::new(),
        }
    }

    /// Stop taking from the source; items not yet sent end as stopped, calls in flight finish.
    pub(crate) fn request_stop(&self) {
        if self.stop_requested.swap(true, Ordering::SeqCst) {
            return;
        }
        self.source.lock().stop = true;
        // Items not yet sent end as stopped; waits on the throttle and between retries end.
        self.run.stop().halt();
        drop(self.stop_tx.lock().take());
        self.slots.wake();
        self.source_changed.notify_all();
    }

    /// Stop as [`request_stop`](Self::request_stop) does once the session's cancel is set
    /// (`SessionBuilder::with_cancel`). From a thread of its own: the cancel's hook runs
    /// while the signal's hooks are held, where a stop, which raises the signal, cannot.
    pub(crate) fn stop_on_session_cancel(self: &Arc<Self>) {
        if self.session.cancel().is_none() {
            return;
        }
        let shared = Arc::downgrade(self);
        let once = AtomicBool::new(false);
        self.run.stop().on_change(Box::new(move || {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let cancelled = shared.session.cancel().is_some_and(Cancel::is_cancelled);
            if cancelled && !once.swap(true, Ordering::SeqCst) {
                std::thread::spawn(move || shared.request_stop());
            }
        }));
    }

    /// No other item can succeed (bad credentials, spent budget, closed session, a source
    /// that panicked): remember why, and stop.
    pub(crate) fn stop_fatally(&self, error: Error) {
        self.run.stop().fail_fatally(&error);
        self.request_stop();
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stop_requested.load(Ordering::SeqCst)
    }

    pub(crate) fn snapshot(&self) -> PipelineStats {
        self.counters
            .snapshot(self.run.stop().fatal(), self.session.stats())
    }

    /// The error of an item that was not sent because the pipeline is stopping.
    pub(crate) fn stop_error(&self) -> Error {
        self.run.stop_reason().unwrap_or(Error::Cancelled)
    }

    /// Hand a failed item to `on_failed`, counting it; a panic there is counted, not spread.
    pub(crate) fn hand_failed<T>(&self, on_failed: &OnFailed<T>, failed: Failed<T>, stopped: bool) {
        let mut handler = on_failed.lock();
        let outcome = catch_unwind(AssertUnwindSafe(|| (*handler)(failed)));
        add(&self.counters.failed, 1);
        if stopped {
            add(&self.counters.stopped, 1);
        }
        if outcome.is_err() {
            add(&self.counters.on_failed_panics, 1);
            log::error!("a pipeline's on_failed handler panicked; the pipeline goes on");
        }
    }

    /// An item the source thread took but will not send: it ends in `on_failed`, as
    /// received and stopped. Called with the source lock held, so that the final stats
    /// (taken under it) count the item wholly or not at all.
    pub(crate) fn hand_stopped<T>(&self, on_failed: &OnFailed<T>, item: T) {
        add(&self.counters.received, 1);
        // Counted by the session too, like every item that is refused.
        let failed = self.run.refuse(item, self.stop_error());
        self.hand_failed(on_failed, failed, true);
    }
}
