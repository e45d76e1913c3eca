//! What sharing the throttle and the budget through Redis costs per item, beside the local
//! ones: items per second on an instant loopback mock API (Messages API backend, concurrency
//! 8), limits far above what is reached so nothing waits, and Redis's own count of the
//! commands it ran (`INFO stats`, `total_commands_processed`) per item. A `redis-server` of
//! the bench's own is started on a free loopback port (`REDIS_SERVER` or PATH).
//!
//! Run: `cargo bench --features redis --bench shared_throttle` (`SHARED_ITEMS=N`, default 2,000).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claude_rayon::prelude::*;
use claude_rayon::{Backend, Session, SessionBuilder, SharedBudget, Throttle};
use claude_rayon_mock_api::MockApi;
use rayon::prelude::*;

fn builder(api: &MockApi) -> SessionBuilder {
    Session::builder()
        .backend(Backend::MessagesApi)
        .api_key("sk-ant-bench")
        .base_url(api.url())
        .model("claude-haiku-4-5")
        .concurrency(8)
}

fn commands(connection: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(connection).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

fn run(name: &str, session: &Session, items: &[String]) -> f64 {
    let start = Instant::now();
    let ok = items
        .par_iter()
        .claude_map(session, |t| format!("Summarise:\n{t}"))
        .filter(|r| r.is_ok())
        .count();
    let elapsed = start.elapsed();
    assert_eq!(ok, items.len());
    let per_item = elapsed.as_secs_f64() * 1e6 / items.len() as f64;
    println!(
        "{name:<28} {:>8.0} items/s  {per_item:>7.1} µs/item (wall, concurrency 8)",
        items.len() as f64 / elapsed.as_secs_f64()
    );
    per_item
}

fn main() {
    let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(&binary)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (set REDIS_SERVER)");
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url.as_str()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut connection = loop {
        match client.get_connection() {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("redis-server did not start: {e}"),
        }
    };
    let n: usize = std::env::var("SHARED_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let items: Vec<String> = (0..n)
        .map(|i| format!("Ticket {i}: the export to spreadsheet stopped working after the update, and the finance team needs the monthly report by Friday; please advise."))
        .collect();
    let api = MockApi::start();
    api.set_recording(false);
    let limit = Some(10_000_000);

    let local = builder(&api)
        .throttle(Arc::new(Throttle::new(limit, None).unwrap()))
        .build()
        .unwrap();
    run("warm-up", &local, &items[..n.min(200)]);
    let mut local_times = Vec::new();
    let mut shared_times = Vec::new();
    let mut budget_times = Vec::new();
    let mut per_item_commands = (0.0, 0.0);
    for _ in 0..3 {
        local_times.push(run("local throttle", &local, &items));
        let shared = builder(&api)
            .throttle(Arc::new(
                Throttle::redis(&url, "bench", limit, None).unwrap(),
            ))
            .build()
            .unwrap();
        let before = commands(&mut connection);
        shared_times.push(run("Redis throttle", &shared, &items));
        per_item_commands.0 = (commands(&mut connection) - before - 1) as f64 / n as f64;
        let both = builder(&api)
            .throttle(Arc::new(
                Throttle::redis(&url, "bench", limit, None).unwrap(),
            ))
            .shared_budget(
                SharedBudget::redis(
                    &url,
                    &format!("bench-{}", Instant::now().elapsed().as_nanos()),
                    1e9,
                )
                .unwrap(),
            )
            .build()
            .unwrap();
        let before = commands(&mut connection);
        budget_times.push(run("Redis throttle + budget", &both, &items));
        per_item_commands.1 = (commands(&mut connection) - before - 1) as f64 / n as f64;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (l, s, b) = (
        median(&mut local_times),
        median(&mut shared_times),
        median(&mut budget_times),
    );
    println!("\nmedians of 3, {n} items: local {l:.1} µs/item, Redis throttle {s:.1} (+{:.1}), throttle + budget {b:.1} (+{:.1})", s - l, b - l);
    println!(
        "Redis commands per item: throttle {:.2}, throttle + budget {:.2}",
        per_item_commands.0, per_item_commands.1
    );
    let _ = server.kill();
    let _ = server.wait();
}
