//! A process leased from the pool, as the engine sees a connection: the CLI half of a turn.

use std::fmt;
use std::sync::Arc;

use super::pool::Pool;
use super::process::CliProcess;
use crate::backend::{Abort, Billed, Conn, TurnEvent, TurnFailure, TurnRequest};
use crate::{Error, Response};

/// A process checked out of the pool. It goes back when dropped, unless it is broken.
pub(crate) struct PooledConn {
    pool: Arc<Pool>,
    process: Option<CliProcess>,
    /// Kept by a conversation: whoever uses the process next must not see its context.
    held: bool,
}

impl PooledConn {
    pub(super) fn new(pool: Arc<Pool>, process: CliProcess) -> PooledConn {
        PooledConn {
            pool,
            process: Some(process),
            held: false,
        }
    }

    fn process(&mut self) -> &mut CliProcess {
        self.process.as_mut().expect("held until dropped")
    }
}

impl Conn for PooledConn {
    fn turn(
        &mut self,
        request: &TurnRequest<'_>,
        events: &mut dyn FnMut(TurnEvent),
    ) -> Result<Response, TurnFailure> {
        let process = self.process();
        let outcome = process.run_turn(request.prompt, request.timeout, request.structured, events);
        outcome.map_err(|error| {
            // An error result is billed as the CLI reports it (max turns, a missing
            // structured answer); a crash or timeout reports nothing, so it costs 0 here.
            let billed = process
                .take_failed_turn_cost()
                .map(|(cost_usd, usage)| Billed { cost_usd, usage })
                .unwrap_or_default();
            TurnFailure {
                unreachable: is_connection_failure(&error),
                // A process that wrote nothing never started (the CLI writes nothing
                // before it has read a prompt), so it sent nothing.
                sent: !process.said_nothing(),
                error,
                billed,
            }
        })
    }

    fn abort_handle(&self) -> Abort {
        let kill_switch = self
            .process
            .as_ref()
            .expect("held until dropped")
            .kill_switch();
        Arc::new(move || kill_switch.kill())
    }

    fn hold(&mut self) {
        self.held = true;
        let pid = self.process().pid();
        self.pool.hold(pid);
    }

    fn keep_context(&mut self) {
        self.process().keep_context();
    }

    fn is_reusable(&mut self) -> bool {
        self.process().is_reusable()
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            if self.held {
                process.mark_dirty();
            }
            self.pool.checkin(process);
        }
    }
}

impl fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConn")
            .field("pid", &self.process.as_ref().map(CliProcess::pid))
            .finish()
    }
}

/// Whether the CLI says a call could not connect at all (not a stream cut midway).
fn is_connection_failure(error: &Error) -> bool {
    let Error::Api {
        status: None,
        message,
    } = error
    else {
        return false;
    };
    let m = message.to_ascii_lowercase();
    if m.contains("was lost") || m.contains("econnreset") {
        return false;
    }
    [
        "unable to connect",
        "connection error",
        "connectionrefused",
        "econnrefused",
        "enotfound",
        "eai_again",
        "etimedout",
        "ehostunreach",
        "enetunreach",
        "failed to fetch",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}
