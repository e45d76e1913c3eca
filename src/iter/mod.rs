//! Parallel adaptors that send items through Claude, one file each.
//!
//! Use them through the extension traits in [`prelude`](crate::prelude).

mod dispatch;
mod filter;
mod group_by;
mod map;

pub use filter::ClaudeFilter;
pub use group_by::{ClaudeGroupBy, Groups};
pub use map::ClaudeMap;
