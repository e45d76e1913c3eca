//! A warm session versus a fresh `claude` process per item: the same 50 prompts both ways, in
//! one run, on the real CLI against an instant loopback mock of the Messages API, so what is
//! measured is the CLI's own cost per item (start-up versus a warm turn), not the model's.
//!
//! Section 1: concurrency 1, sequential `query` calls: per-item median and p90, total wall
//! time, items/s, the ratio of medians, and the warm session's time to its first result.
//! Section 2: concurrency 2, two threads sharing the prompts: items/s both ways.
//! Section 3: concurrency 2, 200 support tickets of 300-2,000 characters (items like a
//! user's): `claude_map` against a bare driver of the same CLI (two persistent processes with
//! the same flags and environment, two plain threads writing each item and `/clear`, reading
//! lines until each result, nothing checked), alternating, three rounds; the library's
//! overhead is the ratio of the medians.
//!
//! Run: `CLAUDE_CODE_BIN=/path/to/claude cargo bench --bench warm_vs_fresh` (about 2 minutes
//! on 2 cores). Without CLAUDE_CODE_BIN it prints a notice and exits 0.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use claude_rayon::{Session, SessionBuilder};
use claude_rayon_mock_api::{MockApi, CLI_ENV_REMOVE};

const ITEMS: usize = 50;

fn main() {
    let Some(cli) = std::env::var_os("CLAUDE_CODE_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    else {
        println!(
            "warm_vs_fresh: SKIPPED: set CLAUDE_CODE_BIN to the real claude CLI \
             (npm install --prefix ~/.cache/claude-rayon/npm @anthropic-ai/claude-code; \
             CLAUDE_CODE_BIN=~/.cache/claude-rayon/npm/node_modules/.bin/claude)"
        );
        return;
    };
    let api = MockApi::start(); // default reply: "echo: {prompt}", at once
    let home = tempfile::tempdir().expect("temp HOME");
    let cwd = tempfile::tempdir().expect("temp cwd");
    let prompts: Vec<String> = (0..ITEMS)
        .map(|i| format!("Item {i}: name one prime number greater than {i}."))
        .collect();
    let builder = |concurrency: usize, fresh: bool| {
        real_builder(&cli, &api, home.path(), cwd.path())
            .concurrency(concurrency)
            .fresh_process_per_item(fresh)
    };

    println!("warm_vs_fresh: {ITEMS} prompts, real CLI {}", cli.display());
    println!("  against an instant mock Messages API on {}", api.url());
    println!();
    println!("== concurrency 1, sequential query() calls");
    let warm = sequential(builder(1, false).build().expect("warm session"), &prompts);
    let fresh = sequential(builder(1, true).build().expect("fresh session"), &prompts);
    warm.print("warm session");
    fresh.print("fresh process per item");
    println!(
        "  ratio of medians (fresh / warm): {:.1}x",
        fresh.median.as_secs_f64() / warm.median.as_secs_f64()
    );
    match warm.time_to_first_result {
        Some(t) => println!(
            "  warm session, time to first result: {} (the one cold start it pays)",
            ms(t)
        ),
        None => println!("  warm session, time to first result: none recorded"),
    }
    println!();
    println!("== concurrency 2, two threads");
    let warm2 = threaded(
        builder(2, false).build().expect("warm session"),
        &prompts,
        2,
    );
    let fresh2 = threaded(
        builder(2, true).build().expect("fresh session"),
        &prompts,
        2,
    );
    println!(
        "  warm session            {:>6.1} items/s  ({} in {}, {} processes)",
        warm2.items_per_sec(),
        ITEMS,
        secs(warm2.wall),
        warm2.processes
    );
    println!(
        "  fresh process per item  {:>6.1} items/s  ({} in {}, {} processes)",
        fresh2.items_per_sec(),
        ITEMS,
        secs(fresh2.wall),
        fresh2.processes
    );
    println!(
        "  ratio of items/s (warm / fresh): {:.1}x",
        warm2.items_per_sec() / fresh2.items_per_sec()
    );

    // Every prompt reached the API once per run (4 runs), each with fresh context.
    let requests = api.requests();
    assert_eq!(requests.len(), 4 * ITEMS, "one API call per item per run");
    assert!(
        requests.iter().all(|r| r.user_turns == 1),
        "an item carried another's context"
    );

    println!();
    println!("== concurrency 2, {TICKETS} support tickets: claude_map against a bare driver");
    let tickets: Vec<String> = (0..TICKETS)
        .map(|i| ticket(i, 300 + (i * 97) % 1700))
        .collect();
    let mut library = Vec::new();
    let mut bare = Vec::new();
    for round in 1..=ROUNDS {
        api.clear_requests();
        let session = builder(2, false).build().expect("session");
        let started = Instant::now();
        let answered = {
            use claude_rayon::prelude::*;
            use rayon::prelude::*;
            tickets
                .par_iter()
                .claude_map(&session, |t| t.to_string())
                .filter(|r| r.is_ok())
                .count()
        };
        let took = started.elapsed();
        session.close().expect("close");
        assert_eq!(answered, TICKETS, "every ticket answered");
        assert_eq!(api.request_count(), TICKETS, "one call per ticket");
        library.push(TICKETS as f64 / took.as_secs_f64());

        api.clear_requests();
        let took = bare_driver(&cli, &api, home.path(), cwd.path(), &tickets, 2);
        assert_eq!(api.request_count(), TICKETS, "one call per ticket");
        bare.push(TICKETS as f64 / took.as_secs_f64());
        println!(
            "  round {round}: claude_map {:>6.1} items/s   bare driver {:>6.1} items/s",
            library[round - 1],
            bare[round - 1]
        );
    }
    let (library, bare) = (median(&mut library), median(&mut bare));
    println!(
        "  medians: claude_map {library:.1} items/s, bare driver {bare:.1} items/s: \
         claude_map at {:.0}% of the bare driver",
        100.0 * library / bare
    );
}

