//! The resident memory of one warm CLI process over 2,000 items, sampled from
//! `/proc/PID/status` (VmRSS) every 100 items; then the throughput of the same 2,000 items with
//! the session's default recycling and with recycling off. Real CLI only (the figures are the
//! CLI's), against the loopback mock Messages API.
//!
//! Run: `CLAUDE_CODE_BIN=/path/to/claude cargo bench --bench process_memory`
//! (`PROCESS_MEMORY_ITEMS=N` for another count).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use claude_rayon::SessionBuilder;

/// A support ticket of a few hundred characters, different for every item, as a user's
/// items are.
fn ticket(i: usize) -> String {
    let products = [
        "the billing page",
        "the mobile app",
        "the export tool",
        "single sign-on",
    ];
    let product = products[i % products.len()];
    format!(
        "Ticket {i}: Since yesterday's update, {product} keeps failing for our team of {} people. \
         We open it, wait for about {} seconds, and then get a blank screen with no error \
         message; reloading does not help and clearing the cache made no difference either. \
         Two of us tried from home on a different network with the same result. We rely on \
         it for the month-end close, so please tell us whether this is a known problem, \
         whether there is a workaround, and when a fix is expected. Classify the urgency.",
        5 + i % 40,
        10 + i % 50,
    )
}

/// The resident memory of `pid` in bytes (VmRSS of `/proc/PID/status`).
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The live children of this process that run `cli`.
fn cli_children(cli: &Path) -> Vec<u32> {
    let cli = std::fs::canonicalize(cli).unwrap_or_else(|_| cli.to_path_buf());
    let me = std::process::id().to_string();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string));
            parent.as_deref() == Some(me.as_str())
                && std::fs::read_link(format!("/proc/{pid}/exe")).ok() == Some(cli.clone())
        })
        .collect();
    pids.sort_unstable();
    pids
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One process, `items` items one after another, recycling off: RSS every 100 items.
fn memory_over_items(make: &dyn Fn() -> SessionBuilder, cli: &Path, items: usize) {
    let session = make()
        .concurrency(1)
        .recycle_after_items(None)
        .recycle_above_memory(None)
        .build()
        .expect("session");
    println!("\none warm process, {items} items in a row, recycling off");
    println!("{:>6}  {:>8}  {:>10}", "items", "RSS MB", "items/s");
    let started = Instant::now();
    let mut pid = None;
    let mut samples = Vec::new();
    let mut since = Instant::now();
    for i in 0..items {
        session
            .query(ticket(i))
            .expect("every item must succeed in a benchmark");
        let done = i + 1;
        if done == 1 || done % 100 == 0 {
            let pids = cli_children(cli);
            assert_eq!(pids.len(), 1, "one process: {pids:?}");
            assert!(pid.is_none_or(|p| p == pids[0]), "the process was replaced");
            pid = Some(pids[0]);
            let rss = rss_bytes(pids[0]).expect("VmRSS");
            let rate = if done == 1 {
                0.0
            } else {
                100.0 / since.elapsed().as_secs_f64()
            };
            since = Instant::now();
            println!("{done:>6}  {:>8.1}  {rate:>10.1}", mb(rss));
            samples.push((done, rss));
        }
    }
    let elapsed = started.elapsed();
    let at = |n: usize| samples.iter().find(|(d, _)| *d >= n).map_or(0, |s| s.1);
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    println!(
        "RSS: start {:.1} MB, half ({}) {:.1} MB, end ({items}) {:.1} MB, peak {:.1} MB; \
         {:.1} items/s; {:.2} stats processes started",
        mb(at(1)),
        items / 2,
        mb(at(items / 2)),
        mb(at(items)),
        mb(peak),
        items as f64 / elapsed.as_secs_f64(),
        session.stats().processes_started as f64,
    );
}

/// Items per second for `items` items through `claude_map` at concurrency 2, and the
/// processes started.
fn throughput(builder: SessionBuilder, items: usize) -> (f64, u64) {
    use claude_rayon::prelude::*;
    use rayon::prelude::*;
    let session = builder.concurrency(2).build().expect("session");
    let started = Instant::now();
    let results: Vec<_> = (0..items)
        .into_par_iter()
        .claude_map(&session, |&i| ticket(i))
        .collect();
    let elapsed = started.elapsed();
    assert!(results.iter().all(Result::is_ok), "every item must succeed");
    (
        items as f64 / elapsed.as_secs_f64(),
        session.stats().processes_started,
    )
}

fn main() {
    let Some(cli) = common::real_cli() else {
        println!("process_memory: skipped (set CLAUDE_CODE_BIN to the claude executable)");
        return;
    };
    let items: usize = std::env::var("PROCESS_MEMORY_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let api = claude_rayon_mock_api::MockApi::start();
    api.set_reply(|_| claude_rayon_mock_api::Reply::text("Urgency: HIGH. A known problem."));
    let home = tempfile::tempdir().unwrap();
    let env = api.cli_env(home.path());
    let cli: PathBuf = cli;
    let make = || common::real_builder(&cli, &env, claude_rayon_mock_api::CLI_ENV_REMOVE);
    let version = std::process::Command::new(&cli)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("CLI {} ({version})", cli.display());
    memory_over_items(&make, &cli, items);
    api.clear_requests();

    println!("\n{items} items at concurrency 2: default recycling against recycling off");
    let (off, off_started) = throughput(
        make().recycle_after_items(None).recycle_above_memory(None),
        items,
    );
    api.clear_requests();
    let (default, default_started) = throughput(make(), items);
    println!("recycling off:     {off:>6.1} items/s, {off_started} processes started");
    println!("default recycling: {default:>6.1} items/s, {default_started} processes started");
    println!("cost of recycling: {:.1} %", (1.0 - default / off) * 100.0);
}
