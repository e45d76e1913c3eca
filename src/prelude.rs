//! The extension traits, and nothing else: `use claude_rayon::prelude::*;`. Each is defined
//! beside its adaptors ([`iter`](crate::iter), [`stream`](crate::stream)), as rayon's are.
//!
//! rayon's own prelude is not re-exported: users who iterate in parallel already import it,
//! and a second glob of the same names only makes imports ambiguous.

pub use crate::iter::{ClaudeIntoParallelIterator, ClaudeParallelIterator};
pub use crate::stream::ClaudeIterator;
