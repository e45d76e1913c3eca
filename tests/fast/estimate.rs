//! The cost estimate before a run (`Session::estimate`) against what the run then cost: on
//! the mock Messages API, which counts tokens as bytes / 4 as the estimate does, and on the
//! fake CLI. The bands asserted here are the accuracy README states.

use crate::support;

use std::time::Duration;

use claude_rayon::prelude::*;
use claude_rayon::{Backend, Estimate, OutputBasis, Session, SessionBuilder};
use rayon::prelude::*;
use support::mock_api::{MockApi, Reply};
use support::Fake;

fn api_builder(api: &MockApi) -> SessionBuilder {
    Session::builder()
        .backend(Backend::MessagesApi)
        .api_key("sk-ant-test-key-that-must-not-leak")
        .base_url(api.url())
        .model("claude-haiku-4-5")
        .retry_policy(support::quick_retries(0))
        .timeout(Duration::from_secs(30))
}

/// Tickets of different lengths, as a real batch has.
fn tickets(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| support::ticket(i, 300 + (i * 137) % 1500))
        .collect()
}

/// An answer of `tokens` tokens as the mock counts them (four characters a token).
fn answer_of(tokens: usize) -> String {
    "The customer was billed twice; refund one seat. "
        .chars()
        .cycle()
        .take(tokens * 4)
        .collect()
}

/// How far `estimate` is from `actual`, as a share of `actual`.
fn off_by(estimate: f64, actual: f64) -> f64 {
    (estimate - actual) / actual
}

/// Run `items` through `session` and return the estimate made before, and the cost after.
fn estimate_then_run(session: &Session, items: &[String], output_guess: u64) -> (Estimate, f64) {
    let prompt = |t: &String| format!("Summarise this support ticket in one line:\n{t}");
    let estimate = session
        .estimate(items.iter().map(prompt))
        .with_output_tokens(output_guess);
    let before = session.stats().cost_usd;
    let failed = items
        .par_iter()
        .claude_map(session, |t| prompt(t))
        .filter(Result::is_err)
        .count();
    assert_eq!(failed, 0);
    (estimate, session.stats().cost_usd - before)
}

#[test]
fn on_the_messages_api_the_estimate_is_within_a_few_percent_of_the_bill() {
    let api = MockApi::start();
    api.set_reply(|_| Reply::text(answer_of(120)));
    let items = tickets(60);

    // Prompts only.
    let session = api_builder(&api).concurrency(4).build().unwrap();
    let (estimate, actual) = estimate_then_run(&session, &items, 120);
    let plain = off_by(estimate.cost_usd, actual);
    eprintln!(
        "messages api, no instructions: estimate ${:.6}, billed ${actual:.6} ({:+.2}%)\n{estimate}",
        estimate.cost_usd,
        plain * 100.0
    );
    assert!(plain.abs() < 0.05, "{plain}");
    assert_eq!(estimate.max_tokens_per_call, Some(8192));
    assert!(estimate.max_cost_usd.unwrap() > estimate.cost_usd * 10.0);

    // Long shared instructions: one cache write, then reads at a tenth.
    let api = MockApi::start();
    api.set_reply(|_| Reply::text(answer_of(120)));
    let instructions = format!(
        "You triage support tickets for a payments company. {}",
        support::ticket(99, 8_000)
    );
    let session = api_builder(&api)
        .system_prompt(instructions)
        .concurrency(4)
        .build()
        .unwrap();
    let (estimate, actual) = estimate_then_run(&session, &items, 120);
    let cached = off_by(estimate.cost_usd, actual);
    eprintln!(
        "messages api, 8 KB instructions: estimate ${:.6}, billed ${actual:.6} ({:+.2}%)\n{estimate}",
        estimate.cost_usd,
        cached * 100.0
    );
    assert!(estimate.cache_read_tokens > 0 && estimate.cache_write_tokens > 0);
    assert!(cached.abs() < 0.05, "{cached}");

    // Without a guess, the next estimate learns the output from the answers so far.
    let learned = session.estimate(items.iter().map(|t| format!("Summarise:\n{t}")));
    assert_eq!(learned.output_basis, OutputBasis::AnswersSoFar);
    assert_eq!(learned.output_tokens_per_item, 120);
}

#[test]
fn on_the_fake_cli_the_estimate_covers_the_bill() {
    // The fake CLI bills its answers at $3 / $15 per million tokens (Sonnet's list price),
    // counting the prompt and the answer (an echo of the prompt) but no request framing:
    // the estimate, which adds the CLI's framing (about 300 tokens), is above it.
    let fake = Fake::new();
    let session = fake
        .builder()
        .model("claude-sonnet-4-5")
        .concurrency(4)
        .build()
        .unwrap();
    let items = tickets(40);
    let average_tokens = items.iter().map(|t| t.len() as u64 / 4).sum::<u64>() / 40;
    let (estimate, actual) = estimate_then_run(&session, &items, average_tokens + 16);
    let off = off_by(estimate.cost_usd, actual);
    eprintln!(
        "fake CLI: estimate ${:.6}, billed ${actual:.6} ({:+.2}%)\n{estimate}",
        estimate.cost_usd,
        off * 100.0
    );
    assert!((0.0..0.6).contains(&off), "{off}");
    assert_eq!(estimate.max_tokens_per_call, None);
}

#[test]
fn answers_in_the_journal_are_free_in_the_estimate() {
    let fake = Fake::new();
    let journal = fake.dir.path().join("journal.jsonl");
    let session = fake
        .builder()
        .model("haiku")
        .journal(&journal)
        .build()
        .unwrap();
    let items = tickets(10);
    let prompt = |t: &String| format!("Summarise:\n{t}");
    let before = session.estimate(items.iter().map(prompt));
    assert_eq!((before.items, before.already_answered), (10, 0));
    assert_eq!(before.output_basis, OutputBasis::Allowance);
    let _: Vec<_> = items[..4]
        .par_iter()
        .claude_map(&session, |t| prompt(t))
        .collect();
    let after = session
        .estimate(items.iter().map(prompt))
        .with_output_tokens(50);
    assert_eq!((after.items, after.already_answered), (10, 4));
    assert_eq!(after.output_tokens, 6 * 50);
    assert!(after.input_tokens < before.input_tokens);
    assert!(
        after
            .to_string()
            .contains("(4 already in the journal, free; 6 to ask)"),
        "{after}"
    );
}
