//! The journal: a rerun takes every answer already written without a call, in every adaptor,
//! streams, the pipeline and `query`; keys follow the prompt and the settings; failures are
//! asked again; a torn or damaged tail is skipped; a second program is kept off.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use claude_rayon::pipeline::Pipeline;
use claude_rayon::prelude::*;
use claude_rayon::{Error, Journal, Response, Session};
use rayon::prelude::*;
use support::Fake;

fn journal_path(fake: &Fake) -> PathBuf {
    fake.dir.path().join("out/answers.jsonl")
}

/// `n` items with their answers: (item, text, cost, replayed).
fn map_run(
    session: &Session,
    journal: &Journal,
    items: &[String],
) -> Vec<(String, String, f64, bool)> {
    items
        .par_iter()
        .claude_map(session, |i| i.to_string())
        .with_journal(journal)
        .map(|r| {
            let (item, response) = r.unwrap();
            (
                item.clone(),
                response.text,
                response.cost_usd,
                response.replayed,
            )
        })
        .collect()
}

fn items(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("summarise document {i}")).collect()
}

#[test]
fn a_rerun_takes_every_answer_from_the_journal_without_a_call() {
    let fake = Fake::new();
    let path = journal_path(&fake);
    let items = items(6);
    let first = {
        let session = fake.builder().concurrency(3).build().unwrap();
        let journal = Journal::open(&path).unwrap();
        map_run(&session, &journal, &items)
    };
    assert!(first
        .iter()
        .all(|(_, _, cost, replayed)| *cost > 0.0 && !replayed));
    assert_eq!(fake.prompts().len(), 6);

    // A new session and a new journal handle, as a rerun of the program would have.
    let session = fake.builder().concurrency(3).build().unwrap();
    let journal = Journal::open(&path).unwrap();
    assert_eq!(journal.len(), 6);
    let again = map_run(&session, &journal, &items);
    assert_eq!(fake.prompts().len(), 6, "no call for an answered item");
    for (was, is) in first.iter().zip(&again) {
        assert_eq!(
            (&was.0, &was.1, was.2),
            (&is.0, &is.1, is.2),
            "the same answer and cost"
        );
        assert!(is.3, "marked as replayed");
    }
    let stats = session.stats();
    assert_eq!((stats.succeeded, stats.replayed, stats.requests), (6, 6, 0));
    assert_eq!(stats.cost_usd, 0.0, "nothing paid this run");
}

#[test]
fn a_changed_prompt_is_asked_again_and_only_it() {
    let fake = Fake::new();
    let path = journal_path(&fake);
    let mut items = items(5);
    let session = fake.builder().concurrency(2).build().unwrap();
    let journal = Journal::open(&path).unwrap();
    map_run(&session, &journal, &items);
    items[3].push_str(" (revised)");
    let again = map_run(&session, &journal, &items);
    assert_eq!(fake.prompts().len(), 6);
    assert_eq!(fake.prompts()[5].0, items[3]);
    let replayed: Vec<bool> = again.iter().map(|r| r.3).collect();
    assert_eq!(replayed, [true, true, true, false, true]);
}

#[test]
fn a_changed_setting_asks_everything_again() {
    let fake = Fake::new();
    let path = journal_path(&fake);
    let items = items(3);
    let journal = Journal::open(&path).unwrap();
    let sonnet = fake.builder().model("sonnet").build().unwrap();
    map_run(&sonnet, &journal, &items);
    map_run(&sonnet, &journal, &items);
    assert_eq!(fake.prompts().len(), 3);
    let haiku = fake.builder().model("haiku").build().unwrap();
    assert!(map_run(&haiku, &journal, &items).iter().all(|r| !r.3));
    let appended = fake
        .builder()
        .model("sonnet")
        .append_system_prompt("Answer in French.")
        .build()
        .unwrap();
    assert!(map_run(&appended, &journal, &items).iter().all(|r| !r.3));
    assert_eq!(fake.prompts().len(), 9);
}

