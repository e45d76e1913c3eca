//! What shared instructions cost per item, with the prompt cache warmed before fanning out
//! and without, side by side in one run: the real CLI against the tests' mock Messages API,
//! which emulates the cache and begins every answer 500 ms after the request (a first token's
//! usual delay). Cost at Sonnet's list prices (per million tokens: input 3 USD, cache write
//! 3.75, cache read 0.30, output 15).
//!
//! Run: `CLAUDE_CODE_BIN=/path/to/claude cargo bench --bench cache`

mod common;

use std::time::Duration;

use claude_rayon::prelude::*;
use claude_rayon::Usage;
use claude_rayon_mock_api::{MockApi, Reply};
use rayon::prelude::*;

const ITEMS: usize = 40;
const CONCURRENCY: usize = 8;

fn list_price_usd(u: &Usage) -> f64 {
    (u.input_tokens as f64 * 3.0
        + u.cache_creation_input_tokens as f64 * 3.75
        + u.cache_read_input_tokens as f64 * 0.30
        + u.output_tokens as f64 * 15.0)
        / 1e6
}

/// (cost per item, share of input read from the cache, wall seconds), on a cold cache.
fn run(cli: &std::path::Path, instruction: &str, warm: bool) -> (f64, f64, f64) {
    let api = MockApi::start();
    api.set_reply(|p| {
        Reply::After(
            Duration::from_millis(500),
            Box::new(Reply::text(format!("ok: {p}"))),
        )
    });
    let home = tempfile::tempdir().unwrap();
    let env = api.cli_env(home.path());
    let session = common::real_builder(cli, &env, claude_rayon_mock_api::CLI_ENV_REMOVE)
        .concurrency(CONCURRENCY)
        .cli(|c| c.max_starting_processes(CONCURRENCY))
        .append_system_prompt(instruction)
        .warm_cache(warm)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let results: Vec<_> = (0..ITEMS)
        .into_par_iter()
        .claude_map(&session, |i| format!("grade answer {i}"))
        .collect();
    let wall = started.elapsed().as_secs_f64();
    assert!(results.iter().all(Result::is_ok));
    let stats = session.stats();
    (
        list_price_usd(&stats.usage) / ITEMS as f64,
        stats.cache_read_share(),
        wall,
    )
}

fn main() {
    let Some(cli) = common::real_cli() else {
        println!("cache: skipped (set CLAUDE_CODE_BIN to the claude executable)");
        return;
    };
    println!(
        "{ITEMS} items, concurrency {CONCURRENCY}, Sonnet list prices, answers begin after 500 ms"
    );
    println!("instruction   warm-up  cost/item USD  read share  wall s");
    for tokens in [1_500usize, 3_000, 8_000] {
        let instruction =
            "Grade each answer for accuracy, clarity and tone. ".repeat(tokens * 4 / 51);
        let cold = run(&cli, &instruction, false);
        let warm = run(&cli, &instruction, true);
        for (label, (cost, share, wall)) in [("off", cold), ("on", warm)] {
            println!("{tokens:>6} tok   {label:>7}  {cost:>13.6}  {share:>10.2}  {wall:>6.1}");
        }
        println!("              ratio on/off: {:.2}", warm.0 / cold.0);
    }
}
