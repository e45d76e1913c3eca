//! The one stop state of a run: the user's cancel, the run's own halt (a stream dropped, a
//! pipeline stopped), the first fatal error, and a hard stop that ends the calls in flight.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::cancel::{Hook, Signal};
use crate::{Cancel, Error};

/// Ends one call in flight (kills its process); registered by the call while it runs.
pub(crate) type Abort = Arc<dyn Fn() + Send + Sync>;

/// Why and whether a run must stop, shared by its items. Every change raises one [`Signal`],
/// so waits between retries and on the throttle end at once.
pub(crate) struct Stop {
    /// The user's cancels: the run's own and the session's.
    cancels: Vec<Cancel>,
    /// Set by the run itself: no new item starts, as if cancelled.
    halted: AtomicBool,
    fatal: Mutex<Option<Error>>,
    has_fatal: AtomicBool,
    /// Set by [`abort`](Self::abort): calls in flight were ended, new ones end at once.
    aborted: AtomicBool,
    /// Set by [`end_calls_on_cancel`](Self::end_calls_on_cancel): the user's cancel also
    /// ends the calls in flight.
    cancel_ends_calls: AtomicBool,
    /// Shared with the hook that ends them on a cancel.
    in_flight: Arc<Mutex<Vec<(u64, Abort)>>>,
    next_call: AtomicU64,
    signal: Arc<Signal>,
}

/// A call registered with [`Stop::register_call`]; unregisters it when dropped.
pub(crate) struct CallGuard<'a> {
    stop: &'a Stop,
    id: u64,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.stop.in_flight.lock().retain(|(id, _)| *id != self.id);
    }
}

impl Stop {
    /// A run's stop, set by `cancel` when given.
    #[cfg(test)]
    pub(crate) fn new(cancel: Option<Cancel>) -> Stop {
        Stop::cancelled_by(cancel.into_iter().collect())
    }

    /// A run's stop, set by any of `cancels` (the run's own, the session's).
    pub(crate) fn cancelled_by(cancels: Vec<Cancel>) -> Stop {
        let signal = Arc::new(Signal::default());
        for cancel in &cancels {
            cancel.watch(&signal);
        }
        Stop {
            cancels,
            halted: AtomicBool::new(false),
            fatal: Mutex::new(None),
            has_fatal: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            cancel_ends_calls: AtomicBool::new(false),
            in_flight: Arc::new(Mutex::new(Vec::new())),
            next_call: AtomicU64::new(0),
            signal,
        }
    }

    /// Also wake this stop's waits when `cancel` is set (a session's close), without making
    /// it a reason to stop: the caller checks what `cancel` means.
    pub(crate) fn watch(&self, cancel: &Cancel) {
        cancel.watch(&self.signal);
    }

    /// Run `hook` whenever the stop changes (a wait elsewhere that must recheck it).
    pub(crate) fn on_change(&self, hook: Hook) {
        self.signal.on_raise(hook);
    }

    /// Why the run must not start another item, if it must not.
    pub(crate) fn reason(&self) -> Option<Error> {
        if self.has_fatal.load(Ordering::Acquire) {
            let fatal = self.fatal.lock().clone()?;
            return Some(match fatal {
                // A spent budget is reported as itself, not as a stop caused by it.
                Error::BudgetExceeded { .. } => fatal,
                other => Error::Stopped(Box::new(other)),
            });
        }
        if self.is_cancelled() {
            return Some(Error::Cancelled);
        }
        None
    }

    /// Whether the run must stop (cheaper than [`reason`](Self::reason)).
    pub(crate) fn is_set(&self) -> bool {
        self.has_fatal.load(Ordering::Acquire) || self.is_cancelled()
    }

    fn is_cancelled(&self) -> bool {
        self.halted.load(Ordering::SeqCst) || self.cancels.iter().any(Cancel::is_cancelled)
    }

    /// Start no new item (the run's own stop, beside the user's cancel).
    pub(crate) fn halt(&self) {
        self.halted.store(true, Ordering::SeqCst);
        self.signal.raise();
    }

    /// Record a fatal error: the run starts no further item.
    pub(crate) fn fail_fatally(&self, error: &Error) {
        let mut fatal = self.fatal.lock();
        if fatal.is_none() {
            log::warn!("stopping the run: {error}");
            *fatal = Some(error.clone());
            self.has_fatal.store(true, Ordering::Release);
            drop(fatal);
            self.signal.raise();
        }
    }

    /// The fatal error that stopped the run, if one did.
    pub(crate) fn fatal(&self) -> Option<Error> {
        self.fatal.lock().clone()
    }

    /// Block until `deadline` unless the run stops first, or `also_stop()` says to; false
    /// when stopped.
    pub(crate) fn wait_until(&self, deadline: Instant, also_stop: &dyn Fn() -> bool) -> bool {
        self.signal
            .wait_until(deadline, &|| self.is_set() || also_stop())
    }

    /// Let the user's cancel end the calls in flight too, not only stop new ones: a
    /// conversation's turn holds its process, and a cancel must not wait for its answer.
    pub(crate) fn end_calls_on_cancel(&self) {
        if self.cancels.is_empty() {
            return;
        }
        let cancels = self.cancels.clone();
        self.cancel_ends_calls.store(true, Ordering::SeqCst);
        let in_flight = Arc::clone(&self.in_flight);
        self.signal.on_raise(Box::new(move || {
            if cancels.iter().any(Cancel::is_cancelled) {
                for (_, abort) in in_flight.lock().iter() {
                    abort();
                }
            }
        }));
    }

