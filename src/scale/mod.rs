//! Scaling out (feature `redis`): one rate limit, one budget and one work queue for many
//! programs and machines, held in Redis.
//!
//! - [`Throttle::redis`](crate::Throttle::redis): the throttle's bucket in Redis, updated
//!   by an atomic Lua script on the server's clock, so every program on the name shares one
//!   requests/min and tokens/min limit.
//! - [`SharedBudget::redis`](crate::SharedBudget::redis): one spending cap for every program
//!   on the name.
//! - [`RedisStream`]: a pipeline source over a Redis Stream with a consumer group, and the
//!   acknowledgement that follows the sink.
//!
//! The guide is docs/scaling-out.md: what each costs, and what "exactly once" means here.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use parking_lot::Mutex;

use crate::Error;

mod budget;
mod stream;
mod throttle;

pub use stream::{Acker, RedisStream, StreamItem, StreamItems};

/// How long a connection attempt may take before the store counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one command may take (a blocked XREADGROUP is given its own allowance).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a program's grants and reservations count after it last said it is alive: a
/// program that died holding them gives them back after this.
pub(crate) const LEASE: Duration = Duration::from_secs(10);
/// How often leases are renewed and changes that could not be sent are sent again.
const TICK: Duration = Duration::from_secs(1);

/// Calls `tick` on `owner` every [`TICK`] on a thread of its own, until `owner` is dropped
/// or the returned sender is (keep it beside `owner`).
pub(crate) fn every_tick<T: Send + Sync + 'static>(owner: &Arc<T>, tick: fn(&T)) -> Sender<()> {
    let (stop, stopped) = bounded::<()>(0);
    let weak: Weak<T> = Arc::downgrade(owner);
    let spawned = std::thread::Builder::new()
        .name("claude-rayon-lease".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                match weak.upgrade() {
                    Some(owner) => tick(&owner),
                    None => break,
                }
            }
        });
    if let Err(e) = spawned {
        // Without it a long turn's lease may lapse: its share is then forgotten early, which
        // errs towards the API's own 429s or the cap's overshoot, not a stall.
        log::warn!("shared store: cannot start the lease thread ({e})");
    }
    stop
}

/// One Redis server, with one connection made on first use and made again after a failure.
pub(crate) struct Store {
    client: redis::Client,
    address: String,
    connection: Mutex<Option<redis::Connection>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens `url` (`redis://host:port/db`, a password allowed) and checks that it answers,
    /// so a wrong address fails at once rather than at the first item.
    pub(crate) fn open(url: &str) -> Result<Store, Error> {
        let address = without_credentials(url);
        let client = redis::Client::open(url).map_err(|e| {
            Error::InvalidConfig(format!(
                "not a Redis address: {address} ({})",
                without_credentials(&e.to_string())
            ))
        })?;
        let store = Store {
            client,
            address,
            connection: Mutex::new(None),
        };
        store
            .run(|c| redis::cmd("PING").query::<String>(c))
            .map_err(|message| store.error(message))?;
        Ok(store)
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    pub(crate) fn error(&self, message: String) -> Error {
        Error::SharedStore {
            address: self.address.clone(),
            message,
        }
    }

    /// A connection of its own (for a blocking read that must not hold up the others).
    pub(crate) fn connect(&self) -> Result<redis::Connection, String> {
        let connection = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(|e| reason(&e))?;
        connection
            .set_read_timeout(Some(COMMAND_TIMEOUT))
            .and_then(|()| connection.set_write_timeout(Some(COMMAND_TIMEOUT)))
            .map_err(|e| reason(&e))?;
        Ok(connection)
    }

    /// Runs `f` on the shared connection, connecting first if needed. A failure drops the
    /// connection, so the next call connects again (Redis may have restarted).
    pub(crate) fn run<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let mut slot = self.connection.lock();
        if slot.is_none() {
            *slot = Some(self.connect()?);
        }
        let connection = slot.as_mut().expect("connected just above");
        match f(connection) {
            Ok(value) => Ok(value),
            Err(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    *slot = None;
                }
                Err(reason(&e))
            }
        }
    }
}

/// What went wrong, in a line and without a password.
pub(crate) fn reason(error: &redis::RedisError) -> String {
    without_credentials(&error.to_string())
}

/// `redis://user:secret@host:6379/0` → `redis://host:6379/0`: addresses appear in logs and
/// errors, passwords never.
pub(crate) fn without_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == ')' || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        out.push_str(
            authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host),
        );
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// This program's name among the others on a shared store: host, pid and a start time, so a
/// restarted program on the same pid is another one.
pub(crate) fn program_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{host}-{}-{nanos:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_cut_from_addresses_and_messages() {
        assert_eq!(
            without_credentials("redis://user:s3cret@db.example:6379/0"),
            "redis://db.example:6379/0"
        );
        assert_eq!(
            without_credentials("failed (redis://:pw@h:1) and redis://h2:2"),
            "failed (redis://h:1) and redis://h2:2"
        );
        assert_eq!(without_credentials("no address"), "no address");
    }

    #[test]
    fn a_bad_address_is_a_configuration_error() {
        assert!(matches!(
            Store::open("http://nowhere"),
            Err(Error::InvalidConfig(_))
        ));
        // Nothing listens on port 1.
        match Store::open("redis://:pw@127.0.0.1:1/") {
            Err(Error::SharedStore { address, message }) => {
                assert_eq!(address, "redis://127.0.0.1:1/");
                assert!(!message.contains("pw"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
