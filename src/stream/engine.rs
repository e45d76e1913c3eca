//! The machinery every stream adaptor shares: the source is pulled on the caller's thread
//! inside `next()`, each item runs on the session's own threads, and results come back over
//! one channel tagged with their sequence number, to be put back in source order.

use std::collections::VecDeque;
use std::panic::resume_unwind;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::engine::{Policy, Run};
use crate::{Cancel, MapResult, Session};

/// How an adaptor turns one of its items into a prompt. Public only to name the adaptors'
/// types; this module is private, so no one outside can implement or call it.
pub trait Prompter<T>: Send + Sync + 'static {
    type Prompt: AsRef<str>;
    fn prompt(&self, item: &T) -> Self::Prompt;
}

/// A finished item: its sequence number and its result, or the panic that escaped the
/// library itself (a panic in the prompt closure is already a `Failed`).
type Finished<T> = (u64, std::thread::Result<MapResult<T>>);

pub(crate) struct Engine<I: Iterator, B> {
    /// `None` once the source has ended: it is dropped then, and never pulled again.
    source: Option<I>,
    prompter: Arc<B>,
    session: Session,
    /// Halted on drop: items not yet started are not started.
    run: Arc<Run>,
    /// What the run was made with, to make it again when one changes before the start.
    cancel: Option<Cancel>,
    journal: Option<crate::Journal>,
    concurrency: usize,
    max_outstanding: usize,
    /// Sequence number of the next item pulled.
    pulled: u64,
    /// Items sent to the session's threads whose result has not been received.
    running: usize,
    /// One slot per item pulled and not yet yielded, the head first: a slot fills when its
    /// item finishes, and the head is yielded once it is full.
    slots: VecDeque<Option<MapResult<I::Item>>>,
    yielded: u64,
    tx: Sender<Finished<I::Item>>,
    rx: Receiver<Finished<I::Item>>,
    /// Whether the run's last progress report was made.
    finished: bool,
}

impl<I: Iterator, B> Engine<I, B> {
    pub(crate) fn new(source: I, session: &Session, prompter: B) -> Self {
        let concurrency = session.concurrency();
        // Unbounded, but never holds more than `max_outstanding` results.
        let (tx, rx) = crossbeam_channel::unbounded();
        Engine {
            source: Some(source),
            prompter: Arc::new(prompter),
            session: session.clone(),
            run: Arc::new(Run::new(session, "stream", None, None)),
            cancel: None,
            journal: None,
            concurrency,
            max_outstanding: 2 * concurrency,
            pulled: 0,
            running: 0,
            slots: VecDeque::new(),
            yielded: 0,
            tx,
            rx,
            finished: false,
        }
    }

    /// Before the first item: stop starting items once `cancel` is set.
    pub(crate) fn set_cancel(&mut self, cancel: &Cancel) {
        self.cancel = Some(cancel.clone());
        self.remake_run();
    }

    /// Before the first item: keep answers in `journal`.
    pub(crate) fn set_journal(&mut self, journal: &crate::Journal) {
        self.journal = Some(journal.clone());
        self.remake_run();
    }

    fn remake_run(&mut self) {
        let run = Run::new(&self.session, "stream", None, self.cancel.as_ref());
        self.run = Arc::new(run.with_journal(self.journal.as_ref()));
    }

    pub(crate) fn set_max_outstanding(&mut self, max: usize) {
        assert!(
            max >= 1,
            "max_outstanding must be at least 1 (it bounds the items pulled and not yet yielded)"
        );
        self.max_outstanding = max;
    }

    pub(crate) fn max_outstanding(&self) -> usize {
        self.max_outstanding
    }

    /// Every item pulled gives exactly one result.
    pub(crate) fn size_hint(&self) -> (usize, Option<usize>) {
        let outstanding = self.slots.len();
        match &self.source {
            None => (outstanding, Some(outstanding)),
            Some(source) => {
                let (low, high) = source.size_hint();
                (
                    outstanding.saturating_add(low),
                    high.and_then(|h| h.checked_add(outstanding)),
                )
            }
        }
    }

    fn accept(&mut self, (seq, result): Finished<I::Item>) {
        self.running -= 1;
        match result {
            Ok(result) => {
                let index = (seq - self.yielded) as usize;
                self.slots[index] = Some(result);
            }
            // Only a bug in this crate gets here; hand it to the caller rather than hang.
            Err(panic) => resume_unwind(panic),
        }
    }
}

impl<I, B> Engine<I, B>
where
    I: Iterator,
    I::Item: Send + 'static,
    B: Prompter<I::Item>,
{
    pub(crate) fn next(&mut self) -> Option<MapResult<I::Item>> {
        loop {
            while let Ok(finished) = self.rx.try_recv() {
                self.accept(finished);
            }
            if matches!(self.slots.front(), Some(Some(_))) {
                self.yielded += 1;
                return self.slots.pop_front().flatten();
            }
            // Pull only while a call can start at once and the reorder window has room, so
            // a slow head item holds back at most `max_outstanding - 1` finished ones.
            let can_pull = self.running < self.concurrency
                && self.slots.len() < self.max_outstanding
                && self.source.is_some();
            if can_pull {
                match self.source.as_mut().and_then(Iterator::next) {
                    Some(item) => self.start(item),
                    None => self.source = None,
                }
                continue;
            }
            if self.running == 0 {
                // Nothing running, the head not ready and nothing to pull: the end.
                debug_assert!(self.slots.is_empty());
                if !std::mem::replace(&mut self.finished, true) {
                    self.run.finish();
                }
                return None;
            }
            let finished = self.wait();
            self.accept(finished);
        }
    }

    fn start(&mut self, item: I::Item) {
        let seq = self.pulled;
        self.pulled += 1;
        if let Some(error) = self.run.stop_reason() {
            // Stopped or cancelled: the item comes back at once, without a trip to the
            // session's threads.
            let failed = self.run.refuse(item, error);
            self.slots.push_back(Some(Err(failed)));
            return;
        }
        self.slots.push_back(None);
        self.running += 1;
        let run = Arc::clone(&self.run);
        let prompter = Arc::clone(&self.prompter);
        let tx = self.tx.clone();
        self.run.answer_later(
            move || {
                run.item(item, |item: &I::Item| prompter.prompt(item), &Policy::Plain)
                    .map(|(item, answer)| (item, answer.response))
            },
            // The receiver is gone if the stream was dropped: nobody wants the result.
            move |result| {
                let _ = tx.send((seq, result));
            },
        );
    }

    /// Block until some running item finishes.
    fn wait(&self) -> Finished<I::Item> {
        self.run.wait_for(&self.rx)
    }
}

impl<I: Iterator, B> Drop for Engine<I, B> {
    fn drop(&mut self) {
        // Items not yet started are not started (waits on the throttle end at once); those
        // in flight finish on their own and their results are dropped. Nothing here waits
        // for them.
        self.run.stop().halt();
    }
}
