//! `Cancel`, the user's stop handle, and `Signal`, how a stop wakes whoever waits for one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// A handle that stops runs from starting new items. Cheap to clone; set it from any thread,
/// for example from a Ctrl-C handler. Items in flight finish; the rest come back as failed
/// with [`Error::Cancelled`](crate::Error::Cancelled). Runs waiting on the throttle or
/// between retries notice at once.
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
#[derive(Clone, Default)]
pub struct Cancel(Arc<CancelState>);

#[derive(Default)]
struct CancelState {
    cancelled: AtomicBool,
    /// The runs using this handle, woken when it is set.
    watchers: Mutex<Vec<Weak<Signal>>>,
}

impl Cancel {
    /// A handle that is not cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!claude_rayon::Cancel::new().is_cancelled());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop every run that uses this handle from starting new items.
    ///
    /// # Examples
    ///
    /// ```
    /// let cancel = claude_rayon::Cancel::new();
    /// cancel.cancel();
    /// assert!(cancel.is_cancelled());
    /// ```
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        let watchers: Vec<Arc<Signal>> = {
            let mut watchers = self.0.watchers.lock();
            watchers.retain(|w| w.strong_count() > 0);
            watchers.iter().filter_map(Weak::upgrade).collect()
        };
        for signal in watchers {
            signal.raise();
        }
    }

    /// Undo [`cancel`](Self::cancel), so that runs using this handle start items again.
    ///
    /// # Examples
    ///
    /// ```
    /// let cancel = claude_rayon::Cancel::new();
    /// cancel.cancel();
    /// cancel.reset();
    /// assert!(!cancel.is_cancelled());
    /// ```
    pub fn reset(&self) {
        self.0.cancelled.store(false, Ordering::SeqCst);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Raise `signal` whenever this handle is cancelled (at once if it already is).
    pub(crate) fn watch(&self, signal: &Arc<Signal>) {
        let mut watchers = self.0.watchers.lock();
        // Runs that ended are forgotten here, so a handle reused for many runs stays small.
        watchers.retain(|w| w.strong_count() > 0);
        watchers.push(Arc::downgrade(signal));
        drop(watchers);
        if self.is_cancelled() {
            signal.raise();
        }
    }
}

/// The handle the program's Ctrl-C sets, once installed.
#[cfg(feature = "ctrlc")]
static CTRL_C: std::sync::Mutex<Option<Cancel>> = std::sync::Mutex::new(None);

#[cfg(feature = "ctrlc")]
impl Cancel {
    /// The handle Ctrl-C sets (feature `ctrlc`): the first Ctrl-C cancels it, and a Ctrl-C
    /// while it is cancelled ends the program at once with exit code 130 (128 + SIGINT, what
    /// a shell reports for a program Ctrl-C ended). Each press says so on stderr.
    ///
    /// Give it to a session ([`SessionBuilder::with_cancel`](crate::SessionBuilder::with_cancel))
    /// and every run on it obeys, or to one run (`with_cancel` on an adaptor or a stream).
    /// After the first Ctrl-C no new item starts: the items not started come back as failed
    /// with [`Error::Cancelled`](crate::Error::Cancelled), the items in flight finish and
    /// their answers are kept (in the [`Journal`](crate::Journal) too, so a rerun pays only
    /// for what is left), a pipeline stops as by `request_stop`, and a conversation's turn
    /// in flight ends. The second Ctrl-C abandons the items in flight: their calls may be
    /// billed, their answers are lost; the CLI processes end with the program, and the
    /// journal keeps every answer handed on before it.
    ///
    /// A program has one Ctrl-C handler: every call returns the same handle (a
    /// [`reset`](Self::reset) makes the next Ctrl-C a first one again). A program started
    /// with Ctrl-C ignored (`nohup`, `cmd &` in a script) keeps ignoring it: the handle is
    /// then set only by [`cancel`](Self::cancel).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when the program already has a
    /// handler for SIGINT (set with `ctrlc`, `signal-hook` or `libc`): this would replace it,
    /// so it refuses; cancel the handle from your handler instead. [`Error::Io`](crate::Error::Io)
    /// when the handler cannot be set up.
    ///
    /// # Examples
    ///
    /// ```
    /// # claude_rayon::simulator::serve_if_requested();
    /// use claude_rayon::{Cancel, Session};
    ///
    /// let ctrl_c = Cancel::on_ctrl_c()?;
    /// let session = Session::builder().simulated()?.with_cancel(&ctrl_c).build()?;
    /// // ... runs on `session` stop starting items at the first Ctrl-C.
    /// assert!(!ctrl_c.is_cancelled());
    /// // A second call is the same handle.
    /// Cancel::on_ctrl_c()?.cancel();
    /// assert!(ctrl_c.is_cancelled());
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn on_ctrl_c() -> Result<Cancel, crate::Error> {
        let mut installed = CTRL_C
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cancel) = &*installed {
            return Ok(cancel.clone());
        }
        let cancel = Cancel::new();
        if sigint_ignored() {
            // Started with Ctrl-C ignored (`nohup`, a background job of a script): the
            // program is not to be interrupted, so it is not; the handle is only a handle.
            log::debug!("SIGINT is ignored in this program: Ctrl-C will not cancel");
            *installed = Some(cancel.clone());
            return Ok(cancel);
        }
        let pressed = cancel.clone();
        // The handler runs on a thread of ctrlc's, woken through a pipe: ordinary code may
        // run there, printing and exiting included.
        ctrlc::try_set_handler(move || {
            if pressed.is_cancelled() {
                eprintln!("\nCtrl-C again: quitting now; the items in flight are abandoned.");
                std::process::exit(130);
            }
            pressed.cancel();
            eprintln!(
                "\nCtrl-C: no new items start; the ones in flight finish and their answers \
                 are kept. Press Ctrl-C again to quit at once."
            );
        })
        .map_err(|error| match error {
            ctrlc::Error::System(error) => crate::Error::io(error),
            other => crate::Error::InvalidConfig(format!(
                "Cancel::on_ctrl_c: {other}; this program already handles Ctrl-C, so cancel a \
                 Cancel from that handler instead"
            )),
        })?;
        *installed = Some(cancel.clone());
        Ok(cancel)
    }
}

