//! `claude_map(..).typed::<T>()`: each answer checked against `T`'s schema and parsed into
//! `T` (feature `schema`).

use std::fmt;
use std::marker::PhantomData;

use rayon::iter::plumbing::{Consumer, ProducerCallback, UnindexedConsumer};
use rayon::iter::{IndexedParallelIterator, IntoParallelIterator, ParallelIterator};
use serde::de::DeserializeOwned;

use super::{ClaudeMap, RunOptions};
use crate::engine::typed::Typed;
use crate::engine::Policy;
use crate::{Failed, Session};

/// One item's result: the item with its answer as an `O`, or the item back.
type TypedResult<T, O> = Result<(T, O), Failed<T>>;

/// The adaptor behind [`ClaudeMap::typed`]. Lazy: nothing runs until it is driven.
///
/// Yields `Ok((item, answer))` with the answer as a `T`, or `Err(Failed { item, .. })`, in
/// input order when collected from an indexed iterator.
#[must_use = "parallel adaptors are lazy and do nothing unless consumed"]
pub struct ClaudeMapTyped<I, F, T> {
    base: I,
    session: Session,
    prompt_fn: F,
    options: RunOptions,
    _answer: PhantomData<fn() -> T>,
}

impl<I, F> ClaudeMap<I, F> {
    /// Take each answer as a `T` (feature `schema`): checked against `T`'s JSON schema (the
    /// session must be built with [`json_schema_of::<T>()`](crate::SessionBuilder::json_schema_of))
    /// and parsed into it. An answer that does not fit, or has no structured part, is asked
    /// once more (fresh context, the same prompt); a second one fails the item with
    /// [`Error::StructuredOutputInvalid`](crate::Error::StructuredOutputInvalid) (which says
    /// where and why) or [`Error::StructuredOutputMissing`](crate::Error::StructuredOutputMissing),
    /// the item handed back. A session built with another schema or none fails every item
    /// with [`Error::InvalidConfig`](crate::Error::InvalidConfig), before any call.
    ///
    /// Only fitting answers go to the journal as answers, so a rerun asks again for the
    /// ones that did not fit.
    ///
    /// # Examples
    ///
    /// ```
    /// # claude_rayon::simulator::serve_if_requested();
    /// use claude_rayon::prelude::*;
    /// use claude_rayon::{Outcome, Session};
    /// use rayon::prelude::*;
    ///
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct Invoice { vendor: String, total_cents: u64, overdue: bool }
    ///
    /// let session = Session::builder().simulated()?.json_schema_of::<Invoice>().build()?;
    /// let emails = vec![
    ///     "Hi, attached is invoice 2024-113 from Nordlys AS for 1,250.00 EUR, due last Friday.",
    ///     "Reminder: your Hetzner invoice of 38.20 EUR will be charged on the 3rd.",
    /// ];
    /// let outcome: Outcome<(&&str, Invoice), &&str> = emails
    ///     .par_iter()
    ///     .claude_map(&session, |e| format!("Read the invoice in this email:\n{e}"))
    ///     .typed::<Invoice>()
    ///     .collect();
    /// assert_eq!(outcome.ok.len(), 2);
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn typed<T>(self) -> ClaudeMapTyped<I, F, T>
    where
        T: schemars::JsonSchema + DeserializeOwned + Send,
    {
        ClaudeMapTyped {
            base: self.base,
            session: self.session,
            prompt_fn: self.prompt_fn,
            options: self.options,
            _answer: PhantomData,
        }
    }
}

impl<I, F, T> ClaudeMapTyped<I, F, T> {
    run_options!();
}

impl<I, F, P, T> ClaudeMapTyped<I, F, T>
where
    I: ParallelIterator,
    F: Fn(&I::Item) -> P + Sync + Send,
    P: AsRef<str>,
    T: schemars::JsonSchema + DeserializeOwned + Send,
{
    fn run(self) -> Vec<TypedResult<I::Item, T>> {
        let items: Vec<I::Item> = self.base.collect();
        let run = self.options.start(&self.session, "claude_map", items.len());
        let typed = match Typed::<T>::for_session(&self.session, "typed") {
            Ok(typed) => typed,
            Err(error) => return super::filter::refuse_all(&run, items, error),
        };
        let policy = Policy::Typed {
            check: &|response| typed.check(response),
        };
        let prompt_fn = &self.prompt_fn;
        run.answer_items(items, prompt_fn, &policy, |outcome| {
            let (item, answer) = outcome?;
            // Checked already: the parse is the same one again.
            match typed.parse(&answer.response) {
                Ok(value) => Ok((item, value)),
                Err(error) => Err(Failed {
                    item,
                    error,
                    attempts: answer.attempts,
                }),
            }
        })
    }
}

impl<I: fmt::Debug, F, T> fmt::Debug for ClaudeMapTyped<I, F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaudeMapTyped")
            .field("base", &self.base)
            .field("session", &self.session)
            .field("answer", &std::any::type_name::<T>())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<I, F, P, T> ParallelIterator for ClaudeMapTyped<I, F, T>
where
    I: ParallelIterator,
    F: Fn(&I::Item) -> P + Sync + Send,
    P: AsRef<str>,
    T: schemars::JsonSchema + DeserializeOwned + Send,
{
    type Item = TypedResult<I::Item, T>;

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

impl<I, F, P, T> IndexedParallelIterator for ClaudeMapTyped<I, F, T>
where
    I: IndexedParallelIterator,
    F: Fn(&I::Item) -> P + Sync + Send,
    P: AsRef<str>,
    T: schemars::JsonSchema + DeserializeOwned + Send,
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
