//! Shared test support: the fake CLI, a recorder of what it saw, one test on both backends
//! (`backends`), waiting on conditions, and finding the real CLI.
#![allow(dead_code)]

pub mod backends;
pub mod hostile;
pub mod redis;
/// The mock Messages API, compiled once as its own crate (crates/mock-api).
pub use claude_rayon_mock_api as mock_api;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use claude_rayon::{RetryPolicy, Session, SessionBuilder};
use serde_json::Value;

/// The fake `claude` built from this crate (src/bin/claude-rayon-sim.rs).
pub fn fake_cli() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_claude-rayon-sim"))
}

/// A test's fake-CLI setup: a temp folder for the record and the fail-times state.
pub struct Fake {
    pub dir: tempfile::TempDir,
}

impl Fake {
    pub fn new() -> Fake {
        Fake {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn record_path(&self) -> PathBuf {
        self.dir.path().join("record.jsonl")
    }

    /// A builder pointed at the fake CLI, recording into this folder, with tiny backoffs.
    pub fn builder(&self) -> SessionBuilder {
        let state = self.dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        Session::builder()
            .cli(|c| {
                c.cli_path(fake_cli())
                    .env(
                        "CLAUDE_RAYON_SIM_RECORD",
                        self.record_path().to_str().unwrap(),
                    )
                    .env("CLAUDE_RAYON_SIM_STATE", state.to_str().unwrap())
            })
            .retry_policy(quick_retries(3))
            .timeout(Duration::from_secs(30))
    }

    /// Every event the fake processes recorded, in order.
    pub fn events(&self) -> Vec<Value> {
        read_events(&self.record_path())
    }

    /// The argument lists of every process start.
    pub fn starts(&self) -> Vec<Vec<String>> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "start")
            .map(|e| {
                e["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect()
            })
            .collect()
    }

    /// The process ids of every fake CLI started with this setup, in start order.
    pub fn pids(&self) -> Vec<u32> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "start")
            .map(|e| e["pid"].as_u64().unwrap() as u32)
            .collect()
    }

    /// Every prompt the fake processes saw (not `/clear`), with the context size then.
    pub fn prompts(&self) -> Vec<(String, u64)> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "prompt")
            .map(|e| {
                (
                    e["prompt"].as_str().unwrap().to_string(),
                    e["context_turns"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

/// A retry policy of `retries` tries again, with the tiny backoffs the fake CLI's builder
/// uses (1-5 ms), so that a test asking for retries takes no longer for it.
pub fn quick_retries(retries: u32) -> RetryPolicy {
    RetryPolicy::default()
        .max_retries(retries)
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(5))
}

pub fn read_events(path: &Path) -> Vec<Value> {
    let Ok(mut bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    // Only whole lines: a fake process may be writing the last one as this reads (a line
    // over a page long, a long system prompt's, shows up in two parts).
    bytes.truncate(
        bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |end| end + 1),
    );
    String::from_utf8(bytes)
        .expect("the fake writes UTF-8")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Wait until `condition` holds, failing the test at the deadline. Never a fixed sleep.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The name the test harness knows test `name` by, to re-run only it in a child copy of this
/// binary (`--exact`): `module` is the test's `module_path!()`, whose first part is the test
/// binary and the rest the test's module in a binary of several (tests/fast, tests/real).
pub fn this_test(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_binary, path)) => format!("{path}::{name}"),
        None => name.to_string(),
    }
}

/// The line the test harness prints on stdout before it runs exactly one test.
pub const RAN_ONE_TEST: &str = "running 1 test";

/// Fails unless a child copy of this binary, run with `--exact`, ran one test (`stdout` is
/// what it printed): a test that was renamed or moved is not found, the child runs nothing
/// and succeeds, and the parent's checks would pass on nothing.
pub fn assert_ran_one_test(stdout: &str) {
    assert!(
        stdout.lines().any(|line| line == RAN_ONE_TEST),
        "the child copy of this test binary ran no test (renamed or moved?): {stdout}"
    );
}

/// Whether a process exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat.rsplit_once(')') {
            Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// The name prefix of a session's threads (`claude-rayon-s<id>-`), learnt from the thread
/// that runs one item's prompt closure.
pub fn thread_prefix(session: &Session) -> String {
    use claude_rayon::prelude::*;
    use rayon::prelude::*;
    let name = std::sync::Mutex::new(String::new());
    let _: Vec<_> = [()]
        .par_iter()
        .claude_map(session, |_| {
            *name.lock().unwrap() = std::thread::current().name().unwrap_or("").to_string();
            "thread name"
        })
        .collect();
    let name = name.into_inner().unwrap();
    let prefix = name
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .to_string();
    assert!(
        prefix.starts_with("claude-rayon-s") && prefix.ends_with('-') && prefix.len() < name.len(),
        "a session thread is named claude-rayon-s<session>-<index>: {name:?}"
    );
    prefix
}

/// The live CLI processes this test process started with `home` as their HOME.
pub fn cli_pids_with_home(home: &Path) -> Vec<u32> {
    let home = format!("HOME={}", home.display());
    let me = std::process::id();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(me) && pid_alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == home.as_bytes()))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The parent of a process, if it exists.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Name of the variable that turns a skipped real-CLI test into a failure.
pub const REQUIRE_REAL_CLI: &str = "CLAUDE_RAYON_REQUIRE_REAL_CLI";

