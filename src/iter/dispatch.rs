//! How an adaptor's items reach the session's threads.
//!
//! rayon cannot move an indexed producer into another pool's `install`, so an adaptor, when
//! driven, first gathers its base's items (on whatever thread drives it), then hands them to
//! `concurrency` workers on the session's own pool that pull from one shared queue: a slow
//! item never holds back a queue of others behind it, and no thread outside the session's
//! pool ever waits on a CLI process.

use std::panic::{catch_unwind, AssertUnwindSafe};

use parking_lot::Mutex;

use crate::cancel::RunControl;
use crate::progress::RunProgress;
use crate::{Error, Failed, Session};

/// How a run names itself in progress reports and tells a success from a failure.
pub(crate) struct RunKind<R> {
    pub name: &'static str,
    pub succeeded: fn(&R) -> bool,
}

/// Run `work` on every item on the session's threads; results come back in input order.
pub(crate) fn dispatch<T, R, W>(
    session: &Session,
    items: Vec<T>,
    control: &RunControl,
    kind: RunKind<R>,
    work: W,
) -> Vec<R>
where
    T: Send,
    R: Send,
    W: Fn(T, &RunControl) -> R + Sync,
{
    let total = items.len();
    let progress = RunProgress::start(session, kind.name, Some(total as u64));
    if total == 0 {
        if let Some(progress) = &progress {
            progress.finish();
        }
        return Vec::new();
    }
    let (queue_tx, queue_rx) = crossbeam_channel::bounded(total);
    for pair in items.into_iter().enumerate() {
        queue_tx
            .send(pair)
            .expect("the queue has room for every item");
    }
    drop(queue_tx);
    let slots: Vec<Mutex<Option<R>>> = (0..total).map(|_| Mutex::new(None)).collect();
    let workers = session.concurrency().min(total);
    session.threads().scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|_| {
                while let Ok((index, item)) = queue_rx.try_recv() {
                    let result = work(item, control);
                    if let Some(progress) = &progress {
                        progress.item_done((kind.succeeded)(&result));
                    }
                    *slots[index].lock() = Some(result);
                }
            });
        }
    });
    if let Some(progress) = &progress {
        progress.finish();
    }
    slots
        .into_iter()
        .map(|slot| slot.into_inner().expect("every item was processed"))
        .collect()
}

/// Count an item that failed before any call (stopped, cancelled, refused, or a panicking
/// prompt closure) once as started and failed, so that stats and progress agree.
pub(crate) fn not_started<T>(session: &Session, failed: Failed<T>) -> Failed<T> {
    session.inner.count_started();
    session.inner.count_finished(false);
    failed
}

/// Build the prompt for an item, turning a panic into a failure that hands the item back.
pub(crate) fn prompt_for<T, P, F>(prompt_fn: &F, item: T) -> Result<(T, String), Failed<T>>
where
    F: Fn(&T) -> P,
    P: AsRef<str>,
{
    match catch_unwind(AssertUnwindSafe(|| prompt_fn(&item).as_ref().to_string())) {
        Ok(prompt) => Ok((item, prompt)),
        Err(panic) => Err(Failed {
            item,
            error: Error::Panicked(panic_message(panic.as_ref())),
            attempts: 0,
        }),
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".into()
    }
}

/// The start of every item: the run's stop check, then its prompt, built before a process is
/// taken so that a prompt closure that itself uses Claude cannot starve the pool. Either
/// failure hands the item back, counted.
pub(crate) fn begin<T, P, F>(
    session: &Session,
    control: &RunControl,
    prompt_fn: &F,
    item: T,
) -> Result<(T, String), Failed<T>>
where
    F: Fn(&T) -> P,
    P: AsRef<str>,
{
    if let Some(reason) = control.stop_reason() {
        let failed = Failed {
            item,
            error: reason,
            attempts: 0,
        };
        return Err(not_started(session, failed));
    }
    prompt_for(prompt_fn, item).map_err(|f| not_started(session, f))
}

/// One item through the session: stop check, prompt, then the call.
pub(crate) fn run_one<T, P, F>(
    session: &Session,
    control: &RunControl,
    prompt_fn: &F,
    item: T,
) -> Result<(T, crate::Response), Failed<T>>
where
    F: Fn(&T) -> P,
    P: AsRef<str>,
{
    let (item, prompt) = begin(session, control, prompt_fn, item)?;
    match session.inner.execute(&prompt, control) {
        Ok((response, _)) => Ok((item, response)),
        Err((error, attempts)) => Err(Failed {
            item,
            error,
            attempts,
        }),
    }
}
