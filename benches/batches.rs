//! The Message Batches backend (`Backend::Batches`) against a loopback mock API that runs in a
//! process of its own (so this program's CPU and memory are the library's) and processes a
//! batch at once (processing time zero, the session polling every 10 ms):
//!
//! 1. Cost per item for the same items (support tickets of 1-2 KB) on `Backend::MessagesApi`
//!    and `Backend::Batches`, without and with a long shared system prompt (a ~6 KB rubric
//!    through `append_system_prompt`, so the prompt cache matters): `stats.cost_usd / items`,
//!    the batch/Messages ratio, `stats.cost_usd_at_messages_price`, cache reads and writes.
//!    Three alternating rounds, medians; a fresh mock (an empty prompt cache) per run.
//! 2. The library's own CPU (user + system of the process that runs the session; the mock is
//!    another process, not counted) and peak resident memory (VmHWM) for 100,000 items
//!    through `claude_map` on a batch session: one batch (the default `max_batch_requests`,
//!    100,000) and four (`max_batch_requests(25_000)`), each with a journal and without.
//!    Every measurement in a fresh process of its own, three alternating rounds, medians.
//!
//! Run: `cargo bench --bench batches` (`BATCHES_ITEMS=N` items per cost run, default 2,000;
//! `BATCHES_LIBRARY_ITEMS=N` items per library run, default 100,000).

mod common;

use common::MockProcess;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use claude_rayon::prelude::*;
use claude_rayon::{Backend, Session, SessionBuilder, Stats};
use claude_rayon_mock_api::MockApi;
use rayon::prelude::*;

const SERVE: &str = "--serve-mock-api";
const PROBE: &str = "--probe-library";
const MODEL: &str = "claude-sonnet-4-5";

/// Serve the mock until stdin ends (the parent closed it, or died).
fn serve() {
    let api = MockApi::start();
    // Counts only: 100,000 recorded requests would be the mock's memory, not the library's.
    api.set_recording(false);
    api.set_batch_processing_time(Duration::ZERO);
    println!("{}", api.url());
    std::io::stdout().flush().unwrap();
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {
        sink.clear();
    }
}

/// `n` support tickets of 1-2 KB, each different.
fn tickets(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| common::ticket(i, 1000 + (i * 7919) % 1000))
        .collect()
}

fn prompt(ticket: &str) -> String {
    format!("Summarise this support ticket in one line, then name its urgency:\n{ticket}")
}

/// A triage rubric of about 6 KB: the long shared instruction the prompt cache is for.
fn rubric() -> String {
    const RULES: [&str; 6] = [
        "Urgency is high when the customer cannot work at all, when money was taken twice, or \
         when many people are affected every day; quote the phrase that decided it.",
        "Urgency is medium when a workaround exists but costs the customer time each week, or \
         when a promised fix is overdue by more than a few days.",
        "Urgency is low for questions, feature wishes and one-off glitches that went away.",
        "Name the product area in two words at most: billing, sign-in, exports, reports, or \
         the closest other area the ticket names itself.",
        "Never promise a refund or a date; say which team should answer and what it needs.",
        "Keep the summary under twenty words, in the customer's terms, without greetings.",
    ];
    let mut text = String::from("You triage support tickets for a software company.\n");
    let mut i = 0;
    while text.len() < 6000 {
        text.push_str(RULES[i % RULES.len()]);
        text.push('\n');
        i += 1;
    }
    text
}

fn builder(backend: Backend, url: &str) -> SessionBuilder {
    let builder = Session::builder()
        .backend(backend)
        .api_key("sk-ant-bench")
        .base_url(url)
        .model(MODEL)
        .timeout(Duration::from_secs(300));
    match backend {
        Backend::Batches => builder.batch_poll_interval(Duration::from_millis(10)),
        _ => builder.concurrency(8),
    }
}

/// Run `items` through `claude_map` on `session`; every one must succeed.
fn map_all(session: &Session, items: &[String]) {
    let results: Vec<_> = items
        .par_iter()
        .claude_map(session, |t| prompt(t))
        .collect();
    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "every item must succeed in a benchmark: {} failed, the first: {:?}",
        failures.len(),
        failures.first().map(|f| &f.error)
    );
}

