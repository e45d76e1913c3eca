//! The extension traits, and nothing else: `use claude_rayon::prelude::*;`.
//!
//! rayon's own prelude is not re-exported: users who iterate in parallel already import it,
//! and a second glob of the same names only makes imports ambiguous.

use rayon::iter::{IntoParallelIterator, ParallelIterator};

use crate::iter::{ClaudeFilter, ClaudeGroupBy, ClaudeMap};
use crate::stream::{ClaudeStreamMap, ClaudeWindows};
use crate::Session;

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

/// Claude adaptors on every [`Iterator`] whose items can be sent to another thread.
///
/// The source itself need not be `Send`: it is only ever pulled on the thread that iterates
/// the adaptor, so `std::io::stdin().lines()` works. Items and prompt closures must be
/// `'static` because they run on the session's threads, which outlive any borrow.
pub trait ClaudeIterator: Iterator + Sized {
    /// Send each item's prompt through the session and yield the item with its answer, or
    /// the item back with its error, in source order, pulling the source lazily. See
    /// [`ClaudeStreamMap`] for how far ahead it pulls and what dropping it does.
    ///
    /// A panic in `prompt_fn` fails that item only, with
    /// [`Error::Panicked`](crate::Error::Panicked).
    ///
    /// # Examples
    ///
    /// On the built-in simulator, so it runs anywhere (a program that uses
    /// [`SessionBuilder::simulated`](crate::SessionBuilder::simulated) calls
    /// `serve_if_requested` first thing in `main`):
    ///
    /// ```
    /// claude_rayon::simulator::serve_if_requested();
    /// use claude_rayon::prelude::*;
    /// use claude_rayon::Session;
    ///
    /// let session = Session::builder().simulated()?.concurrency(2).build()?;
    /// let lines = ["disk 91% full", "login ok", "segfault in worker 3"];
    /// let answers = lines
    ///     .into_iter()
    ///     .claude_stream_map(&session, |line| format!("Is this alarming? {line}"));
    /// let mut seen = Vec::new();
    /// for result in answers {
    ///     let (line, response) = result?;
    ///     assert!(response.text.starts_with("[simulated]"));
    ///     seen.push(line);
    /// }
    /// assert_eq!(seen, lines); // in source order
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Lines of stdin, answered as they come:
    ///
    /// ```no_run
    /// use claude_rayon::prelude::*;
    /// use claude_rayon::Session;
    ///
    /// let session = Session::builder().model("haiku").concurrency(4).build()?;
    /// let lines = std::io::stdin().lines().map_while(Result::ok);
    /// for result in lines.claude_stream_map(&session, |l| format!("Translate to French: {l}")) {
    ///     match result {
    ///         Ok((_, answer)) => println!("{}", answer.text),
    ///         Err(failed) => eprintln!("{:?}: {}", failed.item, failed.error),
    ///     }
    /// }
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    fn claude_stream_map<F, P>(self, session: &Session, prompt_fn: F) -> ClaudeStreamMap<Self, F>
    where
        Self::Item: Send + 'static,
        F: Fn(&Self::Item) -> P + Send + Sync + 'static,
        P: AsRef<str>,
    {
        crate::stream::ClaudeStream::new(self, session, crate::stream::ItemPrompt(prompt_fn))
    }

    /// Analyse windows of `size` consecutive items, one every `step` items, each with one
    /// prompt built from the window's items; yield each [`Window`](crate::stream::Window) with its answer (or back
    /// with its error), in source order. Windows overlap when `step < size`, and the items
    /// between them are skipped when `step > size`. When the source ends inside a window,
    /// that shorter window is yielded unless all its items were in the previous window; no
    /// window is ever empty. See [`ClaudeWindows`].
    ///
    /// # Panics
    ///
    /// If `size` or `step` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// claude_rayon::simulator::serve_if_requested();
    /// use claude_rayon::prelude::*;
    /// use claude_rayon::Session;
    ///
    /// let session = Session::builder().simulated()?.concurrency(2).build()?;
    /// let log = (1..=7).map(|n| format!("line {n}"));
    /// let starts: Vec<(usize, usize)> = log
    ///     .claude_windows(&session, 4, 2, |lines| format!("Anything odd?\n{}", lines.join("\n")))
    ///     .map(|result| {
    ///         let (window, _answer) = result.unwrap();
    ///         (window.start, window.items.len())
    ///     })
    ///     .collect();
    /// // Lines 0-3, 2-5, then 4-6 (short: the log ends); a window of line 6 alone would
    /// // repeat the previous one, so there is none.
    /// assert_eq!(starts, [(0, 4), (2, 4), (4, 3)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn claude_windows<F, P>(
        self,
        session: &Session,
        size: usize,
        step: usize,
        prompt_fn: F,
    ) -> ClaudeWindows<Self, F>
    where
        Self::Item: Clone + Send + 'static,
        F: Fn(&[Self::Item]) -> P + Send + Sync + 'static,
        P: AsRef<str>,
    {
        crate::stream::claude_windows(self, session, size, step, prompt_fn)
    }
}

impl<I: Iterator> ClaudeIterator for I {}
