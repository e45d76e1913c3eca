//! `claude_filter`: keep the items Claude judges true, hand back those it could not judge.

use rayon::iter::plumbing::UnindexedConsumer;
use rayon::iter::{IntoParallelIterator, ParallelIterator};

use std::fmt;

use super::RunOptions;
use crate::engine::{strict, Policy, Run};
use crate::{Failed, Session};

/// The adaptor behind
/// [`claude_filter`](crate::prelude::ClaudeParallelIterator::claude_filter). Lazy: nothing
/// runs until it is driven.
///
/// Yields `Ok(item)` for every item judged true, nothing for items judged false, and
/// `Err(Failed { item, .. })` for items that could not be judged, in input order.
#[must_use = "parallel adaptors are lazy and do nothing unless consumed"]
pub struct ClaudeFilter<I, F> {
    base: I,
    session: Session,
    question_fn: F,
    options: RunOptions,
}

/// The verdicts the model is offered; `true` and `false` are accepted as well.
fn verdicts() -> Vec<String> {
    vec!["yes".to_string(), "no".to_string()]
}

/// Index 0 keeps the item, 1 drops it.
fn interpret_verdict(answer: &str) -> Option<usize> {
    match strict::normalize(answer).as_str() {
        "yes" | "true" => Some(0),
        "no" | "false" => Some(1),
        _ => None,
    }
}

impl<I, F> ClaudeFilter<I, F> {
    pub(crate) fn new(base: I, session: &Session, question_fn: F) -> Self {
        ClaudeFilter {
            base,
            session: session.clone(),
            question_fn,
            options: RunOptions::default(),
        }
    }

    run_options!();
}

impl<I, F, P> ClaudeFilter<I, F>
where
    I: ParallelIterator,
    F: Fn(&I::Item) -> P + Sync + Send,
    P: AsRef<str>,
{
    fn run(self) -> Vec<Result<I::Item, Failed<I::Item>>> {
        let items: Vec<I::Item> = self.base.collect();
        let run = self
            .options
            .start(&self.session, "claude_filter", items.len());
        if let Err(error) = strict::check_session(&self.session, "claude_filter") {
            return refuse_all(&run, items, error);
        }
        let question_fn = &self.question_fn;
        let allowed = verdicts();
        let policy = Policy::Strict {
            allowed: &allowed,
            interpret: &interpret_verdict,
        };
        let verdicts = run.answer_items(items, question_fn, &policy, |outcome| match outcome {
            Ok((item, answer)) => (answer.choice == Some(0)).then_some(Ok(item)),
            Err(failed) => Some(Err(failed)),
        });
        verdicts.into_iter().flatten().collect()
    }
}

/// Every item back as failed with the same error, without a call.
pub(crate) fn refuse_all<T, O>(
    run: &Run,
    items: Vec<T>,
    error: crate::Error,
) -> Vec<Result<O, Failed<T>>> {
    let failed = items
        .into_iter()
        .map(|item| Err(run.refuse(item, error.clone())))
        .collect();
    run.finish();
    failed
}

impl<I: fmt::Debug, F> fmt::Debug for ClaudeFilter<I, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaudeFilter")
            .field("base", &self.base)
            .field("session", &self.session)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<I, F, P> ParallelIterator for ClaudeFilter<I, F>
where
    I: ParallelIterator,
    F: Fn(&I::Item) -> P + Sync + Send,
    P: AsRef<str>,
{
    type Item = Result<I::Item, Failed<I::Item>>;

    fn drive_unindexed<C>(self, consumer: C) -> C::Result
    where
        C: UnindexedConsumer<Self::Item>,
    {
        self.run().into_par_iter().drive_unindexed(consumer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_forms() {
        for yes in ["Yes.", "YES", " true", "True!", "**yes**"] {
            assert_eq!(interpret_verdict(yes), Some(0), "{yes:?}");
        }
        for no in ["NO", "no.", "False", " false\n"] {
            assert_eq!(interpret_verdict(no), Some(1), "{no:?}");
        }
        for bad in ["Yes and no", "yes, it is", "nope", "I can't tell", "", "Y"] {
            assert_eq!(interpret_verdict(bad), None, "{bad:?}");
        }
    }
}
