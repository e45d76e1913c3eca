//! Real tier: a run killed with `-9` in the middle and run again pays only for what was not
//! answered. The host is this test binary re-run as a child process; the mock API counts the
//! calls the rerun makes.

use crate::support;

use std::io::BufRead;
use std::io::BufReader;
use std::process::{Command, Stdio};
use std::time::Duration;

use claude_rayon::prelude::*;
use claude_rayon::{Journal, SessionBuilder};
use rayon::prelude::*;
use support::mock_api::{MockApi, Reply};
use support::{builder_against, real_cli, wait_until, Real};

const TEST_NAME: &str = "a_run_killed_mid_way_pays_only_for_the_rest_on_rerun";
const CHILD_HOME: &str = "CLAUDE_RAYON_TEST_JOURNAL_HOME";
const CHILD_JOURNAL: &str = "CLAUDE_RAYON_TEST_JOURNAL_PATH";
const ITEMS: usize = 16;

fn prompts() -> Vec<String> {
    (0..ITEMS).map(|i| format!("journal item {i}")).collect()
}

/// What the mock answers: one text per prompt, the same in every run.
fn reply_to(prompt: &str) -> String {
    format!("the answer to «{prompt}»")
}

fn settings(builder: SessionBuilder) -> SessionBuilder {
    builder
        .model("claude-sonnet-4-5")
        .cli(|c| c.cli_max_retries(Some(0)))
        .timeout(Duration::from_secs(60))
        .concurrency(2)
}

/// The host: every answer takes 400 ms at the mock, so the parent can kill it mid-run.
fn run_host(home: &str, journal: &str) -> ! {
    let api = MockApi::start();
    api.set_reply(|p| {
        Reply::After(
            Duration::from_millis(400),
            Box::new(Reply::text(reply_to(p))),
        )
    });
    let cli = real_cli(TEST_NAME).expect("the parent found the CLI");
    let session = settings(builder_against(&cli, &api, std::path::Path::new(home)))
        .journal(journal)
        .build()
        .unwrap();
    let _: Vec<_> = prompts()
        .par_iter()
        .claude_map(&session, |p| p.to_string())
        .collect();
    println!("\nHOST FINISHED");
    std::process::exit(0);
}

fn texts(results: Vec<claude_rayon::MapResult<&String>>) -> Vec<String> {
    results.into_iter().map(|r| r.unwrap().1.text).collect()
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_run_killed_mid_way_pays_only_for_the_rest_on_rerun() {
    if let (Ok(home), Ok(journal)) = (std::env::var(CHILD_HOME), std::env::var(CHILD_JOURNAL)) {
        run_host(&home, &journal);
    }
    let Some(real) = Real::start(TEST_NAME) else {
        return;
    };
    let journal_path = real.home.path().join("out/answers.jsonl");
    let mut host = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &support::this_test(module_path!(), TEST_NAME),
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_HOME, real.home.path())
        .env(CHILD_JOURNAL, &journal_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The harness's first line says whether the host runs this test at all; the rest is
    // drained so that the host never blocks on a full pipe.
    let mut stdout = BufReader::new(host.stdout.take().unwrap());
    let mut first = String::new();
    while first.trim().is_empty() && stdout.read_line(&mut first).unwrap() > 0 {}
    support::assert_ran_one_test(&first);
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    // Killed once a few answers are in the journal (a header line, then one per answer).
    let answered_lines = || {
        std::fs::read_to_string(&journal_path)
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0)
    };
    wait_until("a few answers written", Duration::from_secs(120), || {
        answered_lines() >= 4
    });
    // SAFETY: signals the child process this test started.
    unsafe {
        libc::kill(host.id() as i32, libc::SIGKILL);
    }
    let _ = host.wait();

    let journal = Journal::open(&journal_path).unwrap();
    let answered = journal.len();
    assert!(
        (4..ITEMS).contains(&answered),
        "killed mid-way: {answered} of {ITEMS} answered"
    );

    // The rerun, against a mock that counts its calls.
    real.api.set_reply(|p| Reply::text(reply_to(p)));
    let session = settings(real.bare_builder()).build().unwrap();
    let prompts = prompts();
    let rerun = texts(
        prompts
            .par_iter()
            .claude_map(&session, |p| p.to_string())
            .with_journal(&journal)
            .collect(),
    );
    assert_eq!(
        real.api.request_count(),
        ITEMS - answered,
        "exactly the unanswered items were asked"
    );
    assert_eq!(session.stats().replayed as usize, answered);

    // What an uninterrupted run gives (no journal).
    let uninterrupted = texts(
        prompts
            .par_iter()
            .claude_map(&session, |p| p.to_string())
            .collect(),
    );
    assert_eq!(rerun, uninterrupted);
    for (prompt, text) in prompts.iter().zip(&rerun) {
        assert_eq!(text, &reply_to(prompt), "every item has its own answer");
    }
}

/// The model the CLI takes from outside the builder (the user's settings file, which a sealed
/// process still reads, its `env` block, the environment, an extra argument) is in the key:
/// a change of model asks again, and the mock sees the new model asked.
#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_model_chosen_outside_the_builder_asks_again() {
    let Some(real) = Real::start("a_model_chosen_outside_the_builder_asks_again") else {
        return;
    };
    real.api.set_reply(|p| Reply::text(reply_to(p)));
    let journal_path = real.home.path().join("out/answers.jsonl");
    // The mock's environment points the CLI's configuration folder here.
    let settings = real.home.path().join(".claude/settings.json");
    std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
    let prompt = "Summarise the quarterly supplier review for the purchasing board in two lines.";
    // (replayed, model the mock saw for a call made now) for a session set up by `more`.
    let ask = |more: &dyn Fn(SessionBuilder) -> SessionBuilder| {
        let before = real.api.request_count();
        let session = more(real.bare_builder())
            .cli(|c| c.cwd(real.cwd.path()).cli_max_retries(Some(0)))
            .timeout(Duration::from_secs(60))
            .concurrency(1)
            .journal(&journal_path)
            .build()
            .unwrap();
        let answer = session.query(prompt).unwrap();
        assert_eq!(answer.text, reply_to(prompt));
        let called = real.api.requests()[before..]
            .iter()
            .find(|r| r.prompt == prompt)
            .map(|r| r.model.clone());
        (answer.replayed, called)
    };
    let plain = |b| b;
    let model = |name: &str| Some(name.to_string());

    std::fs::write(&settings, r#"{"model": "claude-haiku-4-5"}"#).unwrap();
    assert_eq!(ask(&plain), (false, model("claude-haiku-4-5")));
    assert_eq!(ask(&plain), (true, None), "the same model replays");

    std::fs::write(&settings, r#"{"model": "claude-sonnet-4-5"}"#).unwrap();
    assert_eq!(ask(&plain), (false, model("claude-sonnet-4-5")));

    std::fs::write(
        &settings,
        r#"{"env": {"ANTHROPIC_MODEL": "claude-opus-4-5"}}"#,
    )
    .unwrap();
    assert_eq!(ask(&plain), (false, model("claude-opus-4-5")));

    std::fs::remove_file(&settings).unwrap();
    let by_env = |b: SessionBuilder| b.cli(|c| c.env("ANTHROPIC_MODEL", "claude-sonnet-4-6"));
    assert_eq!(ask(&by_env), (false, model("claude-sonnet-4-6")));
    assert_eq!(ask(&by_env), (true, None));

    let by_arg = |b: SessionBuilder| b.cli(|c| c.arg("--model").arg("claude-opus-4-6"));
    assert_eq!(ask(&by_arg), (false, model("claude-opus-4-6")));
}