/// One cost run on a fresh mock: the session's stats.
fn cost_run(backend: Backend, shared: Option<&str>, items: &[String]) -> Stats {
    let mock = MockProcess::start(SERVE, &[]);
    let mut builder = builder(backend, &mock.url);
    if let Some(shared) = shared {
        builder = builder.append_system_prompt(shared);
    }
    let session = builder.build().expect("session");
    map_all(&session, items);
    session.stats()
}

/// The process's CPU (user + system), not its children's.
fn own_cpu() -> Duration {
    common::own_cpu_time()
}

/// A `/proc/self/status` field, in kB.
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0)
}

/// In a fresh process: `n` items through `claude_map` on a batch session. Prints the
/// library's CPU in µs, the resident memory before the session (the items held) and the
/// peak (VmHWM) in kB, the items' bytes, the wall time and the batches.
fn probe(url: &str, n: usize, max_batch: usize, journal: bool) {
    let items = tickets(n);
    let item_bytes: usize = items.iter().map(String::len).sum();
    let before_kb = status_kb("VmRSS:");
    let dir = tempfile::tempdir().unwrap();
    let cpu = own_cpu();
    let started = Instant::now();
    let mut builder = builder(Backend::Batches, url).max_batch_requests(max_batch);
    if journal {
        builder = builder.journal(dir.path().join("answers.jsonl"));
    }
    let session = builder.build().expect("session");
    map_all(&session, &items);
    let stats = session.stats();
    drop(session);
    let wall = started.elapsed();
    let cpu = own_cpu().saturating_sub(cpu);
    let peak_kb = status_kb("VmHWM:");
    assert_eq!(stats.succeeded, n as u64);
    println!(
        "{} {} {} {} {:.3} {}",
        cpu.as_micros(),
        before_kb,
        peak_kb,
        item_bytes,
        wall.as_secs_f64(),
        stats.batches
    );
}

/// What one library probe measured.
struct Probe {
    cpu: Duration,
    before_mb: f64,
    peak_mb: f64,
    item_mb: f64,
    wall: Duration,
    batches: u64,
}