    /// Whether a call that failed was ended by the stop ([`abort`](Self::abort), or a cancel
    /// under [`end_calls_on_cancel`](Self::end_calls_on_cancel)) rather than by itself.
    pub(crate) fn ended_calls(&self) -> bool {
        self.is_aborted() || self.cancel_ended_calls()
    }

    fn cancel_ended_calls(&self) -> bool {
        self.cancel_ends_calls.load(Ordering::SeqCst)
            && self.cancels.iter().any(Cancel::is_cancelled)
    }

    /// A call starts: `abort` ends it if the run is stopped hard meanwhile (at once if it
    /// already was).
    pub(crate) fn register_call(&self, abort: Abort) -> CallGuard<'_> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let mut in_flight = self.in_flight.lock();
        // Under the lock the cancel hook takes too: a cancel either sees this call or is
        // seen here.
        if self.aborted.load(Ordering::SeqCst) || self.cancel_ended_calls() {
            abort();
        }
        in_flight.push((id, abort));
        CallGuard { stop: self, id }
    }

    /// Stop hard: end every call in flight (their items fail as stopped) and every call
    /// that starts from now on.
    pub(crate) fn abort(&self) {
        let in_flight = self.in_flight.lock();
        self.aborted.store(true, Ordering::SeqCst);
        for (_, abort) in in_flight.iter() {
            abort();
        }
    }

    /// Whether [`abort`](Self::abort) was called.
    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_fatal_error_stops_as_stopped_and_a_spent_budget_as_itself() {
        let stop = Stop::new(None);
        assert!(stop.reason().is_none());
        stop.fail_fatally(&Error::Authentication {
            message: "bad key".into(),
        });
        assert!(matches!(stop.reason(), Some(Error::Stopped(_))));
        let stop = Stop::new(None);
        let spent = Error::BudgetExceeded {
            budget_usd: 1.0,
            spent_usd: 1.0,
        };
        stop.fail_fatally(&spent);
        assert!(matches!(stop.reason(), Some(Error::BudgetExceeded { .. })));
    }

    #[test]
    fn the_users_cancel_and_the_runs_halt_both_stop_as_cancelled() {
        let cancel = Cancel::new();
        let stop = Stop::new(Some(cancel.clone()));
        cancel.cancel();
        assert!(matches!(stop.reason(), Some(Error::Cancelled)));
        let stop = Stop::new(None);
        stop.halt();
        assert!(matches!(stop.reason(), Some(Error::Cancelled)));
    }

    #[test]
    fn a_halt_ends_a_wait_and_runs_the_hooks() {
        let stop = Arc::new(Stop::new(None));
        let woken = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&woken);
        stop.on_change(Box::new(move || seen.store(true, Ordering::SeqCst)));
        let waiter = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                stop.wait_until(Instant::now() + Duration::from_secs(3600), &|| false)
            })
        };
        stop.halt();
        assert!(!waiter.join().unwrap());
        assert!(woken.load(Ordering::SeqCst));
    }

    #[test]
    fn a_cancel_ends_calls_only_when_asked_to() {
        let counter = || {
            let ended = Arc::new(AtomicU64::new(0));
            let seen = Arc::clone(&ended);
            let abort = Arc::new(move || {
                seen.fetch_add(1, Ordering::SeqCst);
            }) as Abort;
            (ended, abort)
        };
        // A run's cancel stops new items; the calls in flight finish.
        let cancel = Cancel::new();
        let stop = Stop::new(Some(cancel.clone()));
        let (ended, abort) = counter();
        let _call = stop.register_call(abort);
        cancel.cancel();
        assert_eq!(ended.load(Ordering::SeqCst), 0);
        assert!(!stop.ended_calls());
        // A conversation's: the call in flight ends at once, and one that starts after.
        let cancel = Cancel::new();
        let stop = Stop::new(Some(cancel.clone()));
        stop.end_calls_on_cancel();
        let (ended, abort) = counter();
        let first = stop.register_call(Arc::clone(&abort));
        assert_eq!(ended.load(Ordering::SeqCst), 0);
        cancel.cancel();
        assert_eq!(ended.load(Ordering::SeqCst), 1);
        assert!(stop.ended_calls());
        drop(first);
        let _second = stop.register_call(abort);
        assert_eq!(ended.load(Ordering::SeqCst), 2);
        // Reset, the cancel no longer ends calls.
        cancel.reset();
        assert!(!stop.ended_calls());
    }

    #[test]
    fn abort_ends_calls_in_flight_and_later_ones() {
        let stop = Stop::new(None);
        let ended = Arc::new(AtomicU64::new(0));
        let abort = {
            let ended = Arc::clone(&ended);
            Arc::new(move || {
                ended.fetch_add(1, Ordering::SeqCst);
            }) as Abort
        };
        let first = stop.register_call(Arc::clone(&abort));
        stop.abort();
        assert_eq!(ended.load(Ordering::SeqCst), 1);
        let _second = stop.register_call(abort);
        assert_eq!(ended.load(Ordering::SeqCst), 2);
        drop(first);
    }
}