#[test]
fn failures_are_recorded_for_inspection_and_asked_again() {
    let fake = Fake::new();
    let path = journal_path(&fake);
    let session = fake.builder().max_retries(0).build().unwrap();
    let journal = Journal::open(&path).unwrap();
    let prompts = ["[[sim:fail-times=flaky,1,400]] flaky item", "steady item"];
    let first: Vec<_> = prompts
        .par_iter()
        .claude_map(&session, |p| *p)
        .with_journal(&journal)
        .collect();
    assert_eq!(first[0].as_ref().unwrap_err().error.api_status(), Some(400));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"error\":\"API error (status 400)")),
        "{text}"
    );
    let again: Vec<_> = prompts
        .par_iter()
        .claude_map(&session, |p| *p)
        .with_journal(&journal)
        .collect();
    let (_, flaky) = again[0].as_ref().unwrap();
    assert!(
        !flaky.replayed,
        "a failure is never replayed: asked again, and answered now"
    );
    assert!(again[1].as_ref().unwrap().1.replayed);
    assert_eq!(fake.prompts().len(), 3);
}

/// Run by `a_second_program_is_kept_off_the_journal` in a child copy of this test binary.
const CHILD_JOURNAL: &str = "CLAUDE_RAYON_TEST_CHILD_JOURNAL";

