//! Parallel adaptors that send items through Claude, one file each.
//!
//! Use them through the extension traits defined here, [`ClaudeParallelIterator`] and
//! [`ClaudeIntoParallelIterator`], which [`prelude`](crate::prelude) re-exports.

/// The two setters every adaptor takes, over its `options: RunOptions` field.
macro_rules! run_options {
    () => {
        /// Stop starting new items once `cancel` is set; the rest come back as failed with
        /// [`Error::Cancelled`](crate::Error::Cancelled).
        pub fn with_cancel(mut self, cancel: &crate::Cancel) -> Self {
            self.options.cancel = Some(cancel.clone());
            self
        }

        /// Keep this run's answers in `journal` (instead of the session's, if it has one): a
        /// rerun takes every answer already there without a call. See
        /// [`Journal`](crate::Journal).
        pub fn with_journal(mut self, journal: &crate::Journal) -> Self {
            self.options.journal = Some(journal.clone());
            self
        }
    };
}

mod filter;
mod group_by;
mod map;
#[cfg(feature = "schema")]
mod typed;

pub use filter::ClaudeFilter;
pub use group_by::{ClaudeGroupBy, Groups};
pub use map::ClaudeMap;
#[cfg(feature = "schema")]
pub use typed::ClaudeMapTyped;

use rayon::iter::{IntoParallelIterator, ParallelIterator};

use crate::engine::Run;
use crate::{Cancel, Journal, Session};

/// What an adaptor's run is made with beside its session, set by `with_cancel` and
/// `with_journal`.
#[derive(Debug, Default)]
pub(crate) struct RunOptions {
    cancel: Option<Cancel>,
    journal: Option<Journal>,
}

impl RunOptions {
    /// The run of `total` items named `name`.
    fn start(&self, session: &Session, name: &'static str, total: usize) -> Run {
        Run::new(session, name, Some(total as u64), self.cancel.as_ref())
            .with_journal(self.journal.as_ref())
    }
}

/// Claude adaptors on every [`ParallelIterator`].
///
/// All of them run their Claude calls on the session's own threads, whatever thread drives
/// them, and hand every item back: nothing is silently dropped.
pub trait ClaudeParallelIterator: ParallelIterator {
    /// Send each item's prompt through the session and yield the item with its answer, or the
    /// item back with its error. In input order when collected from an indexed iterator.
    ///
    /// Put what every item shares (a rubric, definitions, the output format) in the session's
    /// [`append_system_prompt`](crate::SessionBuilder::append_system_prompt), not in each
    /// prompt: the API then reads it from its prompt cache at a tenth of the price.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use claude_rayon::prelude::*;
    /// use claude_rayon::{Outcome, Session};
    /// use rayon::prelude::*;
    ///
    /// let session = Session::builder().concurrency(4).build()?;
    /// let words = vec!["apple", "granite", "tulip"];
    /// let outcome: Outcome<_, _> = words
    ///     .par_iter()
    ///     .claude_map(&session, |w| format!("Is {w} a plant? Answer yes or no."))
    ///     .collect();
    /// for (word, answer) in outcome.ok {
    ///     println!("{word}: {}", answer.text);
    /// }
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    fn claude_map<F, P>(self, session: &Session, prompt_fn: F) -> ClaudeMap<Self, F>
    where
        F: Fn(&Self::Item) -> P + Sync + Send,
        P: AsRef<str>,
    {
        ClaudeMap::new(self, session, prompt_fn)
    }

    /// Keep the items for which Claude answers the question with yes; yield `Ok(item)` for
    /// those, nothing for a no, and `Err(Failed)` for an item that could not be judged.
    ///
    /// The verdict must be exactly `yes` or `no` (`true` and `false` count too; case,
    /// quotes and punctuation aside): "Yes." and " NO" are verdicts, "Yes and no" or an
    /// explanation is not. An answer outside the set gets one fresh re-prompt that quotes it;
    /// a second one fails the item with [`Error::InvalidAnswer`](crate::Error::InvalidAnswer).
    /// A session built with a `json_schema` is refused: every item comes back failed with
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use claude_rayon::prelude::*;
    /// use claude_rayon::Session;
    /// use rayon::prelude::*;
    ///
    /// let session = Session::builder().build()?;
    /// let lines = vec!["ERROR disk full", "INFO started", "WARN slow reply"];
    /// let alarming: Vec<_> = lines
    ///     .par_iter()
    ///     .claude_filter(&session, |l| format!("Does this log line need a human's attention?\n{l}"))
    ///     .filter_map(Result::ok)
    ///     .collect();
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    fn claude_filter<F, P>(self, session: &Session, question_fn: F) -> ClaudeFilter<Self, F>
    where
        F: Fn(&Self::Item) -> P + Sync + Send,
        P: AsRef<str>,
    {
        ClaudeFilter::new(self, session, question_fn)
    }

