//! Claude adaptors on plain iterators: sources that are not rayon iterators, such as stdin
//! lines, a log being read, or a database cursor.
//!
//! Use them through [`ClaudeIterator`](crate::prelude::ClaudeIterator), in the
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
