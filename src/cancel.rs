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

/// The stop state of one run: the user's cancel and the first fatal error.
#[derive(Default)]
pub(crate) struct RunControl {
    cancel: Option<Cancel>,
    /// The adaptor's own stop, beside the user's: set when a stream is dropped before its end.
    abandon: Option<Cancel>,
    fatal: Mutex<Option<Error>>,
    has_fatal: AtomicBool,
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
