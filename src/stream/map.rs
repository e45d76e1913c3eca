//! `claude_stream_map`: one prompt per item of a plain iterator, in source order.

use std::iter::FusedIterator;

use super::engine::{Engine, Prompter};
use crate::MapResult;
use crate::{Cancel, Session};

/// The adaptor behind
/// [`claude_stream_map`](crate::prelude::ClaudeIterator::claude_stream_map). Lazy: nothing is
/// pulled from the source and nothing runs until [`next`](Iterator::next) is called.
///
/// Yields `Ok((item, response))` or `Err(Failed { item, .. })` for every item, in source
/// order. Each call to `next` pulls the source (on the calling thread) only as far as needed:
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
pub struct ClaudeStreamMap<I: Iterator, F> {
    engine: Engine<I, ItemPrompt<F>>,
}

/// The user's prompt closure, applied to an item.
pub(crate) struct ItemPrompt<F>(F);

impl<T, F, P> Prompter<T> for ItemPrompt<F>
where
    F: Fn(&T) -> P + Send + Sync + 'static,
    P: AsRef<str>,
{
    type Prompt = P;

    fn prompt(&self, item: &T) -> P {
        (self.0)(item)
    }
}

impl<I: Iterator, F> ClaudeStreamMap<I, F> {
    pub(crate) fn new(source: I, session: &Session, prompt_fn: F) -> Self {
        ClaudeStreamMap {
            engine: Engine::new(source, session, ItemPrompt(prompt_fn)),
        }
    }

    /// Stop starting new items once `cancel` is set; the rest come back as failed with
    /// [`Error::Cancelled`](crate::Error::Cancelled). Set it before iterating: items already
    /// started keep the run they started in.
    pub fn with_cancel(mut self, cancel: &Cancel) -> Self {
        self.engine.set_cancel(cancel);
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

impl<I, F, P> Iterator for ClaudeStreamMap<I, F>
where
    I: Iterator,
    I::Item: Send + 'static,
    F: Fn(&I::Item) -> P + Send + Sync + 'static,
    P: AsRef<str>,
{
    type Item = MapResult<I::Item>;

    fn next(&mut self) -> Option<Self::Item> {
        self.engine.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.engine.size_hint()
    }
}

impl<I, F, P> FusedIterator for ClaudeStreamMap<I, F>
where
    I: Iterator,
    I::Item: Send + 'static,
    F: Fn(&I::Item) -> P + Send + Sync + 'static,
    P: AsRef<str>,
{
}
