//! Claude adaptors on plain iterators (being written).

/// Claude adaptors on every `Iterator + Send` (being written).
pub trait ClaudeIterator: Iterator + Send + Sized {}

impl<I: Iterator + Send> ClaudeIterator for I {}
