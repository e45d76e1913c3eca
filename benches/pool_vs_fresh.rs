//! Pooled warm processes versus a fresh process per item, same items, concurrency 2, 4 and 8,
//! in one run: on the fake CLI, then on the real CLI against a loopback mock Messages API
//! (when CLAUDE_CODE_BIN is set).
//!
//! Run: `CLAUDE_CODE_BIN=/path/to/claude cargo bench --bench pool_vs_fresh`

mod common;

use std::time::Instant;

use claude_rayon::prelude::*;
use claude_rayon::SessionBuilder;
use rayon::prelude::*;

/// Items per second for `items` items through `claude_map`, on a session that first ran
/// `warm_up` items (not timed). Returns (timed items/s, items/s including the warm-up).
fn run(builder: SessionBuilder, items: usize, warm_up: usize) -> (f64, f64) {
    let session = builder.build().expect("session");
    let started = Instant::now();
    let batch = |range: std::ops::Range<usize>| {
        let results: Vec<_> = range
            .into_par_iter()
            .claude_map(&session, |i| format!("item {i}"))
            .collect();
        let failures = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(failures, 0, "every item must succeed in a benchmark");
    };
    batch(0..warm_up);
    let timed = Instant::now();
    batch(warm_up..warm_up + items);
    let (timed, total) = (timed.elapsed(), started.elapsed());
    drop(session);
    (
        items as f64 / timed.as_secs_f64(),
        (items + warm_up) as f64 / total.as_secs_f64(),
    )
}

fn compare(label: &str, make: &dyn Fn() -> SessionBuilder, plan: &[(usize, usize)]) {
    println!("\n{label}");
    println!("pooled: warm processes (start-up excluded) and the whole batch (start-up included)");
    println!("concurrency  items  pooled warm/s  pooled whole/s  fresh/s  ratio warm  ratio whole");
    for &(concurrency, items) in plan {
        // One item per process first, so every process has started.
        let (warm, whole) = run(make().concurrency(concurrency), items, concurrency);
        let (fresh, _) = run(
            make()
                .concurrency(concurrency)
                .cli(|c| c.fresh_process_per_item(true)),
            items,
            0,
        );
        println!(
            "{concurrency:>11}  {items:>5}  {warm:>13.1}  {whole:>14.1}  {fresh:>7.1}  {:>9.1}x  {:>10.1}x",
            warm / fresh,
            whole / fresh
        );
    }
}

fn main() {
    compare(
        "fake CLI (claude-rayon-sim, instant answers)",
        &|| common::fake_builder(),
        &[(2, 400), (4, 400), (8, 400)],
    );
    let Some(cli) = common::real_cli() else {
        println!("\nreal CLI: skipped (set CLAUDE_CODE_BIN to the claude executable)");
        return;
    };
    let api = claude_rayon_mock_api::MockApi::start();
    let home = tempfile::tempdir().unwrap();
    let env = api.cli_env(home.path());
    let make = || common::real_builder(&cli, &env, claude_rayon_mock_api::CLI_ENV_REMOVE);
    compare(
        "real CLI 'claude' against an instant loopback mock API",
        &make,
        &[(2, 100), (4, 60), (8, 60)],
    );
}
