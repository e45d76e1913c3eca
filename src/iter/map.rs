//! `claude_map`: one prompt per item, the answer beside the item.

use std::fmt;

use rayon::iter::plumbing::{Consumer, ProducerCallback, UnindexedConsumer};
use rayon::iter::{IndexedParallelIterator, IntoParallelIterator, ParallelIterator};

use super::RunOptions;
use crate::engine::Policy;
use crate::{MapResult, Session};

/// The adaptor behind [`claude_map`](crate::prelude::ClaudeParallelIterator::claude_map).
/// Lazy: nothing runs until it is driven (collected, iterated with `for_each`, …).
///
/// Yields `Ok((item, response))` or `Err(Failed { item, .. })` per item, in input order when
/// collected from an indexed iterator.
///
/// Every item is sent even if the consumer stops early (`find_any`, `take_any`, `any`): the
/// results are gathered before the consumer sees the first. To stop a run early, use
/// [`with_cancel`](Self::with_cancel).
#[must_use = "parallel adaptors are lazy and do nothing unless consumed"]
pub struct ClaudeMap<I, F> {
    pub(super) base: I,
    pub(super) session: Session,
    pub(super) prompt_fn: F,
    pub(super) options: RunOptions,
}

impl<I, F> ClaudeMap<I, F> {
    pub(crate) fn new(base: I, session: &Session, prompt_fn: F) -> Self {
        ClaudeMap {
            base,
            session: session.clone(),
            prompt_fn,
            options: RunOptions::default(),
        }
    }

    run_options!();
}

impl<I, F, P> ClaudeMap<I, F>
where
    I: ParallelIterator,
    F: Fn(&I::Item) -> P + Sync + Send,
    P: AsRef<str>,
{
    fn run(self) -> Vec<MapResult<I::Item>> {
        let items: Vec<I::Item> = self.base.collect();
        let run = self.options.start(&self.session, "claude_map", items.len());
        let prompt_fn = &self.prompt_fn;
        run.answer_items(items, prompt_fn, &Policy::Plain, |outcome| {
            outcome.map(|(item, answer)| (item, answer.response))
        })
    }
}

impl<I: fmt::Debug, F> fmt::Debug for ClaudeMap<I, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaudeMap")
            .field("base", &self.base)
            .field("session", &self.session)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<I, F, P> ParallelIterator for ClaudeMap<I, F>
where
    I: ParallelIterator,
    F: Fn(&I::Item) -> P + Sync + Send,
    P: AsRef<str>,
{
    type Item = MapResult<I::Item>;

    fn drive_unindexed<C>(self, consumer: C) -> C::Result
    where
        C: UnindexedConsumer<Self::Item>,
    {
        self.run().into_par_iter().drive_unindexed(consumer)
    }

    fn opt_len(&self) -> Option<usize> {
        self.base.opt_len()
    }
}

impl<I, F, P> IndexedParallelIterator for ClaudeMap<I, F>
where
    I: IndexedParallelIterator,
    F: Fn(&I::Item) -> P + Sync + Send,
    P: AsRef<str>,
{
    fn len(&self) -> usize {
        self.base.len()
    }

    fn drive<C: Consumer<Self::Item>>(self, consumer: C) -> C::Result {
        self.run().into_par_iter().drive(consumer)
    }

    fn with_producer<CB: ProducerCallback<Self::Item>>(self, callback: CB) -> CB::Output {
        self.run().into_par_iter().with_producer(callback)
    }
}
