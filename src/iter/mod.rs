//! Parallel adaptors that send items through Claude, one file each.
//!
//! Use them through the extension traits in [`prelude`](crate::prelude).

/// The two setters every adaptor takes, over its `options: RunOptions` field.
macro_rules! run_options {
    () => {
        /// Stop starting new items once `cancel` is set; the rest come back as failed with
        /// [`Error::Cancelled`](crate::Error::Cancelled).
        pub fn with_cancel(mut self, cancel: &crate::Cancel) -> Self {
            self.options.cancel = Some(cancel.clone());
            self
        }

        /// Keep this run's answers in `journal` (instead of the session's, if it has one): a
        /// rerun takes every answer already there without a call. See
        /// [`Journal`](crate::Journal).
        pub fn with_journal(mut self, journal: &crate::Journal) -> Self {
            self.options.journal = Some(journal.clone());
            self
        }
    };
}

mod dispatch;
mod filter;
mod group_by;
mod map;

pub use filter::ClaudeFilter;
pub use group_by::{ClaudeGroupBy, Groups};
pub use map::ClaudeMap;

use crate::engine::Run;
use crate::{Cancel, Journal, Session};

/// What an adaptor's run is made with beside its session, set by `with_cancel` and
/// `with_journal`.
#[derive(Debug, Default)]
pub(crate) struct RunOptions {
    cancel: Option<Cancel>,
    journal: Option<Journal>,
}

impl RunOptions {
    /// The run of `total` items named `name`.
    fn start(&self, session: &Session, name: &'static str, total: usize) -> Run {
        Run::new(session, name, Some(total as u64), self.cancel.as_ref())
            .with_journal(self.journal.as_ref())
    }
}
