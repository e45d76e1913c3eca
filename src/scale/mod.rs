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

/// How long dropping a shared throttle or budget may wait to send what it could not send yet
/// (settles): dropped unsent, they would be forgotten and the cap or limit passed.
const FLUSH_ON_DROP: Duration = Duration::from_secs(5);

/// Calls `attempt` until it succeeds or `within` has passed (one last try at the end), asking
/// again with a growing backoff (at most every second); its last error if it never did.
pub(crate) fn again_within<T>(
    within: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = std::time::Instant::now() + within;
    let mut backoff = Duration::from_millis(50);
    loop {
        let error = match attempt() {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let now = std::time::Instant::now();
        if now >= deadline {
            return Err(error);
        }
        std::thread::sleep(backoff.min(deadline - now));
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Calls `flush` (true: nothing is left to send) until it succeeds or [`FLUSH_ON_DROP`] has
/// passed; whether it succeeded.
pub(crate) fn flush_before_drop(mut flush: impl FnMut() -> bool) -> bool {
    again_within(FLUSH_ON_DROP, || {
        flush().then_some(()).ok_or_else(String::new)
    })
    .is_ok()
}

/// Calls `tick` on `owner` every `period` on a thread of its own named `name`, until `owner`
/// is dropped or the returned sender is (keep it beside `owner`). `None` if the thread could
/// not start (said in the log).
pub(crate) fn every<T: Send + Sync + 'static>(
    owner: &Arc<T>,
    period: Duration,
    name: &str,
    tick: fn(&T),
) -> Option<Sender<()>> {
    let (stop, stopped) = bounded::<()>(0);
    let weak: Weak<T> = Arc::downgrade(owner);
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
                match weak.upgrade() {
                    Some(owner) => tick(&owner),
                    None => break,
                }
            }
        });
    match spawned {
        Ok(_) => Some(stop),
        Err(e) => {
            log::warn!("shared store: cannot start the thread {name} ({e})");
            None
        }
    }
}

/// [`every`] [`TICK`]: renews `owner`'s lease and sends what it could not send yet. Without
/// it a long turn's lease may lapse: its share is then forgotten early, which errs towards
/// the API's own 429s or the cap's overshoot, not a stall.
pub(crate) fn every_tick<T: Send + Sync + 'static>(
    owner: &Arc<T>,
    tick: fn(&T),
) -> Option<Sender<()>> {
    every(owner, TICK, "claude-rayon-lease", tick)
}

/// One Redis server, with one connection made on first use and made again after a failure.
pub(crate) struct Store {
    client: redis::Client,
    address: String,
    /// The password the address carries, cut from any message that might quote it.
    password: Option<String>,
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
    /// Opens `url` (`redis://host:port/db`, `rediss://…` or `redis+unix:///path?db=N`, a
    /// password allowed) and checks that it answers, so a wrong address fails at once rather
    /// than at the first item.
    pub(crate) fn open(url: &str) -> Result<Store, Error> {
        let client = redis::Client::open(url).map_err(|e| {
            // The text did not parse, so where its password is cannot be known: none of it
            // is shown but the scheme, and only redis's own fixed description of the fault.
            let description = e.to_string();
            let description = description
                .split_once(" - ")
                .map_or(e.category(), |(fixed, _)| fixed);
            Error::InvalidConfig(format!(
                "not a Redis address: {}://… ({description}); expected \
                 redis://[user[:password]@]host[:port][/db], rediss://… or \
                 redis+unix:///path/to/socket[?db=N]",
                scheme_of(url)
            ))
        })?;
        let info = client.get_connection_info();
        let address = shown_address(url, info);
        let password = info
            .redis_settings()
            .password()
            .filter(|p| !p.is_empty())
            .map(str::to_string);
        let store = Store {
            client,
            address,
            password,
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

    /// What went wrong, in a line and without the password.
    pub(crate) fn reason(&self, error: &redis::RedisError) -> String {
        let text = error.to_string();
        match &self.password {
            Some(password) => text.replace(password.as_str(), "***"),
            None => text,
        }
    }

    /// A connection of its own (for a blocking read that must not hold up the others).
    pub(crate) fn connect(&self) -> Result<redis::Connection, String> {
        let connection = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(|e| self.reason(&e))?;
        connection
            .set_read_timeout(Some(COMMAND_TIMEOUT))
            .and_then(|()| connection.set_write_timeout(Some(COMMAND_TIMEOUT)))
            .map_err(|e| self.reason(&e))?;
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
                Err(self.reason(&e))
            }
        }
    }
}

