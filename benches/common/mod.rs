//! Shared bench helpers: sessions on the fake or the real CLI, medians, CPU time.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use claude_rayon_mock_api::{MockApi, CLI_ENV_REMOVE};

use claude_rayon::{Session, SessionBuilder};

/// The fake CLI built from this crate.
pub fn fake_cli() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_claude-rayon-sim"))
}

/// A builder on the fake CLI.
pub fn fake_builder() -> SessionBuilder {
    Session::builder().cli(|c| c.cli_path(fake_cli()))
}

/// A builder for the real CLI with `env` (the mock API's) set and `remove` removed, on the
/// model the mock answers for and with no retries by the CLI.
pub fn real_builder(
    cli: &std::path::Path,
    env: &[(String, String)],
    remove: &[&str],
) -> SessionBuilder {
    Session::builder().model("claude-sonnet-4-5").cli(|mut c| {
        c = c.cli_path(cli).cli_max_retries(Some(0));
        for key in remove {
            c = c.env_remove(*key);
        }
        for (key, value) in env {
            c = c.env(key.clone(), value.clone());
        }
        c
    })
}

/// The real CLI from CLAUDE_CODE_BIN, if set.
pub fn real_cli() -> Option<PathBuf> {
    std::env::var_os("CLAUDE_CODE_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

pub fn percentile(mut values: Vec<Duration>, q: f64) -> Duration {
    values.sort();
    let index = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    values[index]
}

/// CPU time (user + system) this process has used, not counting children.
pub fn own_cpu_time() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time (user + system) of this process's children that have ended and been waited for,
/// and of their own descendants that they waited for.
pub fn children_cpu_time() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Whether a stream-json line is a turn's result (2.1.332 does not put `type` first).
pub fn is_result(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v["type"] == "result")
}

pub fn median_f64(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// What seals a process, for a bare driver: the library's seal as it is now, or as it was
/// before the CLI's own calls and git were turned off (0.1.0). Mirrors `src/backend/cli/seal.rs`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Seal {
    /// `--safe-mode`, `--setting-sources user`, `--strict-mcp-config`; no attachments, safe
    /// mode and no auto-memory in the environment.
    Before,
    /// Before, plus every switch of the current seal.
    Now,
}

impl Seal {
    pub fn args(self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--setting-sources",
            "user",
            "--safe-mode",
            "--strict-mcp-config",
        ]
        .map(String::from)
        .to_vec();
        let env: serde_json::Map<String, serde_json::Value> = self
            .env()
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        let mut settings = serde_json::json!({ "env": env });
        if self == Seal::Now {
            settings["spinnerTipsOverride"] =
                serde_json::json!({ "excludeDefault": true, "tips": ["."] });
        }
        args.extend(["--settings".to_string(), settings.to_string()]);
        args
    }

    pub fn env(self) -> Vec<(&'static str, &'static str)> {
        let mut env = vec![
            ("CLAUDE_CODE_DISABLE_ATTACHMENTS", "1"),
            ("CLAUDE_CODE_SAFE_MODE", "1"),
            ("CLAUDE_CODE_DISABLE_AUTO_MEMORY", "1"),
        ];
        if self == Seal::Now {
            env.extend([
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
                ("CLAUDE_CODE_DISABLE_TERMINAL_TITLE", "1"),
                ("CLAUDE_CODE_ENABLE_PROMPT_SUGGESTION", "false"),
                ("CLAUDE_CODE_DISABLE_GIT_INSTRUCTIONS", "1"),
                ("CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK", "1"),
                ("CLAUDE_CODE_DISABLE_REFUSAL_RETRY", "1"),
                ("CLAUDE_CODE_DISABLE_REFUSAL_FALLBACK", "1"),
                ("CLAUDE_CODE_NO_MODEL_FALLBACK", "1"),
                ("CLAUDE_CODE_DISABLE_RESPONSE_COMPARISON", "1"),
                ("GIT_TERMINAL_PROMPT", "0"),
                ("GIT_OPTIONAL_LOCKS", "0"),
                ("GIT_CONFIG_GLOBAL", "/dev/null"),
                ("GIT_CONFIG_NOSYSTEM", "1"),
            ]);
        }
        env
    }
}

