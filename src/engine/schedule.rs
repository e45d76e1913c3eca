//! The one place items are put on the session's threads, for every adaptor, stream and the
//! pipeline: known items answered together ([`Run::answer_all`]), one item answered later
//! with its result handed on ([`Run::answer_later`]), and a wait for such results that does
//! not take a thread from the items it waits for ([`Run::wait_for`]).
//!
//! rayon cannot move an indexed producer into another pool's `install`, so an adaptor, when
//! driven, first gathers its base's items (on whatever thread drives it), then hands them
//! here; `concurrency` workers on the session's own pool pull from one shared queue, so a
//! slow item never holds back a queue of others behind it, and no thread outside the
//! session's pool ever waits on a backend.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use super::{Answer, Policy, Run};
use crate::Failed;

impl Run {
    /// Answer every item under `policy` and hand each outcome to `then`; results come
    /// back in input order. On a batch session ([`Backend::Batches`](crate::Backend::Batches))
    /// the items' requests go out in batches (`batched.rs`); otherwise each item's life runs
    /// on the session's threads ([`answer_all`](Self::answer_all)).
    pub(crate) fn answer_items<T, F, P, R, Then>(
        &self,
        items: Vec<T>,
        prompt_fn: &F,
        policy: &Policy<'_>,
        then: Then,
    ) -> Vec<R>
    where
        T: Send,
        R: Send,
        F: Fn(&T) -> P + Sync,
        P: AsRef<str>,
        Then: Fn(Result<(T, Answer), Failed<T>>) -> R + Sync,
    {
        if let Some(api) = self.session().backend().batches() {
            let outcomes = super::batched::answer(self, api, items, prompt_fn, policy);
            self.finish();
            return outcomes.into_iter().map(then).collect();
        }
        self.answer_all(items, |item| then(self.item(item, prompt_fn, policy)))
    }

    /// Run `work` (a run's data-parallel step: a batch's prompts and bodies) on the
    /// session's threads.
    pub(crate) fn on_threads<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        self.session().threads().install(work)
    }

    /// One prompt's life, in a batch of its own on a batch session.
    pub(crate) fn answer_one(
        &self,
        prompt: &str,
        policy: &Policy<'_>,
    ) -> Result<Answer, Failed<()>> {
        if self.is_batched() {
            let mut outcomes = self.answer_items(vec![()], &|_: &()| prompt, policy, |o| o);
            return outcomes
                .pop()
                .expect("one item, one outcome")
                .map(|((), answer)| answer);
        }
        self.item((), |_| prompt, policy).map(|((), answer)| answer)
    }

    /// Whether this run's items go out in batches, so that paths that need each answer as
    /// it comes (streams, the pipeline, conversations) can refuse it.
    pub(crate) fn is_batched(&self) -> bool {
        self.session().backend().batches().is_some()
    }

    /// Run `work` on every item on the session's threads; results come back in input
    /// order. The run's last progress report follows the last item.
    pub(crate) fn answer_all<T, R, W>(&self, items: Vec<T>, work: W) -> Vec<R>
    where
        T: Send,
        R: Send,
        W: Fn(T) -> R + Sync,
    {
        let total = items.len();
        if total == 0 {
            self.finish();
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
        let session = self.session();
        let workers = session.concurrency().min(total);
        session.threads().scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|_| {
                    while let Ok((index, item)) = queue_rx.try_recv() {
                        *slots[index].lock() = Some(work(item));
                    }
                });
            }
        });
        self.finish();
        slots
            .into_iter()
            .map(|slot| slot.into_inner().expect("every item was processed"))
            .collect()
    }

    /// Run `work` on a session thread now, and hand its result to `then` there, or the
    /// panic that escaped it: a panic must not reach rayon (which would abort) nor leave
    /// whoever waits for the result waiting.
    pub(crate) fn answer_later<R>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
        then: impl FnOnce(std::thread::Result<R>) + Send + 'static,
    ) {
        self.session().threads().spawn(move || {
            then(catch_unwind(AssertUnwindSafe(work)));
        });
    }

    /// Block until `rx` gives a message. On one of the session's own threads (a stream
    /// inside a prompt closure), blocking could take the very thread the awaited items are
    /// queued for, so queued work runs meanwhile.
    pub(crate) fn wait_for<M>(&self, rx: &Receiver<M>) -> M {
        let pool = self.session().threads();
        if pool.current_thread_index().is_none() {
            return rx.recv().expect("the waiter holds a sender");
        }
        loop {
            if let Ok(message) = rx.try_recv() {
                return message;
            }
            if pool.yield_now() != Some(rayon::Yield::Executed) {
                if let Ok(message) = rx.recv_timeout(Duration::from_millis(1)) {
                    return message;
                }
            }
        }
    }
}
