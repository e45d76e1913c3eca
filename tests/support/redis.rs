//! A `redis-server` of a test's own, on a free loopback port, without persistence, in a
//! temporary folder: killed and reaped on drop. Missing binary: a printed notice and the test
//! skips, unless CLAUDE_RAYON_REQUIRE_REDIS=1 (CI) makes it a failure, like the real-CLI tier.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Name of the variable that turns a skipped Redis test into a failure.
pub const REQUIRE_REDIS: &str = "CLAUDE_RAYON_REQUIRE_REDIS";

/// Names the `redis-server` to run. When set, it is the only one looked for: a path that
/// is not a file means none (`REDIS_SERVER=/nonexistent` takes the skip path on a machine
/// that has one, which is how tests/redis/skip.rs checks it).
pub const REDIS_SERVER: &str = "REDIS_SERVER";

/// `REDIS_SERVER` if set, else `redis-server` on PATH (or in /usr/sbin, /usr/bin).
fn binary() -> Option<PathBuf> {
    if let Some(named) = std::env::var_os(REDIS_SERVER) {
        return Some(PathBuf::from(named)).filter(|p| p.is_file());
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin".into(), "/usr/sbin".into()]);
    dirs.into_iter()
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

/// A running `redis-server` of this test's own.
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one, or `None` (with the notice) when there is no `redis-server`.
    pub fn start(test: &str) -> Option<RedisServer> {
        let Some(binary) = binary() else {
            if std::env::var(REQUIRE_REDIS).is_ok_and(|v| v == "1") {
                panic!("{REQUIRE_REDIS}=1 but no redis-server was found (set {REDIS_SERVER} to one, or put it on PATH)");
            }
            // Written to the stderr handle itself: the test harness captures print macros only.
            let _ = writeln!(
                std::io::stderr(),
                "\nNOTICE: Redis test `{test}` SKIPPED: no redis-server found. Install it with \
                 `apt-get install redis-server` or set {REDIS_SERVER} to one \
                 (CI sets {REQUIRE_REDIS}=1 to make this a failure).\n"
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            binary,
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.restart();
        Some(server)
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Whether it answers PING.
    pub fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Kills it (SIGKILL) and reaps it: its data is gone (no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        super::wait_until("redis-server answers", Duration::from_secs(20), || {
            self.answers()
        });
    }
}

/// While a [`RedisServer`] is stopped: a listener on its port that takes each connection and
/// closes it unanswered, counting them, so a test can wait until a client has tried again
/// several times. Dropped (it borrows the server) before the server starts again.
pub struct StandIn<'a> {
    _server: &'a RedisServer,
    port: u16,
    tries: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RedisServer {
    /// A [`StandIn`] on this (stopped) server's port.
    pub fn stand_in(&self) -> StandIn<'_> {
        assert!(self.child.is_none(), "the server is running");
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        let tries = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (tries, done) = (Arc::clone(&tries), Arc::clone(&done));
            std::thread::spawn(move || {
                for connection in listener.incoming() {
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                    drop(connection);
                    tries.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        StandIn {
            _server: self,
            port: self.port,
            tries,
            done,
            thread: Some(thread),
        }
    }
}

impl StandIn<'_> {
    /// How many connections it has taken (and closed).
    pub fn tries(&self) -> usize {
        self.tries.load(Ordering::SeqCst)
    }
}

impl Drop for StandIn<'_> {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `done` and closes the port.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