    /// Sort every item into exactly one of `categories`. Lazy: [`groups`](ClaudeGroupBy::groups)
    /// runs it, and [`with_cancel`](ClaudeGroupBy::with_cancel) stops it early.
    ///
    /// The answer must be one of the category names (case, quotes and punctuation aside);
    /// an answer outside the list gets one re-prompt, then the item fails with
    /// [`Error::InvalidAnswer`](crate::Error::InvalidAnswer). A category outside the list is
    /// never created. Invalid categories (none, duplicates, names with `|` or line breaks)
    /// or a session built with a `json_schema` fail every item with
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use claude_rayon::prelude::*;
    /// use claude_rayon::Session;
    /// use rayon::prelude::*;
    ///
    /// let session = Session::builder().build()?;
    /// let tickets = vec!["App crashes on start", "Please add dark mode", "How do I export?"];
    /// let groups = tickets.par_iter().claude_group_by(
    ///     &session,
    ///     ["bug", "feature", "question"],
    ///     |t| format!("Which kind of ticket is this?\n{t}"),
    /// ).groups();
    /// for (category, items) in groups.iter() {
    ///     println!("{category}: {}", items.len());
    /// }
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    fn claude_group_by<F, P, S>(
        self,
        session: &Session,
        categories: impl IntoIterator<Item = S>,
        prompt_fn: F,
    ) -> ClaudeGroupBy<Self, F>
    where
        F: Fn(&Self::Item) -> P + Sync + Send,
        P: AsRef<str>,
        S: Into<String>,
    {
        let categories = categories.into_iter().map(Into::into).collect();
        ClaudeGroupBy::new(self, session, categories, prompt_fn)
    }
}

impl<I: ParallelIterator> ClaudeParallelIterator for I {}

/// The same adaptors on everything that turns into a parallel iterator: each is exactly
/// `into_par_iter()` followed by the adaptor. `docs.par_claude_map(&s, f)` consumes `docs`;
/// `(&docs).par_claude_map(&s, f)` borrows it.
pub trait ClaudeIntoParallelIterator: IntoParallelIterator + Sized {
    /// `self.into_par_iter().claude_map(session, prompt_fn)`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use claude_rayon::prelude::*;
    /// use claude_rayon::Session;
    /// use rayon::prelude::*;
    ///
    /// let session = Session::builder().build()?;
    /// let docs = vec!["first".to_string(), "second".to_string()];
    /// let borrowed: Vec<_> = (&docs).par_claude_map(&session, |d| format!("Summarise: {d}")).collect();
    /// let consumed: Vec<_> = docs.par_claude_map(&session, |d| format!("Summarise: {d}")).collect();
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    fn par_claude_map<F, P>(self, session: &Session, prompt_fn: F) -> ClaudeMap<Self::Iter, F>
    where
        F: Fn(&Self::Item) -> P + Sync + Send,
        P: AsRef<str>,
    {
        self.into_par_iter().claude_map(session, prompt_fn)
    }

    /// `self.into_par_iter().claude_filter(session, question_fn)`.
    fn par_claude_filter<F, P>(
        self,
        session: &Session,
        question_fn: F,
    ) -> ClaudeFilter<Self::Iter, F>
    where
        F: Fn(&Self::Item) -> P + Sync + Send,
        P: AsRef<str>,
    {
        self.into_par_iter().claude_filter(session, question_fn)
    }

    /// `self.into_par_iter().claude_group_by(session, categories, prompt_fn)`.
    fn par_claude_group_by<F, P, S>(
        self,
        session: &Session,
        categories: impl IntoIterator<Item = S>,
        prompt_fn: F,
    ) -> ClaudeGroupBy<Self::Iter, F>
    where
        F: Fn(&Self::Item) -> P + Sync + Send,
        P: AsRef<str>,
        S: Into<String>,
    {
        self.into_par_iter()
            .claude_group_by(session, categories, prompt_fn)
    }
}

impl<I: IntoParallelIterator> ClaudeIntoParallelIterator for I {}
