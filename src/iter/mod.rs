//! Parallel adaptors that send items through Claude, one file each.
//!
//! Use them through the extension traits in [`prelude`](crate::prelude).

pub(crate) mod dispatch;
mod failed;
mod map;
pub(crate) mod strict;

pub use failed::{Failed, Outcome};
pub use map::{ClaudeMap, MapResult};
