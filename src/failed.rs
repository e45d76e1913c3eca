//! `Failed<T>` hands a failed item back with its error; `Outcome` sorts a run's results.

use std::fmt;

use rayon::iter::{FromParallelIterator, IntoParallelIterator, ParallelIterator};

use crate::{Error, Response};

/// One item's result from [`claude_map`](crate::prelude::ClaudeParallelIterator::claude_map)
/// and [`claude_stream_map`](crate::prelude::ClaudeIterator::claude_stream_map): the item
/// with its answer, or the item back with its error.
pub type MapResult<T> = Result<(T, Response), Failed<T>>;

/// An item that could not be processed, handed back with why and after how many attempts,
/// the way crossbeam's `SendError<T>` hands back the message. Nothing is silently dropped.
///
/// # Examples
///
/// ```
/// use claude_rayon::{Error, Failed};
///
/// let failed = Failed { item: "report.txt", error: Error::Cancelled, attempts: 0 };
/// assert_eq!(failed.into_item(), "report.txt");
/// ```
#[derive(Clone)]
pub struct Failed<T> {
    /// The item, as it was given.
    pub item: T,
    /// The last error it met.
    pub error: Error,
    /// Calls made for it (0 when it never started: cancelled, stopped, over budget, or a
    /// panic in the prompt closure).
    pub attempts: u32,
}

impl<T> Failed<T> {
    /// Take the item back.
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::{Error, Failed};
    ///
    /// let failed = Failed { item: 7, error: Error::Cancelled, attempts: 0 };
    /// assert_eq!(failed.into_item(), 7);
    /// ```
    pub fn into_item(self) -> T {
        self.item
    }

    /// Apply `f` to the item, keeping the error and attempts: for example to hand back only
    /// an id instead of a whole document.
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::{Error, Failed};
    ///
    /// let failed = Failed { item: ("doc-7", "a long text"), error: Error::Cancelled, attempts: 1 };
    /// let by_id = failed.map_item(|(id, _text)| id);
    /// assert_eq!((by_id.item, by_id.attempts), ("doc-7", 1));
    /// ```
    pub fn map_item<U>(self, f: impl FnOnce(T) -> U) -> Failed<U> {
        Failed {
            item: f(self.item),
            error: self.error,
            attempts: self.attempts,
        }
    }
}

impl<T> fmt::Debug for Failed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The item may be large or not Debug; the error and attempts say what happened.
        f.debug_struct("Failed")
            .field("item", &format_args!("{}", std::any::type_name::<T>()))
            .field("error", &self.error)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl<T> fmt::Display for Failed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "item failed after {} attempt(s): {}",
            self.attempts, self.error
        )
    }
}

impl<T> std::error::Error for Failed<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// A run's results sorted into what succeeded and what failed (the dead letter), each in
/// input order. Collect any iterator of `Result<O, Failed<T>>` into it.
///
/// # Examples
///
/// ```
/// use claude_rayon::{Error, Failed, Outcome};
/// use rayon::prelude::*;
///
/// let results: Vec<Result<u32, Failed<&str>>> = vec![
///     Ok(1),
///     Err(Failed { item: "b", error: Error::Cancelled, attempts: 0 }),
///     Ok(3),
/// ];
/// let outcome: Outcome<u32, &str> = results.into_par_iter().collect();
/// assert_eq!(outcome.ok, vec![1, 3]);
/// assert_eq!(outcome.dead_letter[0].item, "b");
/// ```
#[derive(Debug)]
pub struct Outcome<O, T> {
    /// The successes, in input order.
    pub ok: Vec<O>,
    /// The failures, in input order, each with its item.
    pub dead_letter: Vec<Failed<T>>,
}

impl<O, T> Default for Outcome<O, T> {
    fn default() -> Self {
        Outcome {
            ok: Vec::new(),
            dead_letter: Vec::new(),
        }
    }
}

impl<O, T> Outcome<O, T> {
    /// Whether every item succeeded.
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::{Error, Failed, Outcome};
    ///
    /// let results: Vec<Result<u32, Failed<&str>>> =
    ///     vec![Ok(1), Err(Failed { item: "b", error: Error::Cancelled, attempts: 0 })];
    /// let outcome: Outcome<u32, &str> = results.into_iter().collect();
    /// assert!(!outcome.is_complete());
    /// assert_eq!((outcome.len(), outcome.is_empty()), (2, false));
    /// ```
    pub fn is_complete(&self) -> bool {
        self.dead_letter.is_empty()
    }

    /// Successes plus failures.
    pub fn len(&self) -> usize {
        self.ok.len() + self.dead_letter.len()
    }

    /// Whether there were no items at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<O, T> FromIterator<Result<O, Failed<T>>> for Outcome<O, T> {
    fn from_iter<I: IntoIterator<Item = Result<O, Failed<T>>>>(iter: I) -> Self {
        let mut outcome = Outcome::default();
        for result in iter {
            match result {
                Ok(value) => outcome.ok.push(value),
                Err(failed) => outcome.dead_letter.push(failed),
            }
        }
        outcome
    }
}

impl<O: Send, T: Send> FromParallelIterator<Result<O, Failed<T>>> for Outcome<O, T> {
    fn from_par_iter<I>(par_iter: I) -> Self
    where
        I: IntoParallelIterator<Item = Result<O, Failed<T>>>,
    {
        // Collecting into a Vec keeps input order; sorting it out afterwards is cheap.
        let all: Vec<Result<O, Failed<T>>> = par_iter.into_par_iter().collect();
        all.into_iter().collect()
    }
}
