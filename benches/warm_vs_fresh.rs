//! A warm session versus a fresh `claude` process per item: the same 50 prompts both ways, in
//! one run, on the real CLI against an instant loopback mock of the Messages API, so what is
//! measured is the CLI's own cost per item (start-up versus a warm turn), not the model's.
//!
//! Section 1: concurrency 1, sequential `query` calls: per-item median and p90, total wall
//! time, items/s, the ratio of medians, and the warm session's time to its first result.
//! Section 2: concurrency 2, two threads sharing the prompts: items/s both ways.
//! Section 3: concurrency 2, 200 support tickets of 300-2,000 characters (items like a
//! user's): `claude_map` against a bare driver of the same CLI (two persistent processes with
//! the seal's flags and environment, two plain threads writing each item and `/clear`, reading
//! lines until each result, nothing checked), without and with `--include-partial-messages`
//! (which the library passes to see every API call), alternating, three rounds; the library's
//! overhead is the ratio of the medians.
//!
//! Run: `CLAUDE_CODE_BIN=/path/to/claude cargo bench --bench warm_vs_fresh` (about 2 minutes
//! on 2 cores). Without CLAUDE_CODE_BIN it prints a notice and exits 0.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use claude_rayon::{RetryPolicy, Session, SessionBuilder};
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
            .cli(|c| c.fresh_process_per_item(fresh))
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
        .map(|i| common::ticket(i, 300 + (i * 97) % 1700))
        .collect();
    let mut library = Vec::new();
    let mut bare = Vec::new();
    let mut partial = Vec::new();
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

        for (flags, speeds) in [
            (&[][..], &mut bare),
            (&["--include-partial-messages"][..], &mut partial),
        ] {
            api.clear_requests();
            let took = common::bare_driver(
                (&cli, &api, home.path(), cwd.path()),
                &tickets,
                2,
                common::Seal::Now,
                flags,
            );
            assert_eq!(api.request_count(), TICKETS, "one call per ticket");
            speeds.push(TICKETS as f64 / took.as_secs_f64());
        }
        println!(
            "  round {round}: claude_map {:>6.1} items/s   bare driver {:>6.1} items/s   \
             with --include-partial-messages {:>6.1} items/s",
            library[round - 1],
            bare[round - 1],
            partial[round - 1]
        );
    }
    let (library, bare, partial) = (
        common::median_f64(&mut library),
        common::median_f64(&mut bare),
        common::median_f64(&mut partial),
    );
    println!(
        "  medians: claude_map {library:.1} items/s, bare driver {bare:.1} items/s, with \
         --include-partial-messages {partial:.1} items/s: claude_map at {:.0}% of the bare \
         driver, {:.0}% of the bare driver with the same flags",
        100.0 * library / bare,
        100.0 * library / partial
    );
}

const TICKETS: usize = 200;
const ROUNDS: usize = 3;

/// A builder for the real CLI against the mock: what the real-tier tests use.
fn real_builder(cli: &Path, api: &MockApi, home: &Path, cwd: &Path) -> SessionBuilder {
    Session::builder()
        .model("claude-sonnet-4-5")
        .retry_policy(RetryPolicy::none())
        .timeout(Duration::from_secs(60))
        .cli(|mut c| {
            c = c.cli_path(cli).cwd(cwd).cli_max_retries(Some(0));
            for key in CLI_ENV_REMOVE {
                c = c.env_remove(*key);
            }
            for (key, value) in api.cli_env(home) {
                c = c.env(key, value);
            }
            c
        })
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
