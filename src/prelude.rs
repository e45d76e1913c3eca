//! The extension traits, and nothing else: `use claude_rayon::prelude::*;`.
//!
//! rayon's own prelude is not re-exported: users who iterate in parallel already import it,
//! and a second glob of the same names only makes imports ambiguous.

use rayon::iter::ParallelIterator;

use crate::iter::ClaudeMap;
pub use crate::stream::ClaudeIterator;
use crate::Session;

/// Claude adaptors on every [`ParallelIterator`].
pub trait ClaudeParallelIterator: ParallelIterator {
    /// Send each item's prompt through the session and yield the item with its answer, or the
    /// item back with its error. Runs on the session's own threads whatever thread drives it;
    /// in input order when collected from an indexed iterator.
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
}

impl<I: ParallelIterator> ClaudeParallelIterator for I {}