#[test]
fn a_second_program_is_kept_off_the_journal() {
    if let Ok(path) = std::env::var(CHILD_JOURNAL) {
        match Journal::open(&path) {
            Err(Error::JournalLocked { .. }) => println!("\nCHILD LOCKED"),
            other => println!("\nCHILD {other:?}"),
        }
        return;
    }
    let fake = Fake::new();
    let path = journal_path(&fake);
    let held = Journal::open(&path).unwrap();
    // A second open in this program is refused, and must not weaken the first's lock (a
    // record lock is released by closing any descriptor of its file).
    assert!(matches!(
        Journal::open(&path),
        Err(Error::JournalLocked { .. })
    ));
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_second_program_is_kept_off_the_journal",
            "--nocapture",
        ])
        .env(CHILD_JOURNAL, &path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    assert!(out.contains("CHILD LOCKED"), "{out}");
    // In this program too, and through the session builder, with a clear error.
    let err = fake.builder().journal(&path).build().unwrap_err();
    assert!(matches!(err, Error::JournalLocked { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(held);
    let session = fake.builder().journal(&path).build().unwrap();
    session.query("now it is ours").unwrap();
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_torn_or_damaged_tail_is_skipped_and_never_replayed() {
    let fake = Fake::new();
    let path = journal_path(&fake);
    let items = items(4);
    let session = fake.builder().concurrency(2).build().unwrap();
    map_run(&session, &Journal::open(&path).unwrap(), &items);
    assert_eq!(lines(&path).len(), 5, "a header and four records");

    // Killed while writing a fifth record: a torn last line.
    let whole = std::fs::read(&path).unwrap();
    let mut torn = whole.clone();
    torn.extend_from_slice(br#"{"crc":"0badf00d","r":{"key":"ab"#);
    std::fs::write(&path, &torn).unwrap();
    let journal = Journal::open(&path).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        whole,
        "the torn line is cut off"
    );
    assert!(map_run(&session, &journal, &items).iter().all(|r| r.3));
    drop(journal);
    assert_eq!(fake.prompts().len(), 4);

    // A damaged record (one byte of its answer changed): that item is asked again.
    let mut damaged = lines(&path);
    let victim = damaged
        .iter()
        .position(|l| l.contains("summarise document 2"))
        .expect("the fake echoes the prompt into the answer");
    damaged[victim] = damaged[victim].replace("document 2", "document 9");
    std::fs::write(&path, damaged.join("\n") + "\n").unwrap();
    let journal = Journal::open(&path).unwrap();
    let again = map_run(&session, &journal, &items);
    assert_eq!(
        again[2].1, "echo: summarise document 2",
        "never the damaged text"
    );
    assert!(!again[2].3);
    assert_eq!(fake.prompts().len(), 5);
    // Every line of the file is still plain JSON, for jq and friends.
    for line in lines(&path) {
        serde_json::from_str::<serde_json::Value>(&line).unwrap();
    }
}

#[test]
fn filter_and_group_by_replay_their_verdicts_and_categories() {
    let fake = Fake::new();
    let journal = Journal::open(journal_path(&fake)).unwrap();
    let session = fake.builder().concurrency(2).build().unwrap();
    let tickets = ["[[sim:reply=yes]] crash", "[[sim:reply=no]] question"];
    let filter = || -> Vec<&str> {
        tickets
            .par_iter()
            .claude_filter(&session, |t| format!("Is this a bug? {t}"))
            .with_journal(&journal)
            .map(|r| *r.unwrap())
            .collect()
    };
    assert_eq!(filter(), ["[[sim:reply=yes]] crash"]);
    assert_eq!(filter(), ["[[sim:reply=yes]] crash"]);
    let sorted = ["[[sim:reply=bug]] a", "[[sim:reply=feature]] b"];
    let group = || {
        sorted
            .par_iter()
            .claude_group_by(&session, ["bug", "feature"], |t| t.to_string())
            .with_journal(&journal)
            .groups()
    };
    let first = group();
    let second = group();
    assert_eq!(first.get("bug"), second.get("bug"));
    assert_eq!(second.get("feature").unwrap(), [&"[[sim:reply=feature]] b"]);
    assert_eq!(
        fake.prompts().len(),
        4,
        "one call per item, the first time only: {:#?}",
        fake.prompts()
    );
    assert_eq!(session.stats().replayed, 4);
}

#[test]
fn streams_windows_the_pipeline_and_query_replay_too() {
    let fake = Fake::new();
    let path = journal_path(&fake);
    let session = fake
        .builder()
        .concurrency(2)
        .journal(&path)
        .build()
        .unwrap();
    let lines = || (0..5).map(|i| format!("log line {i}"));
    let stream = || -> Vec<Response> {
        lines()
            .claude_stream_map(&session, |l| l.clone())
            .map(|r| r.unwrap().1)
            .collect()
    };
    let windows = || -> Vec<Response> {
        lines()
            .claude_windows(&session, 3, 2, |w| w.join("\n"))
            .map(|r| r.unwrap().1)
            .collect()
    };
    let pipeline = || {
        let answers = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&answers);
        Pipeline::builder()
            .source(lines())
            .session(&session)
            .prompt(|l: &String| format!("pipeline {l}"))
            .batch_size(2)
            .batch_timeout(Duration::from_millis(20))
            .on_batch(move |batch| sink.lock().extend(batch.items.into_iter().map(|(_, r)| r)))
            .run()
            .unwrap();
        let answers = answers.lock().clone();
        answers
    };
    let first = (
        stream(),
        windows(),
        pipeline(),
        session.query("one query").unwrap(),
    );
    let calls = fake.prompts().len();
    assert_eq!(
        calls,
        5 + 2 + 5 + 1,
        "lines, windows (0-2 and 2-4), pipeline items, the query"
    );
    let second = (
        stream(),
        windows(),
        pipeline(),
        session.query("one query").unwrap(),
    );
    assert_eq!(fake.prompts().len(), calls, "nothing asked again");
    assert!(second
        .0
        .iter()
        .chain(&second.1)
        .chain(&second.2)
        .all(|r| r.replayed));
    assert!(second.3.replayed);
    let texts = |r: &[Response]| r.iter().map(|r| r.text.clone()).collect::<Vec<_>>();
    assert_eq!(texts(&first.0), texts(&second.0));
    assert_eq!(texts(&first.1), texts(&second.1));
    assert_eq!(second.3.text, first.3.text);
}

#[test]
fn progress_counts_replayed_answers_apart() {
    let fake = Fake::new();
    let path = journal_path(&fake);
    let last = std::sync::Arc::new(parking_lot::Mutex::new(None));
    let seen = std::sync::Arc::clone(&last);
    let session = fake
        .builder()
        .journal(&path)
        .on_progress(move |p| {
            if p.finished {
                *seen.lock() = Some((p.done, p.replayed, p.cost_usd));
            }
        })
        .build()
        .unwrap();
    let run = || -> Vec<_> {
        (0..4)
            .into_par_iter()
            .claude_map(&session, |i| format!("item {i}"))
            .collect()
    };
    run();
    let (done, replayed, cost) = last.lock().take().unwrap();
    assert_eq!((done, replayed), (4, 0));
    assert!(cost > 0.0);
    run();
    assert_eq!(last.lock().take().unwrap(), (4, 4, 0.0));
}
