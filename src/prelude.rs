//! The extension traits, and nothing else: `use claude_rayon::prelude::*;`.
//!
//! rayon's own prelude is not re-exported: users who iterate in parallel already import it,
//! and a second glob of the same names only makes imports ambiguous.

use rayon::iter::{IntoParallelIterator, ParallelIterator};

use crate::iter::{ClaudeFilter, ClaudeMap, Groups};
pub use crate::stream::ClaudeIterator;
use crate::Session;

/// Claude adaptors on every [`ParallelIterator`].
///
/// All of them run their Claude calls on the session's own threads, whatever thread drives
/// them, and hand every item back: nothing is silently dropped.
pub trait ClaudeParallelIterator: ParallelIterator {
    /// Send each item's prompt through the session and yield the item with its answer, or the
    /// item back with its error. In input order when collected from an indexed iterator.
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

    /// Sort every item into exactly one of `categories` (terminal: runs at once).
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
    /// );
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
    ) -> Groups<Self::Item>
    where
        F: Fn(&Self::Item) -> P + Sync + Send,
        P: AsRef<str>,
        S: Into<String>,
    {
        let categories = categories.into_iter().map(Into::into).collect();
        crate::iter::group_by(self, session, categories, prompt_fn, None)
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
    ) -> Groups<Self::Item>
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
