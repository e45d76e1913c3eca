//! `claude_windows`: one prompt per window of consecutive items, in source order.

use std::collections::VecDeque;
use std::ops::Range;

use super::engine::Prompter;
use super::shell::ClaudeStream;
use crate::{MapResult, Session};

/// One window's result from [`ClaudeWindows`]: the window with its answer, or the window back
/// with its error.
pub type WindowResult<T> = MapResult<Window<T>>;

/// Consecutive items of a source, analysed together by one prompt.
///
/// # Examples
///
/// ```
/// use claude_rayon::stream::Window;
///
/// let window = Window { items: vec!["c", "d", "e"], start: 2 };
/// assert_eq!(window.range(), 2..5);
/// assert_eq!(window.end(), 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Window<T> {
    /// The items, in source order: `size` of them, fewer only in the last window.
    pub items: Vec<T>,
    /// The 0-based position in the source of the first item.
    pub start: usize,
}

impl<T> Window<T> {
    /// The position just past the last item (exclusive).
    pub fn end(&self) -> usize {
        self.start + self.items.len()
    }

    /// The positions the window covers, `start..end`.
    pub fn range(&self) -> Range<usize> {
        self.start..self.end()
    }
}

/// The adaptor behind [`claude_windows`](crate::prelude::ClaudeIterator::claude_windows).
/// Lazy: nothing is pulled from the source and nothing runs until
/// [`next`](Iterator::next) is called.
///
/// Yields a [`WindowResult`] per window, in source order: `Ok((window, response))` or
/// `Err(Failed { item: window, .. })`. Windows start every `step` items and hold `size`
/// items (overlapping when `step < size`, with the items between them skipped when
/// `step > size`). When the source ends inside a window, that shorter window is yielded,
/// unless every item in it was already in the previous window; nothing after it is.
///
/// It is a [`ClaudeStream`] over the windows, with the same guarantees: at most
/// [`max_outstanding`](ClaudeStream::max_outstanding) windows (default 2 × concurrency) are out
/// and not yet yielded, so at most `size` items waiting to complete a window plus
/// `max_outstanding` windows are held at once. Drop, cancel and fatal errors work as there.
pub type ClaudeWindows<I, F> = ClaudeStream<Windowed<I>, WindowPrompt<F>>;

/// The user's prompt closure, applied to a window's items.
pub struct WindowPrompt<F>(F);

impl<F> std::fmt::Debug for WindowPrompt<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WindowPrompt")
    }
}

impl<T, F, P> Prompter<Window<T>> for WindowPrompt<F>
where
    F: Fn(&[T]) -> P + Send + Sync + 'static,
    P: AsRef<str>,
{
    type Prompt = P;

    fn prompt(&self, window: &Window<T>) -> P {
        (self.0)(&window.items)
    }
}

/// The windows of `source` as a stream adaptor.
pub(crate) fn claude_windows<I, F>(
    source: I,
    session: &Session,
    size: usize,
    step: usize,
    prompt_fn: F,
) -> ClaudeWindows<I, F>
where
    I: Iterator,
    I::Item: Clone,
{
    assert!(size > 0, "claude_windows: size must be at least 1");
    assert!(step > 0, "claude_windows: step must be at least 1");
    let windows = Windowed {
        source: Some(source),
        buffer: VecDeque::new(),
        buffer_start: 0,
        next_start: 0,
        last_end: 0,
        size,
        step,
        done: false,
        clone: I::Item::clone,
    };
    ClaudeStream::new(windows, session, WindowPrompt(prompt_fn))
}

/// Cuts a source into windows, pulling it only as far as the next window needs.
pub struct Windowed<I: Iterator> {
    /// `None` once the source has ended.
    source: Option<I>,
    /// Items read and still needed, the first at position `buffer_start`.
    buffer: VecDeque<I::Item>,
    /// The position of `buffer[0]`, or of the next item to read when the buffer is empty.
    buffer_start: usize,
    next_start: usize,
    /// Where the last window yielded ended (exclusive).
    last_end: usize,
    size: usize,
    step: usize,
    done: bool,
    /// Taken where `Clone` is known, so that no type naming a window iterator needs the bound.
    clone: fn(&I::Item) -> I::Item,
}

impl<I: Iterator> std::fmt::Debug for Windowed<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Windowed")
            .field("size", &self.size)
            .field("step", &self.step)
            .field("next_start", &self.next_start)
            .finish_non_exhaustive()
    }
}

impl<I: Iterator> Windowed<I> {
    fn read(&mut self) -> Option<I::Item> {
        let item = self.source.as_mut()?.next();
        if item.is_none() {
            self.source = None;
        }
        item
    }

    fn finish(&mut self) -> Option<Window<I::Item>> {
        self.done = true;
        self.buffer.clear();
        None
    }
}

impl<I: Iterator> Iterator for Windowed<I> {
    type Item = Window<I::Item>;

    fn next(&mut self) -> Option<Window<I::Item>> {
        if self.done {
            return None;
        }
        let start = self.next_start;
        // Drop what the previous window needed and this one does not; past a gap
        // (step > size), read and drop the items no window covers.
        while self.buffer_start < start {
            if self.buffer.pop_front().is_none() && self.read().is_none() {
                return self.finish();
            }
            self.buffer_start += 1;
        }
        while self.buffer.len() < self.size {
            match self.read() {
                Some(item) => self.buffer.push_back(item),
                None => break,
            }
        }
        let end = start + self.buffer.len();
        // A short window whose items were all in the previous one would say nothing new.
        if self.buffer.is_empty() || (self.buffer.len() < self.size && end <= self.last_end) {
            return self.finish();
        }
        let items: Vec<I::Item> = if self.step >= self.size {
            // No later window shares these items: move them rather than clone.
            self.buffer_start = end;
            self.buffer.drain(..).collect()
        } else {
            self.buffer.iter().map(self.clone).collect()
        };
        let short = items.len() < self.size;
        self.last_end = end;
        self.next_start = start + self.step;
        if short {
            // The source has ended: any later window would be part of this one.
            self.finish();
        }
        Some(Window { items, start })
    }
}
