//! The one shell of every stream adaptor: lazy, in source order, bounded, stoppable. What
//! differs between adaptors is what a source item is (an item, a window) and how its prompt
//! is made (a [`Prompter`]).

use std::fmt;
use std::iter::FusedIterator;

use super::engine::{Engine, Prompter};
use crate::{Cancel, MapResult, Session};

/// A Claude adaptor on a plain iterator; see [`ClaudeStreamMap`](super::ClaudeStreamMap) and
/// [`ClaudeWindows`](super::ClaudeWindows), the two forms it takes. Lazy: nothing is pulled
/// from the source and nothing runs until [`next`](Iterator::next) is called.
///
/// Yields `Ok((item, response))` or `Err(Failed { item, .. })` for every item of its source,
/// in source order. Each call to `next` pulls the source (on the calling thread) only as far
/// as needed:
///
/// - at most [`Session::concurrency`] items run at once, on the session's own threads;
/// - at most [`max_outstanding`](Self::max_outstanding) items (default 2 × concurrency) are
///   out of the source and not yet yielded, running or finished. A slow item at the head
///   therefore holds back at most `max_outstanding - 1` finished ones, and the source is not
///   pulled again until it is yielded.
///
/// Dropping it early stops pulling and cancels every item that has not started its call;
/// calls in flight finish in the background and their results are discarded. The drop does
/// not wait for them.
///
/// After a cancel or a fatal error (see [`Error::is_fatal`](crate::Error::is_fatal)) the
/// source is still pulled and each remaining item comes back at once as failed, with
/// [`Error::Cancelled`](crate::Error::Cancelled) or [`Error::Stopped`](crate::Error::Stopped)
/// and no call made: stop iterating to leave the rest in the source.
#[must_use = "stream adaptors are lazy and do nothing unless iterated"]
pub struct ClaudeStream<S: Iterator, P> {
    engine: Engine<S, P>,
}

impl<S: Iterator, P> ClaudeStream<S, P> {
    pub(crate) fn new(source: S, session: &Session, prompter: P) -> Self {
        ClaudeStream {
            engine: Engine::new(source, session, prompter),
        }
    }

    /// Stop starting new items once `cancel` is set; the rest come back as failed with
    /// [`Error::Cancelled`](crate::Error::Cancelled). Set it before iterating: items already
    /// started keep the run they started in.
    pub fn with_cancel(mut self, cancel: &Cancel) -> Self {
        self.engine.set_cancel(cancel);
        self
    }

    /// Keep this run's answers in `journal` (instead of the session's, if it has one): a
    /// rerun takes every answer already there without a call. See [`Journal`](crate::Journal).
    /// Set it before iterating.
    pub fn with_journal(mut self, journal: &crate::Journal) -> Self {
        self.engine.set_journal(journal);
        self
    }

    /// Allow at most `max` items out of the source and not yet yielded (default
    /// 2 × concurrency). Below the session's concurrency it also limits how many run at once.
    ///
    /// # Panics
    ///
    /// If `max` is 0.
    pub fn with_max_outstanding(mut self, max: usize) -> Self {
        self.engine.set_max_outstanding(max);
        self
    }

    /// The most items that can be out of the source and not yet yielded: running, or
    /// finished and waiting for an earlier one.
    pub fn max_outstanding(&self) -> usize {
        self.engine.max_outstanding()
    }
}

impl<S, P> Iterator for ClaudeStream<S, P>
where
    S: Iterator,
    S::Item: Send + 'static,
    P: Prompter<S::Item>,
{
    type Item = MapResult<S::Item>;

    fn next(&mut self) -> Option<Self::Item> {
        self.engine.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.engine.size_hint()
    }
}

impl<S, P> FusedIterator for ClaudeStream<S, P>
where
    S: Iterator,
    S::Item: Send + 'static,
    P: Prompter<S::Item>,
{
}

impl<S: Iterator, P> fmt::Debug for ClaudeStream<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaudeStream")
            .field("max_outstanding", &self.engine.max_outstanding())
            .finish_non_exhaustive()
    }
}
