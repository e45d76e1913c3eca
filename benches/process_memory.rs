//! What a CLI process holds: first the resident memory (VmRSS) and its peak (VmHWM) of 1 and
//! of 4 fresh processes after a few items each (docs/tuning.md, "Memory"); then the resident
//! memory of one warm process over 2,000 items, sampled from `/proc/PID/status` every 100
//! items; then the throughput of 1,000 items with a recycle every 100 items and with
//! recycling off. Real CLI only (the figures are the CLI's), against the loopback mock
//! Messages API.
//!
//! Run: `CLAUDE_CODE_BIN=/path/to/claude cargo bench --bench process_memory`
//! (`PROCESS_MEMORY_FRESH_ROUNDS=N` rounds of the first part, 0 to skip it;
//! `PROCESS_MEMORY_ITEMS=N` items in the second, 0 to skip it; `PROCESS_MEMORY_ROUNDS=N`
//! rounds in the third, 0 to skip it).

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
    status_bytes(pid, "VmRSS:")
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `processes` fresh processes, `3 × processes` items among them, then each one's resident
/// memory and its peak so far, in MB (10^6 bytes, as docs/tuning.md gives them).
fn fresh_processes(make: &dyn Fn() -> SessionBuilder, cli: &Path, processes: usize) {
    use claude_rayon::prelude::*;
    use rayon::prelude::*;
    let session = make().concurrency(processes).build().expect("session");
    let results: Vec<_> = (0..3 * processes)
        .into_par_iter()
        .claude_map(&session, |&i| ticket(i))
        .collect();
    assert!(results.iter().all(Result::is_ok), "every item must succeed");
    let pids = cli_children(cli);
    let megabytes = |field: &str| -> Vec<String> {
        pids.iter()
            .map(|&pid| {
                let bytes = status_bytes(pid, field).expect("a /proc status field");
                format!("{:.0}", bytes as f64 / 1e6)
            })
            .collect()
    };
    println!(
        "{processes} processes ({} live): resident MB {}; peak (VmHWM) MB {}",
        pids.len(),
        megabytes("VmRSS:").join(" "),
        megabytes("VmHWM:").join(" ")
    );
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

/// CPU time (user + system) `pid` has used, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime); `rest` starts at field 3.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system setting.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One process, `items` items one after another, recycling off: RSS and the CLI's CPU time
/// every 100 items.
fn memory_over_items(make: &dyn Fn() -> SessionBuilder, cli: &Path, items: usize) {
    let session = make()
        .concurrency(1)
        .cli(|c| c.recycle_after_items(None).recycle_above_memory(None))
        .build()
        .expect("session");
    println!("\none warm process, {items} items in a row, recycling off");
    // CPU per item is the CLI's own, so it does not depend on what else the machine runs.
    println!(
        "{:>6}  {:>8}  {:>10}  {:>16}",
        "items", "RSS MB", "items/s", "CLI CPU ms/item"
    );
    let started = Instant::now();
    let mut pid = None;
    let mut samples = Vec::new();
    let mut since = Instant::now();
    let mut cpu_before = 0;
    let mut cpu_first = None;
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
            let cpu = cpu_ticks(pids[0]).expect("CPU time");
            let cpu_ms = if done == 1 {
                cpu_first = Some(cpu);
                0.0
            } else {
                (cpu - cpu_before) as f64 * 1000.0 / ticks_per_second() / 100.0
            };
            cpu_before = cpu;
            println!("{done:>6}  {:>8.1}  {rate:>10.1}  {cpu_ms:>16.1}", mb(rss));
            samples.push((done, rss));
        }
    }
    let elapsed = started.elapsed();
    if let (Some(first), Some(pid)) = (cpu_first, pid) {
        let total = cpu_ticks(pid).unwrap_or(first) - first;
        println!(
            "CLI CPU after its first item: {:.1} ms per item on average",
            total as f64 * 1000.0 / ticks_per_second() / (items - 1) as f64
        );
    }
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

/// Seconds for `items` items one after another on one process at a time.
fn timed(builder: SessionBuilder, items: usize) -> (f64, u64) {
    use claude_rayon::prelude::*;
    use rayon::prelude::*;
    let session = builder.concurrency(1).build().expect("session");
    let started = Instant::now();
    let results: Vec<_> = (0..items)
        .into_par_iter()
        .claude_map(&session, |&i| ticket(i))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(results.iter().all(Result::is_ok), "every item must succeed");
    (elapsed, session.stats().processes_started)
}

fn main() {
    let Some(cli) = common::real_cli() else {
        println!("process_memory: skipped (set CLAUDE_CODE_BIN to the claude executable)");
        return;
    };
    let items = env_usize("PROCESS_MEMORY_ITEMS", 2000);
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
    let fresh_rounds = env_usize("PROCESS_MEMORY_FRESH_ROUNDS", 3);
    if fresh_rounds > 0 {
        println!("\nfresh processes, 3 items a process; {fresh_rounds} rounds");
    }
    for _ in 0..fresh_rounds {
        for processes in [1, 4] {
            fresh_processes(&make, &cli, processes);
            api.clear_requests();
        }
    }
    if items > 0 {
        memory_over_items(&make, &cli, items);
        api.clear_requests();
    }

    // What one recycle costs: the same items with a process every `every` items and with
    // one process, in alternating rounds so that the machine's other load falls on both
    // alike. The default's cost follows from it (one recycle per default-many items).
    let rounds = env_usize("PROCESS_MEMORY_ROUNDS", 3);
    let (every, batch) = (100, 1000);
    println!(
        "\ncost of a recycle: {batch} items on one process at a time, recycled every {every} \
         items against never, {rounds} alternating rounds"
    );
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (seconds, started) = timed(
            make().cli(|c| c.recycle_after_items(None).recycle_above_memory(None)),
            batch,
        );
        println!("round {round}: never     {seconds:>6.2} s, {started} processes started");
        off.push(seconds);
        api.clear_requests();
        let (seconds, started) = timed(
            make().cli(|c| {
                c.recycle_after_items(Some(every as u64))
                    .recycle_above_memory(None)
            }),
            batch,
        );
        println!("round {round}: every {every} {seconds:>6.2} s, {started} processes started");
        on.push(seconds);
        api.clear_requests();
    }
    if rounds > 0 {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (off, on) = (median(off), median(on));
        let recycles = (batch / every - 1) as f64;
        let per_recycle = (on - off) / recycles;
        let per_item = off / batch as f64;
        let default = default_recycle_after_items();
        println!(
            "median: never {off:.2} s, every {every} {on:.2} s: {:.2} s per recycle, {:.1} ms \
             per item; at the default ({default} items) recycling costs {:.2} % of throughput",
            per_recycle,
            per_item * 1000.0,
            per_recycle / (default as f64 * per_item) * 100.0
        );
    }
}

/// The builder's default, read from its `Debug` output (so that it cannot drift from it).
fn default_recycle_after_items() -> u64 {
    let debug = format!("{:?}", claude_rayon::Session::builder());
    let (_, rest) = debug
        .split_once("recycle_after_items: Some(")
        .expect("a default for recycle_after_items");
    rest.split(')').next().unwrap().parse().unwrap()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
