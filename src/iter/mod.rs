//! Parallel adaptors that send items through Claude, one file each.
//!
//! Use them through the extension traits in [`prelude`](crate::prelude).

pub(crate) mod dispatch;
mod failed;
mod filter;
mod group_by;
mod map;
pub(crate) mod strict;

pub use failed::{Failed, Outcome};
pub use filter::ClaudeFilter;
pub(crate) use group_by::group_by;
pub use group_by::Groups;
pub use map::{ClaudeMap, MapResult};
