//! The Messages API backend beside the CLI backend, in one run, against a loopback mock API
//! that runs in a process of its own (so this program's memory and CPU are the library's):
//!
//! 1. Items per second and CPU per item (this program and its children: the CLI processes)
//!    at concurrency 2, 8 and 64 on an instant API; each backend's runs alternate, three
//!    rounds, medians quoted. The CLI backend needs `CLAUDE_CODE_BIN`; at concurrency 64 it is
//!    left out unless `API_VS_CLI_CLI64=1` (64 processes hold about 16 GB and take over a
//!    minute to start on 2 cores).
//! 2. The whole program's resident memory with 256 requests in flight on the API backend
//!    (a 3 s API, 256 items at concurrency 256), sampled every 50 ms, in a fresh process.
//! 3. 200 items at 3 s latency, concurrency 32, on the API backend: the wall time against
//!    the fluid bound (200 × 3 s / 32 = 18.75 s) and the bound of whole rounds
//!    (⌈200 / 32⌉ × 3 s = 21 s: a slot answers one item at a time).
//!
//! Run: `CLAUDE_CODE_BIN=/path/to/claude cargo bench --bench api_vs_cli`
//! (`API_VS_CLI_ITEMS=N` items per API run, default 2,000).

mod common;

use common::MockProcess;

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claude_rayon::prelude::*;
use claude_rayon::{Backend, Session, SessionBuilder};
use claude_rayon_mock_api::{MockApi, Reply};
use rayon::prelude::*;

const SERVE: &str = "--serve-mock-api";
const PROBE: &str = "--probe-memory";

/// Serve the mock until stdin ends (the parent closed it, or died).
fn serve(latency_ms: u64) {
    let api = MockApi::start();
    api.set_cache_min_tokens(usize::MAX);
    let latency = Duration::from_millis(latency_ms);
    if !latency.is_zero() {
        api.set_reply(move |prompt| {
            Reply::After(latency, Box::new(Reply::text(format!("echo: {prompt}"))))
        });
    }
    println!("{}", api.url());
    std::io::stdout().flush().unwrap();
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {
        sink.clear();
    }
}

fn api_builder(url: &str) -> SessionBuilder {
    Session::builder()
        .backend(Backend::MessagesApi)
        .api_key("sk-ant-bench")
        .base_url(url)
        .model("claude-sonnet-4-5")
        .timeout(Duration::from_secs(120))
}

fn cpu_now() -> Duration {
    common::own_cpu_time() + common::children_cpu_time()
}

/// (items/s, CPU per item) for `items` items after `warm_up` untimed ones; the session is
/// dropped (its processes reaped) before the CPU is read.
fn run(builder: SessionBuilder, items: usize, warm_up: usize) -> (f64, Duration) {
    let session = builder.build().expect("session");
    let batch = |range: std::ops::Range<usize>| {
        let results: Vec<_> = range
            .into_par_iter()
            .claude_map(&session, |i| common::ticket(*i, 400))
            .collect();
        let failures = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(failures, 0, "every item must succeed in a benchmark");
    };
    batch(0..warm_up);
    let cpu = cpu_now();
    let started = Instant::now();
    batch(warm_up..warm_up + items);
    let took = started.elapsed();
    drop(session);
    let cpu = cpu_now().saturating_sub(cpu);
    (items as f64 / took.as_secs_f64(), cpu / items as u32)
}

