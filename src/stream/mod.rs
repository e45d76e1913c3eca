//! Claude adaptors on plain iterators: sources that are not rayon iterators, such as stdin
//! lines, a log being read, or a database cursor.
//!
//! Use them through [`ClaudeIterator`], defined here and re-exported by the
//! [`prelude`](crate::prelude). Results come back
//! in source order; the source is pulled lazily, on the thread that iterates, and never more
//! than a bounded number of items ahead of what has been yielded (see [`ClaudeStreamMap`]).
//! The calls run on the session's own threads, throttled and retried like every other item.

mod engine;
mod map;
mod shell;
mod windows;

pub use map::ClaudeStreamMap;
pub(crate) use map::ItemPrompt;
pub use shell::ClaudeStream;
pub(crate) use windows::claude_windows;
pub use windows::{ClaudeWindows, Window, WindowResult};

use crate::Session;

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
    /// prompt built from the window's items; yield each [`Window`] with its answer (or back
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