/// A support ticket of about `len` characters, different for every `seed`.
pub fn ticket(seed: usize, len: usize) -> String {
    const SENTENCES: [&str; 6] = [
        "I tried clearing the cache and logging in again, but nothing changed.",
        "Our account manager said this would be fixed within a week, and it has been three.",
        "The error message only says that something went wrong and to try again later.",
        "Could you please look into it and tell me what we should do in the meantime?",
        "This affects about forty people in the finance department every single morning.",
        "If a refund is the simplest way to settle this, we would accept one gladly.",
    ];
    let mut text = format!("Ticket {seed}: we were charged twice for the same invoice.");
    let mut i = seed;
    while text.len() < len {
        text.push(' ');
        text.push_str(SENTENCES[i % SENTENCES.len()]);
        i = (i * 31 + 7) % 1_000_003;
    }
    text
}

/// A `claude` command as a session starts one, against the mock API, with `seal`'s flags
/// and environment and stdin and stdout piped.
pub fn bare_command(
    (cli, api, home, cwd): (&Path, &MockApi, &Path, &Path),
    seal: Seal,
    extra_args: &[&str],
) -> std::process::Command {
    use std::process::{Command, Stdio};
    let mut command = Command::new(cli);
    command
        .args([
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            "--model",
            "claude-sonnet-4-5",
            "--system-prompt",
            "",
            "--tools",
            "",
            "--no-session-persistence",
        ])
        .args(seal.args())
        .args(extra_args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for key in CLI_ENV_REMOVE {
        command.env_remove(key);
    }
    command
        .envs(api.cli_env(home))
        .env("CLAUDE_CODE_MAX_RETRIES", "0")
        .envs(seal.env().iter().copied());
    command
}

/// The same CLI with a session's flags and environment (`seal`), driven by `threads` plain
/// threads with nothing checked: each writes an item, reads lines until its
/// result, writes `/clear`, reads until that result. Returns the wall time.
pub fn bare_driver(
    (cli, api, home, cwd): (&Path, &MockApi, &Path, &Path),
    items: &[String],
    threads: usize,
    seal: Seal,
    extra_args: &[&str],
) -> Duration {
    use std::io::{BufRead, BufReader, Write};
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut command = bare_command((cli, api, home, cwd), seal, extra_args);
                let mut child = command.spawn().expect("spawn the CLI");
                let mut stdin = child.stdin.take().expect("stdin");
                let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
                let mut line = String::new();
                let mut turn = |text: &str| {
                    let message = serde_json::json!({
                        "type": "user",
                        "message": { "role": "user", "content": text },
                    });
                    writeln!(stdin, "{message}").expect("write");
                    loop {
                        line.clear();
                        let read = stdout.read_line(&mut line).expect("read");
                        assert!(read > 0, "the CLI ended");
                        if is_result(&line) {
                            break;
                        }
                    }
                };
                while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                    turn(item);
                    turn("/clear");
                }
                // Killed after the last answer: the exit is not part of what is measured.
                let _ = child.kill();
                drop(stdin);
                let _ = child.wait();
            });
        }
    });
    started.elapsed()
}

/// The mock API in a child process (this program again, started with `serve_flag` and
/// `args`, which prints the mock's URL and serves until its stdin closes): this program's
/// CPU and memory are then the library's alone.
pub struct MockProcess {
    child: std::process::Child,
    pub url: String,
}

impl MockProcess {
    pub fn start(serve_flag: &str, args: &[String]) -> MockProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .arg(serve_flag)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the mock API process");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        MockProcess {
            child,
            url: line.trim().to_string(),
        }
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        // Its stdin closes: it stops.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
