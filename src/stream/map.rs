//! `claude_stream_map`: one prompt per item of a plain iterator, in source order.

use super::engine::Prompter;
use super::shell::ClaudeStream;

/// The adaptor behind
/// [`claude_stream_map`](crate::prelude::ClaudeIterator::claude_stream_map): one prompt per
/// item, each item yielded with its answer. See [`ClaudeStream`] for how far it pulls the
/// source, and what a drop, a cancel or a fatal error do.
pub type ClaudeStreamMap<I, F> = ClaudeStream<I, ItemPrompt<F>>;

/// The user's prompt closure, applied to an item.
pub struct ItemPrompt<F>(pub(crate) F);

impl<F> std::fmt::Debug for ItemPrompt<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ItemPrompt")
    }
}

impl<T, F, P> Prompter<T> for ItemPrompt<F>
where
    F: Fn(&T) -> P + Send + Sync + 'static,
    P: AsRef<str>,
{
    type Prompt = P;

    fn prompt(&self, item: &T) -> P {
        (self.0)(item)
    }
}
