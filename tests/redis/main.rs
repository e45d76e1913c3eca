//! Programs sharing one throttle, one budget and one stream through Redis (feature `redis`).
//! Each test starts its own `redis-server` (tests/support/redis.rs) and skips with a notice
//! when there is none, unless CLAUDE_RAYON_REQUIRE_REDIS=1 (CI). `REDIS_SERVER` names the
//! server to run; set, it is the only one looked for (a path that is not a file: none).
//! "Programs" are separate processes where the issue says so: the test runs a copy of this
//! binary in a child role.

#[path = "../support/mod.rs"]
mod support;

mod budget;
mod secrets;
mod skip;
mod stream;
mod throttle;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use claude_rayon::{Backend, Session, SessionBuilder};

/// A Messages API session on the mock at `api_url`.
fn builder(api_url: &str) -> SessionBuilder {
    Session::builder()
        .backend(Backend::MessagesApi)
        .api_key("sk-ant-test-key-that-must-not-leak")
        .base_url(api_url)
        .model("claude-haiku-4-5")
        .retry_policy(support::quick_retries(3))
        .timeout(Duration::from_secs(30))
}

/// An API whose answers wait until the test lets them go: the receiver hears of each request
/// as it arrives, the sender releases one answer per message.
fn gated(
    api: &support::mock_api::MockApi,
) -> (
    crossbeam_channel::Receiver<()>,
    crossbeam_channel::Sender<()>,
) {
    let (arrived, arrivals) = crossbeam_channel::unbounded::<()>();
    let (release, released) = crossbeam_channel::unbounded::<()>();
    api.set_reply(move |prompt| {
        arrived.send(()).unwrap();
        released.recv().unwrap();
        support::mock_api::Reply::text(format!("Summary: {}", &prompt[..80]))
    });
    (arrivals, release)
}

/// Asks one support ticket (`number`, of `length` characters) on a thread of its own, which
/// gives back the answer and the session (to drop when the test says).
fn ask_in_background(
    session: Session,
    number: usize,
    length: usize,
) -> std::thread::JoinHandle<(Result<claude_rayon::Response, claude_rayon::Error>, Session)> {
    std::thread::spawn(move || {
        let answer = session.query(format!(
            "Summarise this support ticket:\n{}",
            support::ticket(number, length)
        ));
        (answer, session)
    })
}

/// A copy of this binary running only `test` (its child role, chosen by `env`).
fn child(module: &str, test: &str, env: &[(&str, String)]) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            &support::this_test(module, test),
            "--nocapture",
            "--test-threads=1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

/// A child program that is killed (SIGKILL) and reaped when dropped, so a test that fails
/// before it kills the child leaves nothing running.
struct Program(Child);

impl Program {
    /// `kill -9`, and reaped.
    fn kill_9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child copy running `test` as the holding program (its role chosen by `holder_env`, given
/// the Redis address and an API that never answers), once it has `held` calls out: the
/// program, its pid, and a connection to Redis to look at what it holds.
fn holder_with_calls_out(
    module: &str,
    test: &str,
    holder_env: &str,
    redis: &support::redis::RedisServer,
    silent: &support::mock_api::MockApi,
    held: usize,
) -> (Program, u32, redis::Connection) {
    let holder = Program(child(
        module,
        test,
        &[(holder_env, format!("{} {}", redis.url(), silent.url()))],
    ));
    let pid = holder.0.id();
    support::wait_until(
        "the holding program has its calls out",
        Duration::from_secs(30),
        || silent.in_flight() == held,
    );
    let connection = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    (holder, pid, connection)
}

/// The program ids (host-pid-start) that a process with `pid` uses on a shared store.
fn is_program_of(program: &str, pid: u32) -> bool {
    program.contains(&format!("-{pid}-"))
}

/// Waits for a child and returns what it printed; fails the test if it failed.
fn finished(child: Child, what: &str) -> String {
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{what} failed: {stdout}");
    support::assert_ran_one_test(&stdout);
    stdout
}

/// Log lines at warning level and above, from every test in this process.
mod captured_log {
    use std::sync::{Mutex, OnceLock};

    static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

    struct Capture;

    impl log::Log for Capture {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::Level::Warn
        }
        fn log(&self, record: &log::Record) {
            if self.enabled(record.metadata()) {
                let line = record.args().to_string();
                eprintln!("log: {line}");
                LINES.lock().unwrap().push(line);
            }
        }
        fn flush(&self) {}
    }

    /// Starts capturing (once per process).
    pub fn install() {
        static ONCE: OnceLock<()> = OnceLock::new();
        ONCE.get_or_init(|| {
            log::set_boxed_logger(Box::new(Capture)).unwrap();
            log::set_max_level(log::LevelFilter::Warn);
        });
    }

    /// Whether a captured line contains `text`.
    pub fn contains(text: &str) -> bool {
        LINES.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// The captured lines containing `text`.
    pub fn lines_with(text: &str) -> Vec<String> {
        LINES
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .cloned()
            .collect()
    }
}