/// The whole program's peak resident memory (VmRSS, sampled) with 256 requests in flight.
fn probe_memory(url: &str) {
    let rss = || -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let before = rss();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss());
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let session = api_builder(url).concurrency(256).build().unwrap();
    let started = Instant::now();
    let results: Vec<_> = (0..256usize)
        .into_par_iter()
        .claude_map(&session, |i| common::ticket(*i, 400))
        .collect();
    let took = started.elapsed();
    assert!(results.iter().all(Result::is_ok));
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    println!(
        "{} {} {:.2}",
        before / (1024 * 1024),
        peak / (1024 * 1024),
        took.as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == SERVE) {
        return serve(args[i + 1].parse().unwrap());
    }
    if let Some(i) = args.iter().position(|a| a == PROBE) {
        return probe_memory(&args[i + 1]);
    }
    let items: usize = std::env::var("API_VS_CLI_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let cli = common::real_cli();
    let cli64 = std::env::var_os("API_VS_CLI_CLI64").is_some();

    println!("1. instant mock API (its own process), items/s and CPU per item (this program and its children), 3 rounds, medians");
    let instant = MockProcess::start(SERVE, &["0".to_string()]);
    let home = tempfile::tempdir().unwrap();
    let cli_env = cli.as_ref().map(|_| {
        // The CLI's environment for the mock: the in-process helper gives it for an address.
        let probe = MockApi::start();
        let env = probe.cli_env(home.path());
        env.into_iter()
            .map(|(k, v)| {
                if k == "ANTHROPIC_BASE_URL" {
                    (k, instant.url.clone())
                } else {
                    (k, v)
                }
            })
            .collect::<Vec<_>>()
    });
    println!("concurrency  backend  items  items/s (min-max)      CPU/item   api/cli items/s  cli/api CPU");
    for concurrency in [2usize, 8, 64] {
        let mut api_rates = Vec::new();
        let mut api_cpu = Vec::new();
        let mut cli_rates = Vec::new();
        let mut cli_cpu = Vec::new();
        let cli_items = match concurrency {
            2 => 100,
            8 => 120,
            _ => 256,
        };
        for _round in 0..3 {
            let (rate, cpu) = run(
                api_builder(&instant.url).concurrency(concurrency),
                items,
                concurrency * 2,
            );
            api_rates.push(rate);
            api_cpu.push(cpu);
            if let (Some(cli), Some(env)) = (&cli, &cli_env) {
                if concurrency <= 8 || cli64 {
                    let builder =
                        common::real_builder(cli, env, claude_rayon_mock_api::CLI_ENV_REMOVE)
                            .concurrency(concurrency);
                    let (rate, cpu) = run(builder, cli_items, concurrency);
                    cli_rates.push(rate);
                    cli_cpu.push(cpu);
                }
            }
        }
        let line = |name: &str, n: usize, rates: &mut Vec<f64>, cpu: Vec<Duration>| {
            let min = rates.iter().cloned().fold(f64::MAX, f64::min);
            let max = rates.iter().cloned().fold(0.0, f64::max);
            let median = common::median_f64(rates);
            let cpu = common::median(cpu);
            println!(
                "{concurrency:>11}  {name:<7}  {n:>5}  {median:>8.1} ({min:.1}-{max:.1})  {:>8.2} ms",
                cpu.as_secs_f64() * 1000.0
            );
            (median, cpu)
        };
        let (api_rate, api_cpu) = line("api", items, &mut api_rates, api_cpu);
        if cli_rates.is_empty() {
            println!(
                "{concurrency:>11}  cli      (not run: {})",
                if cli.is_none() {
                    "set CLAUDE_CODE_BIN"
                } else {
                    "API_VS_CLI_CLI64=1 to run 64 CLI processes"
                }
            );
        } else {
            let (cli_rate, cli_cpu) = line("cli", cli_items, &mut cli_rates, cli_cpu);
            println!(
                "{concurrency:>11}  ratio                                           {:>6.1}x  {:>10.1}x",
                api_rate / cli_rate,
                cli_cpu.as_secs_f64() / api_cpu.as_secs_f64()
            );
        }
    }
    drop(instant);

    println!("\n2. the whole program's resident memory with 256 requests in flight (API backend, 3 s API, concurrency 256, a fresh process)");
    let slow = MockProcess::start(SERVE, &["3000".to_string()]);
    let probe = Command::new(std::env::current_exe().unwrap())
        .arg(PROBE)
        .arg(&slow.url)
        .output()
        .expect("run the memory probe");
    let text = String::from_utf8_lossy(&probe.stdout);
    let parts: Vec<&str> = text.split_whitespace().collect();
    if parts.len() == 3 {
        println!(
            "before the session {} MB, peak with 256 in flight {} MB, 256 items in {} s",
            parts[0], parts[1], parts[2]
        );
    } else {
        println!(
            "the probe failed: {text} {}",
            String::from_utf8_lossy(&probe.stderr)
        );
    }

    println!("\n3. 200 items at 3 s latency, concurrency 32 (API backend)");
    let mut walls = Vec::new();
    for _round in 0..3 {
        let session = api_builder(&slow.url).concurrency(32).build().unwrap();
        let started = Instant::now();
        let results: Vec<_> = (0..200usize)
            .into_par_iter()
            .claude_map(&session, |i| common::ticket(*i, 400))
            .collect();
        let took = started.elapsed();
        assert!(results.iter().all(Result::is_ok));
        walls.push(took);
    }
    let wall = common::median(walls.clone());
    println!(
        "wall {:.2} s (runs {}), fluid bound 18.75 s ({:+.1}%), whole-rounds bound 21 s ({:+.1}%)",
        wall.as_secs_f64(),
        walls
            .iter()
            .map(|w| format!("{:.2}", w.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        (wall.as_secs_f64() / 18.75 - 1.0) * 100.0,
        (wall.as_secs_f64() / 21.0 - 1.0) * 100.0
    );
}