/// Whether SIGINT is ignored in this process, as a shell leaves it for a background job.
#[cfg(feature = "ctrlc")]
fn sigint_ignored() -> bool {
    // SAFETY: reads the current action only (no new one is given).
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGINT, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Cancel").field(&self.is_cancelled()).finish()
    }
}

/// Something a stop must interrupt: called when the signal is raised.
pub(crate) type Hook = Box<dyn Fn() + Send + Sync>;

/// A wake-up for whoever waits on a run's stop: waits between retries block on its condition
/// variable, and its hooks wake waits that block elsewhere (the throttle's queue, a
/// pipeline's source).
#[derive(Default)]
pub(crate) struct Signal {
    raised: Mutex<u64>,
    changed: Condvar,
    hooks: Mutex<Vec<Hook>>,
}

impl Signal {
    /// Wake every waiter and run the hooks.
    pub(crate) fn raise(&self) {
        *self.raised.lock() += 1;
        self.changed.notify_all();
        for hook in self.hooks.lock().iter() {
            hook();
        }
    }

    /// Run `hook` on every raise from now on.
    pub(crate) fn on_raise(&self, hook: Hook) {
        self.hooks.lock().push(hook);
    }

    /// Block until `deadline`, or until `stopped()` is true (checked at the start and after
    /// every raise). Returns false when stopped first.
    pub(crate) fn wait_until(&self, deadline: Instant, stopped: &dyn Fn() -> bool) -> bool {
        let mut raised = self.raised.lock();
        loop {
            // Checked under the lock, so a raise between the check and the wait is not lost.
            if stopped() {
                return false;
            }
            if Instant::now() >= deadline {
                return true;
            }
            let seen = *raised;
            while *raised == seen {
                if self.changed.wait_until(&mut raised, deadline).timed_out() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_cancel_wakes_a_long_wait_at_once() {
        let cancel = Cancel::new();
        let signal = Arc::new(Signal::default());
        cancel.watch(&signal);
        let waiter = {
            let (cancel, signal) = (cancel.clone(), Arc::clone(&signal));
            std::thread::spawn(move || {
                let far = Instant::now() + Duration::from_secs(3600);
                signal.wait_until(far, &|| cancel.is_cancelled())
            })
        };
        cancel.cancel();
        assert!(
            !waiter.join().unwrap(),
            "the wait ended because of the cancel"
        );
    }

    #[test]
    fn a_wait_without_a_stop_lasts_until_its_deadline() {
        let signal = Signal::default();
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(signal.wait_until(deadline, &|| false));
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn watching_a_cancelled_handle_raises_at_once_and_runs_hooks() {
        let cancel = Cancel::new();
        cancel.cancel();
        let signal = Arc::new(Signal::default());
        let hits = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&hits);
        signal.on_raise(Box::new(move || seen.store(true, Ordering::SeqCst)));
        cancel.watch(&signal);
        assert!(hits.load(Ordering::SeqCst));
    }
}
