//! The journal: a rerun takes every answer already written without a call, in every adaptor,
//! streams, the pipeline and `query`; keys follow the prompt and the settings; failures are
//! asked again; a torn or damaged tail is skipped; a second program is kept off. On both
//! backends but for the tests of the journal file's lock and links (about the file, not what
//! answers) and of the CLI's own ways to choose a model (flags, environment, settings file).

use crate::{on_both_backends, support};

use std::path::{Path, PathBuf};
use std::time::Duration;

use claude_rayon::pipeline::Pipeline;
use claude_rayon::prelude::*;
use claude_rayon::{Error, Journal, Response, Session};
use rayon::prelude::*;
use support::backends::TestBackend;
use support::{quick_retries, Fake};

fn journal_path(dir: &Path) -> PathBuf {
    dir.join("out/answers.jsonl")
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

fn a_rerun_takes_every_answer_from_the_journal_without_a_call(b: &TestBackend) {
    let path = journal_path(b.dir());
    let items = items(6);
    let first = {
        let session = b.builder().concurrency(3).build().unwrap();
        let journal = Journal::open(&path).unwrap();
        map_run(&session, &journal, &items)
    };
    assert!(first
        .iter()
        .all(|(_, _, cost, replayed)| *cost > 0.0 && !replayed));
    assert_eq!(b.prompts_seen().len(), 6);

    // A new session and a new journal handle, as a rerun of the program would have.
    let session = b.builder().concurrency(3).build().unwrap();
    let journal = Journal::open(&path).unwrap();
    assert_eq!(journal.len(), 6);
    let again = map_run(&session, &journal, &items);
    assert_eq!(b.prompts_seen().len(), 6, "no call for an answered item");
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

fn a_changed_prompt_is_asked_again_and_only_it(b: &TestBackend) {
    let path = journal_path(b.dir());
    let mut items = items(5);
    let session = b.builder().concurrency(2).build().unwrap();
    let journal = Journal::open(&path).unwrap();
    map_run(&session, &journal, &items);
    items[3].push_str(" (revised)");
    let again = map_run(&session, &journal, &items);
    assert_eq!(b.prompts_seen().len(), 6);
    assert_eq!(b.prompts_seen()[5], items[3]);
    let replayed: Vec<bool> = again.iter().map(|r| r.3).collect();
    assert_eq!(replayed, [true, true, true, false, true]);
}

fn a_changed_setting_asks_everything_again(b: &TestBackend) {
    let path = journal_path(b.dir());
    let items = items(3);
    let journal = Journal::open(&path).unwrap();
    let sonnet = b.builder().model("sonnet").build().unwrap();
    map_run(&sonnet, &journal, &items);
    map_run(&sonnet, &journal, &items);
    assert_eq!(b.prompts_seen().len(), 3);
    let haiku = b.builder().model("haiku").build().unwrap();
    assert!(map_run(&haiku, &journal, &items).iter().all(|r| !r.3));
    let appended = b
        .builder()
        .model("sonnet")
        .append_system_prompt("Answer in French.")
        .build()
        .unwrap();
    assert!(map_run(&appended, &journal, &items).iter().all(|r| !r.3));
    assert_eq!(b.prompts_seen().len(), 9);
}

fn failures_are_recorded_for_inspection_and_asked_again(b: &TestBackend) {
    let path = journal_path(b.dir());
    let session = b.builder().retry_policy(quick_retries(0)).build().unwrap();
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
    assert_eq!(b.prompts_seen().len(), 3);
}

/// Run by the lock tests in a child copy of this test binary: the paths to open, one per
/// line; the child prints what each open gave.
const CHILD_JOURNAL: &str = "CLAUDE_RAYON_TEST_CHILD_JOURNAL";

/// In a child process (another program), open each of `paths` in turn and say what each
/// open gave: `LOCKED`, `OPENED` (then held until the child ends) or the error.
fn open_in_another_program(test: &str, paths: &[&Path]) -> Vec<String> {
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &support::this_test(module_path!(), test),
            "--nocapture",
        ])
        .env(CHILD_JOURNAL, list.join("\n"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    support::assert_ran_one_test(&out);
    out.lines()
        .filter_map(|l| l.strip_prefix("CHILD "))
        .map(str::to_string)
        .collect()
}

/// The child's side of [`open_in_another_program`]; true when this process is that child.
fn be_the_child() -> bool {
    let Ok(paths) = std::env::var(CHILD_JOURNAL) else {
        return false;
    };
    let mut held = Vec::new();
    for path in paths.lines() {
        match Journal::open(path) {
            Err(Error::JournalLocked { .. }) => println!("\nCHILD LOCKED"),
            Ok(journal) => {
                println!("\nCHILD OPENED");
                held.push(journal);
            }
            Err(other) => println!("\nCHILD {other}"),
        }
    }
    true
}

#[test]
fn a_second_program_is_kept_off_the_journal() {
    if be_the_child() {
        return;
    }
    let fake = Fake::new();
    let path = journal_path(fake.dir.path());
    let held = Journal::open(&path).unwrap();
    // A second open in this program is refused, and must not weaken the first's lock.
    assert!(matches!(
        Journal::open(&path),
        Err(Error::JournalLocked { .. })
    ));
    let seen = open_in_another_program("a_second_program_is_kept_off_the_journal", &[&path]);
    assert_eq!(seen, ["LOCKED"]);
    // In this program too, and through the session builder, with a clear error.
    let err = fake.builder().journal(&path).build().unwrap_err();
    assert!(matches!(err, Error::JournalLocked { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    // Reading the journal meanwhile (another descriptor of the file, opened and closed by
    // this program) does not release the lock.
    std::fs::read_to_string(&path).unwrap();
    let seen = open_in_another_program("a_second_program_is_kept_off_the_journal", &[&path]);
    assert_eq!(seen, ["LOCKED"]);
    drop(held);
    let session = fake.builder().journal(&path).build().unwrap();
    session.query("now it is ours").unwrap();
}

#[test]
fn every_path_to_the_journal_meets_its_lock() {
    const TEST: &str = "every_path_to_the_journal_meets_its_lock";
    if be_the_child() {
        return;
    }
    let fake = Fake::new();
    let path = journal_path(fake.dir.path());
    let hard_link = fake.dir.path().join("hard-link.jsonl");
    let linked_folder = fake.dir.path().join("linked-out");
    let held = Journal::open(&path).unwrap();
    std::fs::hard_link(&path, &hard_link).unwrap();
    std::os::unix::fs::symlink(path.parent().unwrap(), &linked_folder).unwrap();
    let through_folder = linked_folder.join("answers.jsonl");
    // Another program, by any path to the same file.
    let seen = open_in_another_program(TEST, &[&hard_link, &through_folder]);
    assert_eq!(seen, ["LOCKED", "LOCKED"]);
    // This program too.
    for other in [&hard_link, &through_folder] {
        assert!(
            matches!(Journal::open(other), Err(Error::JournalLocked { .. })),
            "{}",
            other.display()
        );
    }
    drop(held);
    // Free now: the other program takes it by the hard link, and then holds it against
    // this one's own path.
    let seen = open_in_another_program(TEST, &[&hard_link, &path]);
    assert_eq!(seen, ["OPENED", "LOCKED"]);
}

#[test]
fn a_symbolic_link_at_the_journals_path_is_never_followed() {
    let fake = Fake::new();
    let dir = fake.dir.path();
    // A dangling link: opening must not create the file it points to.
    let target = dir.join("elsewhere/planted.jsonl");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let link = dir.join("answers.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = Journal::open(&link).unwrap_err();
    assert!(matches!(err, Error::Journal { .. }), "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(!target.exists(), "a file was created where the link points");
    let err = fake.builder().journal(&link).build().unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    // A link to a real journal, held or not, is refused the same way.
    let real = dir.join("real.jsonl");
    drop(Journal::open(&real).unwrap());
    let to_real = dir.join("to-real.jsonl");
    std::os::unix::fs::symlink(&real, &to_real).unwrap();
    assert!(Journal::open(&to_real)
        .unwrap_err()
        .to_string()
        .contains("symbolic link"));
    // Nor is the folder's lock file of earlier versions made, or followed.
    assert!(!dir.join("answers.jsonl.lock").exists());
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn a_torn_or_damaged_tail_is_skipped_and_never_replayed(b: &TestBackend) {
    let path = journal_path(b.dir());
    let items = items(4);
    let session = b.builder().concurrency(2).build().unwrap();
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
    assert_eq!(b.prompts_seen().len(), 4);

    // A damaged record (one byte of its answer changed): that item is asked again.
    let mut damaged = lines(&path);
    let victim = damaged
        .iter()
        .position(|l| l.contains("summarise document 2"))
        .expect("the answer echoes the prompt");
    damaged[victim] = damaged[victim].replace("document 2", "document 9");
    std::fs::write(&path, damaged.join("\n") + "\n").unwrap();
    let journal = Journal::open(&path).unwrap();
    let again = map_run(&session, &journal, &items);
    assert_eq!(
        again[2].1, "echo: summarise document 2",
        "never the damaged text"
    );
    assert!(!again[2].3);
    assert_eq!(b.prompts_seen().len(), 5);
    // Every line of the file is still plain JSON, for jq and friends.
    for line in lines(&path) {
        serde_json::from_str::<serde_json::Value>(&line).unwrap();
    }
}

fn filter_and_group_by_replay_their_verdicts_and_categories(b: &TestBackend) {
    let journal = Journal::open(journal_path(b.dir())).unwrap();
    let session = b.builder().concurrency(2).build().unwrap();
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
        b.prompts_seen().len(),
        4,
        "one call per item, the first time only: {:#?}",
        b.prompts_seen()
    );
    assert_eq!(session.stats().replayed, 4);
}

fn streams_windows_the_pipeline_and_query_replay_too(b: &TestBackend) {
    let path = journal_path(b.dir());
    let session = b.builder().concurrency(2).journal(&path).build().unwrap();
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
        Pipeline::builder(&session)
            .source(lines())
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
    let calls = b.prompts_seen().len();
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
    assert_eq!(b.prompts_seen().len(), calls, "nothing asked again");
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

fn a_pipeline_keeps_its_answers_in_its_own_journal(b: &TestBackend) {
    let path = journal_path(b.dir());
    // No journal on the session: only the pipeline's own can replay.
    let session = b.builder().concurrency(2).build().unwrap();
    let journal = Journal::open(&path).unwrap();
    let tickets: Vec<String> = (0..4).map(|i| support::ticket(i, 400)).collect();
    let run = || {
        let answers = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&answers);
        Pipeline::builder(&session)
            .with_journal(&journal)
            .source(tickets.clone().into_iter())
            .prompt(|ticket: &String| format!("Urgency of this ticket, in one word: {ticket}"))
            .batch_size(2)
            .batch_timeout(Duration::from_millis(20))
            .on_batch(move |batch| sink.lock().extend(batch.items))
            .run()
            .unwrap();
        let mut answers = answers.lock().clone();
        answers.sort_by(|a, b| a.0.cmp(&b.0));
        answers
    };
    let first = run();
    assert_eq!(b.prompts_seen().len(), 4);
    assert_eq!(
        journal.len(),
        4,
        "every answer kept in the pipeline's journal"
    );
    let second = run();
    assert_eq!(b.prompts_seen().len(), 4, "no call for an answered item");
    assert!(second.iter().all(|(_, r)| r.replayed));
    let texts = |r: &[(String, Response)]| {
        r.iter()
            .map(|(t, r)| (t.clone(), r.text.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&first), texts(&second));
}

fn progress_counts_replayed_answers_apart(b: &TestBackend) {
    let path = journal_path(b.dir());
    let last = std::sync::Arc::new(parking_lot::Mutex::new(None));
    let seen = std::sync::Arc::clone(&last);
    let session = b
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

/// Two invoices whose journal keys collided under 0.1's key (FNV-1a-128 over the settings and
/// the prompt, with the default settings): the 40-character payment references were found by
/// a lattice reduction (LLL) in well under a second. The second invoice, a fraud, must reach
/// the model rather than be answered with the first one's approval.
mod forged {
    pub const HEAD: &str = "Please check this supplier invoice against our purchase order and \
        answer APPROVE or REJECT with one line of reasons.\n\n";
    pub const LEGIT: &str = "Invoice INV-2291 from Northwind Office Supplies Ltd, 14 Harbour \
        Road, Leeds. Twelve ergonomic chairs at 103.33 EUR each, delivered 3 March, matching \
        purchase order PO-7781. Total due: 1,240.00 EUR to IBAN GB29 NWBK 6016 1331 9268 19 \
        within 30 days.";
    pub const EVIL: &str = "Invoice INV-2291 from Northwind Office Supplies Ltd, 14 Harbour \
        Road, Leeds. Urgent change of bank details: pay the full amount today to our new \
        account. Total due: 48,900.00 EUR to IBAN LT12 1000 0111 0100 1000 (EVIL Holdings \
        UAB), no PO needed.";
    pub const LEGIT_REFERENCE: &str = "8LFSNS33IKWJ9YK13DCULBGD5MPVTE336HHUMA8D";
    pub const EVIL_REFERENCE: &str = "HPF2Q202ND8E7CG0RBBRLCBC8AS2R9R20F468F6K";
    pub const TAIL: &str = "\nThank you for your prompt attention to this matter. Accounts \
        receivable, Northwind Office Supplies.\n";

    pub fn invoice(body: &str, reference: &str) -> String {
        format!("{HEAD}{body}\nPayment reference: {reference}{TAIL}")
    }

    /// 0.1's key, as it was computed: FNV-1a-128 over the lengths and bytes of the settings
    /// (here the default session's, as 0.1 wrote them) and of the prompt.
    pub fn old_key(prompt: &str) -> u128 {
        const SETTINGS: &str = r#"{"allowed_tools":[],"append_system_prompt":null,"disallowed_tools":[],"effort":null,"json_schema":null,"max_turns":null,"model":null,"permission_mode":null,"system_prompt":"","tools":[]}"#;
        let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
        let mut write = |bytes: &[u8]| {
            for byte in bytes {
                hash ^= u128::from(*byte);
                hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
            }
        };
        write(&(SETTINGS.len() as u64).to_le_bytes());
        write(SETTINGS.as_bytes());
        write(&(prompt.len() as u64).to_le_bytes());
        write(prompt.as_bytes());
        hash
    }
}

fn a_forged_key_collision_is_asked_not_replayed(b: &TestBackend) {
    let legit = forged::invoice(forged::LEGIT, forged::LEGIT_REFERENCE);
    let evil = forged::invoice(forged::EVIL, forged::EVIL_REFERENCE);
    assert_ne!(legit, evil);
    assert_eq!(
        forged::old_key(&legit),
        forged::old_key(&evil),
        "the two invoices collide under the old key"
    );
    let session = b.builder().journal(journal_path(b.dir())).build().unwrap();
    let approved = session.query(&legit).unwrap();
    assert_eq!(approved.text, format!("echo: {legit}"));
    let answer = session.query(&evil).unwrap();
    assert!(!answer.replayed, "the fraud was answered from the journal");
    assert_eq!(answer.text, format!("echo: {evil}"));
    assert_eq!(b.prompts_seen().len(), 2, "both invoices reached the model");
}

/// A session on `fake` with its journal at `path`, `HOME` at `home` (so that the settings
/// file the CLI would read is `home/.claude/settings.json`).
fn session_with_home(
    fake: &Fake,
    home: &Path,
    path: &Path,
    more: impl FnOnce(claude_rayon::SessionBuilder) -> claude_rayon::SessionBuilder,
) -> Session {
    more(fake.builder())
        .cli(|c| {
            c.env("HOME", home.to_str().unwrap())
                .env_remove("CLAUDE_CONFIG_DIR")
        })
        .journal(path)
        .build()
        .unwrap()
}

#[test]
fn every_way_of_choosing_the_model_asks_again() {
    let fake = Fake::new();
    let home = fake.dir.path().join("home");
    std::fs::create_dir_all(home.join(".claude")).unwrap();
    let path = journal_path(fake.dir.path());
    let prompt = "Summarise the attached quarterly report in three sentences for the board.";
    // Whether `prompt` was answered from the journal by a session set up by `more`.
    let replayed = |more: &dyn Fn(claude_rayon::SessionBuilder) -> claude_rayon::SessionBuilder| {
        let session = session_with_home(&fake, &home, &path, more);
        session.query(prompt).unwrap().replayed
    };
    let plain = |b| b;
    assert!(!replayed(&plain));
    assert!(replayed(&plain), "the same settings replay");
    let ways: [(
        &str,
        &dyn Fn(claude_rayon::SessionBuilder) -> claude_rayon::SessionBuilder,
    ); 5] = [
        ("arg(--model)", &|b| {
            b.cli(|c| c.arg("--model").arg("claude-haiku-4-5"))
        }),
        ("arg(--model=)", &|b| {
            b.cli(|c| c.arg("--model=claude-opus-4-1"))
        }),
        ("env ANTHROPIC_MODEL", &|b| {
            b.cli(|c| c.env("ANTHROPIC_MODEL", "claude-haiku-4-5"))
        }),
        ("load_user_config", &|b| b.cli(|c| c.load_user_config(true))),
        ("interpret_item_text", &|b| {
            b.cli(|c| c.interpret_item_text(true))
        }),
    ];
    for (way, more) in ways {
        assert!(!replayed(more), "{way}: replayed another model's answer");
        assert!(replayed(more), "{way}: its own answer replays");
    }
    // The user's settings file, which the sealed CLI still reads: its model, its env block.
    let settings = home.join(".claude/settings.json");
    for text in [
        r#"{"model": "claude-haiku-4-5"}"#,
        r#"{"model": "claude-opus-4-1"}"#,
        r#"{"env": {"ANTHROPIC_MODEL": "claude-haiku-4-5"}}"#,
    ] {
        std::fs::write(&settings, text).unwrap();
        assert!(
            !replayed(&plain),
            "settings {text}: replayed another model's answer"
        );
        assert!(replayed(&plain), "settings {text}: its own answer replays");
    }
    assert_eq!(fake.prompts().len(), 9);
}

#[test]
fn a_session_whose_model_cannot_be_known_is_refused_by_the_journal() {
    let fake = Fake::new();
    let home = fake.dir.path().join("home");
    // A settings file that cannot be read (a folder in its place): the CLI's model is unknown.
    std::fs::create_dir_all(home.join(".claude/settings.json")).unwrap();
    let path = journal_path(fake.dir.path());
    let err = fake
        .builder()
        .cli(|c| {
            c.env("HOME", home.to_str().unwrap())
                .env_remove("CLAUDE_CONFIG_DIR")
        })
        .journal(&path)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Journal { .. }), "{err}");
    assert!(err.to_string().contains("settings.json"), "{err}");
    // The same session without a journal runs; given one per run, it refuses each item,
    // handing it back, without a call.
    let session = fake
        .builder()
        .cli(|c| {
            c.env("HOME", home.to_str().unwrap())
                .env_remove("CLAUDE_CONFIG_DIR")
        })
        .build()
        .unwrap();
    session
        .query("no journal, no question about the model")
        .unwrap();
    let journal = Journal::open(&path).unwrap();
    let results: Vec<_> = ["first item of the run", "second item of the run"]
        .par_iter()
        .claude_map(&session, |p| *p)
        .with_journal(&journal)
        .collect();
    for result in results {
        let failed = result.unwrap_err();
        assert!(
            matches!(failed.error, Error::Journal { .. }),
            "{}",
            failed.error
        );
        assert_eq!(failed.attempts, 0);
    }
    assert_eq!(fake.prompts().len(), 1);
}

/// Run by `the_inherited_model_is_in_the_key` in a child copy of this test binary, with
/// `ANTHROPIC_MODEL` in its environment.
const CHILD_MODEL_JOURNAL: &str = "CLAUDE_RAYON_TEST_CHILD_MODEL_JOURNAL";

#[test]
fn the_inherited_model_is_in_the_key() {
    if let Ok(path) = std::env::var(CHILD_MODEL_JOURNAL) {
        let fake = Fake::new();
        let session = fake.builder().journal(&path).build().unwrap();
        let answer = session
            .query("Draft a polite reminder about the overdue invoice from March.")
            .unwrap();
        println!("\nCHILD REPLAYED {}", answer.replayed);
        return;
    }
    let fake = Fake::new();
    let path = journal_path(fake.dir.path());
    let run_with = |model: &str| {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &support::this_test(module_path!(), "the_inherited_model_is_in_the_key"),
                "--nocapture",
            ])
            .env(CHILD_MODEL_JOURNAL, &path)
            .env("ANTHROPIC_MODEL", model)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&child.stdout).into_owned();
        support::assert_ran_one_test(&out);
        out.lines()
            .find_map(|l| l.strip_prefix("CHILD REPLAYED "))
            .unwrap_or_else(|| panic!("the child said nothing: {out}"))
            .to_string()
    };
    assert_eq!(run_with("claude-haiku-4-5"), "false");
    assert_eq!(run_with("claude-haiku-4-5"), "true");
    assert_eq!(
        run_with("claude-opus-4-1"),
        "false",
        "another model's answer replayed"
    );
}

on_both_backends!(
    a_rerun_takes_every_answer_from_the_journal_without_a_call,
    a_changed_prompt_is_asked_again_and_only_it,
    a_changed_setting_asks_everything_again,
    failures_are_recorded_for_inspection_and_asked_again,
    a_torn_or_damaged_tail_is_skipped_and_never_replayed,
    filter_and_group_by_replay_their_verdicts_and_categories,
    streams_windows_the_pipeline_and_query_replay_too,
    a_pipeline_keeps_its_answers_in_its_own_journal,
    progress_counts_replayed_answers_apart,
    a_forged_key_collision_is_asked_not_replayed,
);
