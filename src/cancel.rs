//! Stopping a run: a user's `Cancel`, and the fatal stop a run makes by itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::Error;

/// A handle that stops runs from starting new items. Cheap to clone; set it from any thread,
/// for example from a Ctrl-C handler. Items in flight finish; the rest come back as failed
/// with [`Error::Cancelled`].
///
/// # Examples
///
/// ```
/// use claude_rayon::Cancel;
///
/// let cancel = Cancel::new();
/// let for_handler = cancel.clone();
/// std::thread::spawn(move || for_handler.cancel()).join().unwrap();
/// assert!(cancel.is_cancelled());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A handle that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop every run that uses this handle from starting new items.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Undo [`cancel`](Self::cancel), so that runs using this handle start items again.
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Ends one call in flight (kills its process); registered by the call while it runs.
pub(crate) type Abort = Arc<dyn Fn() + Send + Sync>;

/// The stop state of one run: the user's cancel, the first fatal error, and a hard stop
/// that ends the calls in flight.
#[derive(Default)]
pub(crate) struct RunControl {
    cancel: Option<Cancel>,
    /// The adaptor's own stop, beside the user's: set when a stream is dropped before its end.
    abandon: Option<Cancel>,
    fatal: Mutex<Option<Error>>,
    has_fatal: AtomicBool,
    /// Set by [`abort`](Self::abort): calls in flight were ended, new ones end at once.
    aborted: AtomicBool,
    in_flight: Mutex<Vec<(u64, Abort)>>,
    next_call: std::sync::atomic::AtomicU64,
}

/// A call registered with [`RunControl::register_call`]; unregisters it when dropped.
pub(crate) struct CallGuard<'a> {
    control: &'a RunControl,
    id: u64,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.control
            .in_flight
            .lock()
            .retain(|(id, _)| *id != self.id);
    }
}

impl RunControl {
    pub(crate) fn new(cancel: Option<Cancel>) -> Self {
        RunControl {
            cancel,
            ..RunControl::default()
        }
    }

    /// Also stop (as cancelled) once `abandon` is set, whatever the user's cancel says.
    pub(crate) fn abandoned_by(mut self, abandon: Cancel) -> Self {
        self.abandon = Some(abandon);
        self
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(Cancel::is_cancelled)
            || self.abandon.as_ref().is_some_and(Cancel::is_cancelled)
    }

    /// Why the run must not start another item, if it must not.
    pub(crate) fn stop_reason(&self) -> Option<Error> {
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

    pub(crate) fn should_stop(&self) -> bool {
        self.has_fatal.load(Ordering::Acquire) || self.is_cancelled()
    }

    /// A call starts: `abort` ends it if the run is stopped hard meanwhile (at once if it
    /// already was).
    pub(crate) fn register_call(&self, abort: Abort) -> CallGuard<'_> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let mut in_flight = self.in_flight.lock();
        if self.aborted.load(Ordering::SeqCst) {
            abort();
        }
        in_flight.push((id, abort));
        CallGuard { control: self, id }
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

    /// Record a fatal error: the run starts no further item.
    pub(crate) fn fail_fatally(&self, error: &Error) {
        let mut fatal = self.fatal.lock();
        if fatal.is_none() {
            log::warn!("stopping the run: {error}");
            *fatal = Some(error.clone());
            self.has_fatal.store(true, Ordering::Release);
        }
    }
}