/// The address to show in logs, errors and Debug output, built from what the redis crate
/// parsed (host and port, or the socket's path, and the database), never by editing `url`:
/// a password can sit in the user part or in `?pass=`, and hold any character.
fn shown_address(url: &str, info: &redis::ConnectionInfo) -> String {
    let db = info.redis_settings().db();
    match info.addr() {
        redis::ConnectionAddr::Unix(path) => {
            let scheme = if url.starts_with("unix:") {
                "unix"
            } else {
                "redis+unix"
            };
            let db = if db == 0 {
                String::new()
            } else {
                format!("?db={db}")
            };
            format!("{scheme}://{}{db}", path.display())
        }
        redis::ConnectionAddr::TcpTls { host, port, .. } => {
            format!("rediss://{}/{}", host_port(host, *port), nonzero(db))
        }
        redis::ConnectionAddr::Tcp(host, port) => {
            format!("redis://{}/{}", host_port(host, *port), nonzero(db))
        }
        // A kind of address this crate does not know: where it is cannot be shown safely.
        _ => format!("{}://…", scheme_of(url)),
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The database in an address's path: nothing for the default, 0.
fn nonzero(db: i64) -> String {
    if db == 0 {
        String::new()
    } else {
        db.to_string()
    }
}

/// The scheme of `url` if it looks like one (letters, digits, `+`, `-`, `.`), else `?`.
fn scheme_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme.len() <= 16
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            scheme
        }
        _ => "?",
    }
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

/// A `redis-server` of a unit test's own, on a free loopback port, without persistence:
/// killed and reaped on drop. None (with a notice) when there is none, unless
/// CLAUDE_RAYON_REQUIRE_REDIS=1 (CI), as in tests/support/redis.rs.
#[cfg(test)]
pub(crate) struct TestServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

#[cfg(test)]
impl TestServer {
    pub(crate) fn start() -> Option<TestServer> {
        let binary = match std::env::var_os("REDIS_SERVER") {
            Some(named) => Some(std::path::PathBuf::from(named)),
            None => std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .chain(["/usr/bin".into(), "/usr/sbin".into()])
                .map(|d| d.join("redis-server"))
                .find(|p| p.is_file()),
        }
        .filter(|p| p.is_file());
        let Some(binary) = binary else {
            assert!(
                std::env::var("CLAUDE_RAYON_REQUIRE_REDIS").map_or(true, |v| v != "1"),
                "CLAUDE_RAYON_REQUIRE_REDIS=1 but no redis-server was found"
            );
            eprintln!("NOTICE: Redis unit test SKIPPED: no redis-server found");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = TestServer {
            child,
            port,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while Store::open(&server.url()).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server does not answer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub(crate) fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

#[cfg(test)]
impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `condition` holds, polling, or panics after `timeout` naming `what`.
#[cfg(test)]
pub(crate) fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The address shown for `url`, as [`Store::open`] builds it.
    fn shown(url: &str) -> String {
        let client = redis::Client::open(url).unwrap();
        shown_address(url, client.get_connection_info())
    }

    #[test]
    fn the_shown_address_is_built_from_the_parsed_one_without_credentials() {
        assert_eq!(
            shown("redis://user:s3cret@db.example:6379/2"),
            "redis://db.example:6379/2"
        );
        assert_eq!(shown("redis://:pw@h:1"), "redis://h:1/");
        assert_eq!(
            shown("redis+unix:///run/redis.sock?pass=hunter2&user=bob&db=3"),
            "redis+unix:///run/redis.sock?db=3"
        );
        assert_eq!(
            shown("unix:///run/redis.sock?pass=hunter2"),
            "unix:///run/redis.sock"
        );
        // Characters that ended the old cut early: `)`, `"`, whitespace, encoded or not.
        assert_eq!(shown("redis://u:a)b%22c%20d@h:7/"), "redis://h:7/");
        assert_eq!(shown("redis://u:a)b\"c d@h:7/"), "redis://h:7/");
    }

    #[test]
    fn an_address_that_does_not_parse_shows_only_its_scheme() {
        // rediss:// too: this crate is built without redis's TLS, so it does not parse.
        for url in [
            "rediss://u:hunter2@nowhere:6380/",
            "http://u:hunter2@nowhere",
            "redis://u:hunter2@h:notaport/",
            "redis://u:hunter2@h:1/notadb",
            "u:hunter2@h",
        ] {
            match Store::open(url) {
                Err(e @ Error::InvalidConfig(_)) => {
                    let shown = format!("{e} {e:?}");
                    assert!(!shown.contains("hunter2"), "{shown}");
                    assert!(
                        !shown.contains("nowhere") && !shown.contains("@h"),
                        "{shown}"
                    );
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_bad_address_is_a_configuration_error() {
        assert!(matches!(
            Store::open("http://nowhere"),
            Err(Error::InvalidConfig(_))
        ));
        // Nothing listens on port 1, nor at the socket's path.
        for (url, address) in [
            ("redis://:pw@127.0.0.1:1/", "redis://127.0.0.1:1/"),
            (
                "redis+unix:///nonexistent/redis.sock?pass=hunter2",
                "redis+unix:///nonexistent/redis.sock",
            ),
        ] {
            match Store::open(url) {
                Err(e @ Error::SharedStore { .. }) => {
                    let shown = format!("{e} {e:?}");
                    assert!(shown.contains(address), "{shown}");
                    assert!(
                        !shown.contains("pw@") && !shown.contains("hunter2"),
                        "{shown}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