/// The real `claude` for the real tier: `CLAUDE_CODE_BIN`, else `claude` on PATH. `None`
/// (with a notice on the terminal that the harness does not capture) when it is missing,
/// unless CLAUDE_RAYON_REQUIRE_REAL_CLI=1 demands it.
pub fn real_cli(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("CLAUDE_CODE_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("claude"))
                    .find(|p| p.is_file())
            })
        });
    if found.is_some() {
        return found;
    }
    if std::env::var(REQUIRE_REAL_CLI).is_ok_and(|v| v == "1") {
        panic!(
            "{REQUIRE_REAL_CLI}=1 but no claude CLI was found (set CLAUDE_CODE_BIN or put claude on PATH)"
        );
    }
    use std::io::Write;
    // Written to the stderr handle itself: the test harness captures print macros only.
    let _ = writeln!(
        std::io::stderr(),
        "\nNOTICE: real-CLI test `{test}` SKIPPED: no claude CLI found. Install it with \
         `npm install --prefix ~/.cache/claude-rayon/npm @anthropic-ai/claude-code` and set \
         CLAUDE_CODE_BIN=~/.cache/claude-rayon/npm/node_modules/.bin/claude \
         (CI sets {REQUIRE_REAL_CLI}=1 to make this a failure).\n"
    );
    None
}

/// A builder for `cli` talking to `api`, with `home` as its HOME, and the library's defaults
/// otherwise (for a child process that starts its own mock).
pub fn builder_against(cli: &Path, api: &mock_api::MockApi, home: &Path) -> SessionBuilder {
    Session::builder().cli(|mut c| {
        c = c.cli_path(cli);
        for key in mock_api::CLI_ENV_REMOVE {
            c = c.env_remove(*key);
        }
        for (key, value) in api.cli_env(home) {
            c = c.env(key, value);
        }
        c
    })
}

/// The real tier's setup: the real CLI, a mock Messages API, and temp HOME and cwd.
pub struct Real {
    pub cli: PathBuf,
    pub api: mock_api::MockApi,
    pub home: tempfile::TempDir,
    pub cwd: tempfile::TempDir,
}

impl Real {
    /// `None` (after a notice) when the real CLI is not installed; see [`real_cli`].
    pub fn start(test: &str) -> Option<Real> {
        let cli = real_cli(test)?;
        Some(Real {
            cli,
            api: mock_api::MockApi::start(),
            home: tempfile::tempdir().unwrap(),
            cwd: tempfile::tempdir().unwrap(),
        })
    }

    /// A builder for the real CLI against the mock, with tiny backoffs and no CLI retries.
    pub fn builder(&self) -> SessionBuilder {
        self.bare_builder()
            .cli(|c| c.cwd(self.cwd.path()).cli_max_retries(Some(0)))
            .model("claude-sonnet-4-5")
            .timeout(Duration::from_secs(60))
            .retry_policy(
                claude_rayon::RetryPolicy::default()
                    .initial_backoff(Duration::from_millis(1))
                    .max_backoff(Duration::from_millis(20)),
            )
    }

    /// A builder for the real CLI against the mock with nothing else set: the library's
    /// defaults, no model, no working folder.
    pub fn bare_builder(&self) -> SessionBuilder {
        builder_against(&self.cli, &self.api, self.home.path())
    }

    /// The CLI processes of this setup alive now: children of this test process whose HOME
    /// is this setup's.
    pub fn cli_pids(&self) -> Vec<u32> {
        cli_pids_with_home(self.home.path())
    }

    /// Transcript files the CLI left under HOME/.claude/projects.
    pub fn transcripts(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        walk(&path, out);
                    } else {
                        out.push(path);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.home.path().join(".claude/projects"), &mut out);
        out
    }
}

/// `builder`'s session on one process: items one at a time.
pub fn one_at_a_time(builder: SessionBuilder) -> Session {
    builder.concurrency(1).build().unwrap()
}

/// As [`one_at_a_time`], asking a failed item up to `retries` more times.
pub fn one_at_a_time_retrying(builder: SessionBuilder, retries: u32) -> Session {
    builder
        .retry_policy(quick_retries(retries))
        .concurrency(1)
        .build()
        .unwrap()
}

/// An item text like a user's: a support ticket of about `len` characters (prose, no marker
/// at the start), different for every `seed`.
pub fn ticket(seed: usize, len: usize) -> String {
    const OPENINGS: [&str; 5] = [
        "Hello, I am writing about my order",
        "Since last Tuesday our team has been unable to sign in",
        "We were charged twice for the same invoice",
        "The export to spreadsheet feature stopped working",
        "After the latest update the mobile app crashes",
    ];
    const SENTENCES: [&str; 8] = [
        "I tried clearing the cache and logging in again, but nothing changed.",
        "Our account manager said this would be fixed within a week, and it has been three.",
        "The error message only says that something went wrong and to try again later.",
        "Could you please look into it and tell me what we should do in the meantime?",
        "This affects about forty people in the finance department every single morning.",
        "I have attached nothing here because the upload form rejects every file we try.",
        "We are on the annual plan and renewed it in March without any trouble at all.",
        "If a refund is the simplest way to settle this, we would accept one gladly.",
    ];
    let mut text = format!(
        "{} (reference {:05}).",
        OPENINGS[seed % OPENINGS.len()],
        seed * 7919 % 100_000
    );
    let mut i = seed;
    while text.len() < len {
        text.push(' ');
        text.push_str(SENTENCES[i % SENTENCES.len()]);
        i = (i * 31 + 7) % 1_000_003;
    }
    text
}