fn run_probe(n: usize, max_batch: usize, journal: bool) -> Probe {
    let mock = MockProcess::start(SERVE, &[]);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            PROBE,
            &mock.url,
            &n.to_string(),
            &max_batch.to_string(),
            if journal { "1" } else { "0" },
        ])
        .output()
        .expect("run the library probe");
    let text = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = text.split_whitespace().collect();
    assert!(
        out.status.success() && parts.len() == 6,
        "the probe failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mb = |kb: &str| kb.parse::<f64>().unwrap() / 1024.0;
    Probe {
        cpu: Duration::from_micros(parts[0].parse().unwrap()),
        before_mb: mb(parts[1]),
        peak_mb: mb(parts[2]),
        item_mb: parts[3].parse::<f64>().unwrap() / (1024.0 * 1024.0),
        wall: Duration::from_secs_f64(parts[4].parse().unwrap()),
        batches: parts[5].parse().unwrap(),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == SERVE) {
        return serve();
    }
    if let Some(i) = args.iter().position(|a| a == PROBE) {
        return probe(
            &args[i + 1],
            args[i + 2].parse().unwrap(),
            args[i + 3].parse().unwrap(),
            args[i + 4] == "1",
        );
    }
    let items = tickets(env_usize("BATCHES_ITEMS", 2000));
    let library_items = env_usize("BATCHES_LIBRARY_ITEMS", 100_000);
    let rubric = rubric();

    println!(
        "1. cost per item, {} tickets of 1-2 KB, {MODEL}'s list prices, 3 alternating rounds, medians",
        items.len()
    );
    let cases: [(&str, Backend, Option<&str>); 4] = [
        ("no shared prompt", Backend::MessagesApi, None),
        ("no shared prompt", Backend::Batches, None),
        ("6 KB rubric", Backend::MessagesApi, Some(&rubric)),
        ("6 KB rubric", Backend::Batches, Some(&rubric)),
    ];
    let mut runs: Vec<Vec<Stats>> = vec![Vec::new(); cases.len()];
    for _round in 0..3 {
        for (case, (_, backend, shared)) in cases.iter().enumerate() {
            runs[case].push(cost_run(*backend, *shared, &items));
        }
    }
    let n = items.len() as f64;
    let per_item = |stats: &[Stats], f: &dyn Fn(&Stats) -> f64| {
        common::median_f64(&mut stats.iter().map(|s| f(s) / n).collect::<Vec<_>>())
    };
    println!(
        "{:<17} {:<8} {:>14} {:>16} {:>11} {:>14} {:>15} {:>8}",
        "shared prompt",
        "backend",
        "USD/item",
        "at Messages/item",
        "batch/msgs",
        "cache read/item",
        "cache write/item",
        "batches"
    );
    for pair in [0usize, 2] {
        let messages_cost = per_item(&runs[pair], &|s| s.cost_usd);
        for case in [pair, pair + 1] {
            let stats = &runs[case];
            let cost = per_item(stats, &|s| s.cost_usd);
            let at_messages = per_item(stats, &|s| s.cost_usd_at_messages_price);
            let read = per_item(stats, &|s| s.usage.cache_read_input_tokens as f64);
            let write = per_item(stats, &|s| s.usage.cache_creation_input_tokens as f64);
            let batches = stats[stats.len() / 2].batches;
            let (label, backend, _) = cases[case];
            let ratio = if case == pair {
                String::new()
            } else {
                format!("{:.3}", cost / messages_cost)
            };
            println!(
                "{label:<17} {:<8} {cost:>14.6} {at_messages:>16.6} {ratio:>11} {read:>14.1} {write:>15.1} {batches:>8}",
                if backend == Backend::Batches { "batches" } else { "messages" },
            );
        }
    }

    println!(
        "\n2. the library's own CPU and peak memory, {library_items} tickets through claude_map on a batch session (a fresh process each; the mock's process not counted), 3 alternating rounds, medians"
    );
    let configs: [(usize, bool); 4] = [
        (100_000, false),
        (100_000, true),
        (25_000, false),
        (25_000, true),
    ];
    let mut probes: Vec<Vec<Probe>> = configs.iter().map(|_| Vec::new()).collect();
    for round in 0..3 {
        for (config, &(max_batch, journal)) in configs.iter().enumerate() {
            let p = run_probe(library_items, max_batch, journal);
            eprintln!(
                "round {round}: max_batch_requests {max_batch}, journal {journal}: {:.1} s wall, CPU {:.1} s, peak {:.0} MB",
                p.wall.as_secs_f64(),
                p.cpu.as_secs_f64(),
                p.peak_mb
            );
            probes[config].push(p);
        }
    }
    let scale = 100_000.0 / library_items as f64;
    println!(
        "{:<19} {:<7} {:>7} {:>13} {:>11} {:>16} {:>16} {:>13} {:>9}",
        "max_batch_requests",
        "journal",
        "batches",
        "CPU µs/item",
        "CPU (s)",
        "peak MB/100k",
        "items held MB",
        "items' text MB",
        "wall s"
    );
    for (config, &(max_batch, journal)) in configs.iter().enumerate() {
        let p = &probes[config];
        let cpu = common::median(p.iter().map(|p| p.cpu).collect());
        let min_cpu = p.iter().map(|p| p.cpu).min().unwrap();
        let max_cpu = p.iter().map(|p| p.cpu).max().unwrap();
        let peak = common::median_f64(&mut p.iter().map(|p| p.peak_mb).collect::<Vec<_>>());
        let before = common::median_f64(&mut p.iter().map(|p| p.before_mb).collect::<Vec<_>>());
        let wall = common::median(p.iter().map(|p| p.wall).collect());
        println!(
            "{max_batch:<19} {:<7} {:>7} {:>6.1} ({:.1}-{:.1}) {:>11.2} {:>16.0} {:>16.0} {:>13.0} {:>9.1}",
            if journal { "on" } else { "off" },
            p[0].batches,
            cpu.as_secs_f64() * 1e6 / library_items as f64,
            min_cpu.as_secs_f64() * 1e6 / library_items as f64,
            max_cpu.as_secs_f64() * 1e6 / library_items as f64,
            cpu.as_secs_f64(),
            peak * scale,
            before * scale,
            p[0].item_mb * scale,
            wall.as_secs_f64()
        );
    }
    println!("(peak MB: the whole process's VmHWM, the items it holds included; items held MB: its resident memory before the session)");
}