const TICKETS: usize = 200;
const ROUNDS: usize = 3;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A support ticket of about `len` characters, different for every `seed`.
fn ticket(seed: usize, len: usize) -> String {
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

/// The same CLI with the same flags and environment as a session's processes, driven by
/// `threads` plain threads with nothing checked: each writes an item, reads lines until its
/// result, writes `/clear`, reads until that result. Returns the wall time.
fn bare_driver(
    cli: &Path,
    api: &MockApi,
    home: &Path,
    cwd: &Path,
    items: &[String],
    threads: usize,
) -> Duration {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
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
                        "--setting-sources",
                        "user",
                        "--safe-mode",
                        "--strict-mcp-config",
                    ])
                    .current_dir(cwd)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null());
                for key in CLI_ENV_REMOVE {
                    command.env_remove(key);
                }
                command.envs(api.cli_env(home)).envs([
                    ("CLAUDE_CODE_MAX_RETRIES", "0"),
                    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
                    ("CLAUDE_CODE_DISABLE_GIT_INSTRUCTIONS", "1"),
                    ("CLAUDE_CODE_DISABLE_ATTACHMENTS", "1"),
                    ("CLAUDE_CODE_SAFE_MODE", "1"),
                    ("CLAUDE_CODE_DISABLE_AUTO_MEMORY", "1"),
                ]);
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
                        if line.starts_with(r#"{"type":"result""#) {
                            break;
                        }
                    }
                };
                while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                    turn(item);
                    turn("/clear");
                }
                drop(stdin);
                let _ = child.wait();
            });
        }
    });
    started.elapsed()
}

/// A builder for the real CLI against the mock: what the real-tier tests use.
fn real_builder(cli: &Path, api: &MockApi, home: &Path, cwd: &Path) -> SessionBuilder {
    let mut builder = Session::builder()
        .cli_path(cli)
        .cwd(cwd)
        .model("claude-sonnet-4-5")
        .cli_max_retries(Some(0))
        .max_retries(0)
        .timeout(Duration::from_secs(60));
    for key in CLI_ENV_REMOVE {
        builder = builder.env_remove(*key);
    }
    for (key, value) in api.cli_env(home) {
        builder = builder.env(key, value);
    }
    builder
}

struct Run {
    /// Per item, around the `query` call (a fresh process's start and exit included).
    latencies: Vec<Duration>,
    median: Duration,
    wall: Duration,
    processes: usize,
    time_to_first_result: Option<Duration>,
}

impl Run {
    fn new(session: Session, latencies: Vec<Duration>, wall: Duration) -> Run {
        let stats = session.stats();
        assert_eq!(stats.succeeded, ITEMS as u64, "every item must succeed");
        let processes = session.stats().processes_started as usize;
        session.close().expect("close");
        let mut sorted = latencies.clone();
        sorted.sort();
        Run {
            median: sorted[sorted.len() / 2],
            latencies: sorted,
            wall,
            processes,
            time_to_first_result: stats.time_to_first_result,
        }
    }

    fn p90(&self) -> Duration {
        let index = (self.latencies.len() * 9).div_ceil(10).max(1) - 1;
        self.latencies[index]
    }

    fn items_per_sec(&self) -> f64 {
        ITEMS as f64 / self.wall.as_secs_f64()
    }

    fn print(&self, name: &str) {
        println!(
            "  {name:<23} median {:>8}  p90 {:>8}  total {:>7}  {:>6.1} items/s  ({} processes)",
            ms(self.median),
            ms(self.p90()),
            secs(self.wall),
            self.items_per_sec(),
            self.processes
        );
    }
}

fn sequential(session: Session, prompts: &[String]) -> Run {
    let mut latencies = Vec::with_capacity(prompts.len());
    let started = Instant::now();
    for prompt in prompts {
        let item = Instant::now();
        let response = session.query(prompt).expect("query");
        latencies.push(item.elapsed());
        assert_eq!(response.text, format!("echo: {prompt}"));
    }
    let wall = started.elapsed();
    Run::new(session, latencies, wall)
}

/// `threads` plain threads take prompts from one shared counter until none are left.
fn threaded(session: Session, prompts: &[String], threads: usize) -> Run {
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(prompts.len()));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some(prompt) = prompts.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let item = Instant::now();
                    let response = session.query(prompt).expect("query");
                    let took = item.elapsed();
                    assert_eq!(response.text, format!("echo: {prompt}"));
                    latencies.lock().unwrap().push(took);
                }
            });
        }
    });
    let wall = started.elapsed();
    Run::new(session, latencies.into_inner().unwrap(), wall)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
