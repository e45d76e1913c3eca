//! The Claude Code CLI backend: the process layer, which knows nothing above it.
//!
//! `locate` (finding the CLI), `protocol` (the stream-json lines), `process` (one persistent
//! CLI process), `pool` (up to `concurrency` of them), `conn` (a leased process as a
//! connection), `seal` (what seals a process), `secrets` (keeping keys out of errors and
//! logs), `spawner` (the one thread that starts processes, and the watchdog).

mod conn;
pub(crate) mod locate;
pub(crate) mod pool;
pub(crate) mod process;
pub(crate) mod protocol;
pub(crate) mod seal;
pub(crate) mod secrets;
pub(crate) mod spawner;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{Backend, BackendStats, Checkout, Conn};
use crate::Error;
use pool::Pool;
use seal::PrivateDir;

/// Request overhead on top of the prompt with the default flags (system prompt off, no
/// tools): about 1.2 KB, so roughly 300 tokens.
const REQUEST_OVERHEAD_TOKENS: u64 = 300;

/// A session's CLI processes, and the private folder they run in.
pub(crate) struct CliBackend {
    pool: Arc<Pool>,
    /// The processes' private working folder when no `cwd` was given; removed at release.
    private_dir: Mutex<Option<PrivateDir>>,
}

impl CliBackend {
    pub(crate) fn new(pool: Pool, private_dir: Option<PrivateDir>) -> CliBackend {
        CliBackend {
            pool: Arc::new(pool),
            private_dir: Mutex::new(private_dir),
        }
    }
}

impl Backend for CliBackend {
    fn checkout(&self, should_stop: &dyn Fn() -> bool) -> Result<Checkout, Error> {
        Ok(match self.pool.checkout(should_stop)? {
            Some(conn) => Checkout::Ready(Box::new(conn) as Box<dyn Conn>),
            None => Checkout::Stopped,
        })
    }

    fn wake(&self) {
        self.pool.wake();
    }

    fn request_overhead_tokens(&self) -> u64 {
        REQUEST_OVERHEAD_TOKENS
    }

    fn close(&self, settle: Duration) {
        self.pool.close(settle);
    }

    fn release(&self) {
        drop(self.private_dir.lock().take());
    }

    fn stats(&self) -> BackendStats {
        BackendStats {
            processes_started: self.pool.started(),
            processes_live: self.pool.live() as u64,
            processes_recycled: self.pool.recycled(),
        }
    }
}

impl fmt::Debug for CliBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CliBackend")
            .field("live_processes", &self.pool.live())
            .finish()
    }
}
