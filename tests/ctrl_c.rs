//! Ctrl-C for real (feature `ctrlc`): a child copy of this program gets SIGINT from the test
//! while two items are in flight on the Messages API backend (a mock in the child, whose
//! answers wait for the Ctrl-C).
//!
//! - The first Ctrl-C: no new item starts, the two in flight finish and are kept in the
//!   journal, the other eight come back cancelled, a second `Cancel::on_ctrl_c()` is the
//!   same handle, and the program goes on to its end (exit code 0).
//! - A second Ctrl-C ends the program at once, with exit code 130, items still in flight.
//! - A program that already handles SIGINT is refused, its handler kept.
//! - On a batch session, Ctrl-C cancels the submitted batch and keeps (and journals) the
//!   answers it had.
//!
//! A test binary of its own (`harness = false`): the Ctrl-C handler is one per process, and
//! the signal goes to a whole process. Every wait is on a condition (a line from the child,
//! a flag), never a sleep.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use claude_rayon::prelude::*;
use claude_rayon::{Backend, Cancel, Error, Journal, Session};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use rayon::prelude::*;
use support::mock_api::{MockApi, Reply};

/// Set in a child copy: which scenario it runs.
const CHILD_ENV: &str = "CLAUDE_RAYON_TEST_CTRL_C";
/// Set in a child copy: the folder for its journal.
const DIR_ENV: &str = "CLAUDE_RAYON_TEST_CTRL_C_DIR";
const ITEMS: usize = 10;
const CONCURRENCY: usize = 2;
const PATIENCE: Duration = Duration::from_secs(60);

fn main() {
    if let Ok(scenario) = std::env::var(CHILD_ENV) {
        let dir = std::env::var_os(DIR_ENV).expect("the test names a folder");
        match scenario.as_str() {
            "first" => child(Path::new(&dir), false),
            "twice" => child(Path::new(&dir), true),
            "taken" => child_with_a_handler_of_its_own(),
            "ignored" => child_started_with_ctrl_c_ignored(),
            "batch" => child_with_a_batch(Path::new(&dir)),
            other => panic!("no scenario {other}"),
        }
        return;
    }
    let tests: [(&str, fn()); 5] = [
        (
            "the_first_ctrl_c_stops_new_items_and_keeps_the_answers_in_flight",
            the_first_ctrl_c_stops_new_items_and_keeps_the_answers_in_flight,
        ),
        (
            "a_second_ctrl_c_ends_the_program_with_exit_code_130",
            a_second_ctrl_c_ends_the_program_with_exit_code_130,
        ),
        (
            "a_program_that_handles_sigint_itself_is_refused",
            a_program_that_handles_sigint_itself_is_refused,
        ),
        (
            "a_program_started_with_ctrl_c_ignored_keeps_ignoring_it",
            a_program_started_with_ctrl_c_ignored_keeps_ignoring_it,
        ),
        (
            "ctrl_c_cancels_a_batch_and_keeps_its_partial_results",
            ctrl_c_cancels_a_batch_and_keeps_its_partial_results,
        ),
    ];
    for (name, test) in tests {
        test();
        println!("test {name} ... ok");
    }
    println!("test result: ok. {} passed; 0 failed", tests.len());
}

/// A child copy of this program running `scenario`, its stdout read line by line.
struct Copy {
    child: Child,
    lines: Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    _dir: tempfile::TempDir,
    journal: std::path::PathBuf,
}

impl Copy {
    fn start(scenario: &str) -> Copy {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(std::env::current_exe().unwrap());
        // As a terminal starts a program: Ctrl-C not ignored (it is in a background job of
        // a script, which "ignored" plays).
        let disposition = if scenario == "ignored" {
            libc::SIG_IGN
        } else {
            libc::SIG_DFL
        };
        // SAFETY: only an async-signal-safe call between fork and exec.
        unsafe {
            command.pre_exec(move || {
                libc::signal(libc::SIGINT, disposition);
                Ok(())
            });
        }
        let mut child = command
            .env(CHILD_ENV, scenario)
            .env(DIR_ENV, dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        Copy {
            child,
            lines,
            stderr: Some(stderr),
            journal: dir.path().join("journal.jsonl"),
            _dir: dir,
        }
    }

    /// The child's next line on stdout (it is killed if none comes in time).
    fn next_line(&mut self) -> Option<String> {
        match self.lines.recv_timeout(PATIENCE) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                panic!("the child said nothing for {PATIENCE:?}");
            }
        }
    }

    fn expect_line(&mut self, want: &str) {
        let line = self.next_line();
        assert_eq!(line.as_deref(), Some(want), "the child's stdout");
    }

    fn ctrl_c(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: a signal to our own child, which has not been reaped (we hold it).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    }

    /// Wait for the child's end: its exit code and stderr.
    fn end(&mut self) -> (Option<i32>, String) {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let pid = self.child.id();
        // A watchdog that kills a child that hangs, so that the test fails instead.
        std::thread::spawn(move || {
            if done_rx.recv_timeout(PATIENCE).is_err() {
                // SAFETY: the child's pid, still ours until it is reaped below.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        });
        let status = self.child.wait().unwrap();
        let _ = done_tx.send(());
        let stderr = self.stderr.take().expect("ended once").join().unwrap();
        (status.code(), stderr)
    }
}

fn the_first_ctrl_c_stops_new_items_and_keeps_the_answers_in_flight() {
    let mut copy = Copy::start("first");
    copy.expect_line(&format!("in flight: {CONCURRENCY}"));
    copy.ctrl_c();
    let summary = copy.next_line().expect("a summary");
    let (code, stderr) = copy.end();
    let journal = &copy.journal;
    assert_eq!(
        code,
        Some(0),
        "the program went on to its end; stderr: {stderr}"
    );
    assert_eq!(
        summary,
        format!(
            "answered {CONCURRENCY}, cancelled {} before they started, same handle: true",
            ITEMS - CONCURRENCY
        )
    );
    assert!(
        stderr.contains("Ctrl-C: no new items start") && !stderr.contains("quitting"),
        "{stderr}"
    );
    assert_eq!(
        Journal::open(journal).unwrap().len(),
        CONCURRENCY,
        "the answers in flight were kept"
    );
}

fn a_second_ctrl_c_ends_the_program_with_exit_code_130() {
    let mut copy = Copy::start("twice");
    copy.expect_line(&format!("in flight: {CONCURRENCY}"));
    copy.ctrl_c();
    copy.expect_line("cancelled");
    copy.ctrl_c();
    assert_eq!(copy.next_line(), None, "nothing after the second Ctrl-C");
    let (code, stderr) = copy.end();
    assert_eq!(code, Some(130), "stderr: {stderr}");
    assert!(stderr.contains("Ctrl-C again: quitting now"), "{stderr}");
}

fn a_program_that_handles_sigint_itself_is_refused() {
    let mut copy = Copy::start("taken");
    let line = copy.next_line().expect("the child's verdict");
    let (code, stderr) = copy.end();
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(
        line.starts_with("refused: invalid configuration: Cancel::on_ctrl_c"),
        "{line}"
    );
}

fn a_program_started_with_ctrl_c_ignored_keeps_ignoring_it() {
    let mut copy = Copy::start("ignored");
    copy.expect_line("ready");
    // An ignored signal is dropped when it is sent: once `kill` returns, it is gone.
    copy.ctrl_c();
    let stdin = copy.child.stdin.as_mut().unwrap();
    writeln!(stdin, "check").unwrap();
    stdin.flush().unwrap();
    copy.expect_line("cancelled: false");
    let (code, stderr) = copy.end();
    assert_eq!(code, Some(0), "stderr: {stderr}");
}

fn ctrl_c_cancels_a_batch_and_keeps_its_partial_results() {
    let mut copy = Copy::start("batch");
    copy.expect_line("submitted, 4 answered");
    copy.ctrl_c();
    let summary = copy.next_line().expect("a summary");
    let (code, stderr) = copy.end();
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(
        summary,
        format!(
            "answered 4, cancelled {}, batch ended with {} canceled",
            ITEMS - 4,
            ITEMS - 4
        )
    );
    assert_eq!(
        Journal::open(&copy.journal).unwrap().len(),
        4,
        "the answers the batch had are journaled"
    );
}

/// `claude_map` over ten support tickets on a thread of its own: each item's outcome.
fn map_tickets_in_background(session: Session) -> std::thread::JoinHandle<Vec<Result<(), Error>>> {
    let tickets: Vec<String> = (0..ITEMS).map(|i| support::ticket(i, 400)).collect();
    std::thread::spawn(move || {
        tickets
            .par_iter()
            .claude_map(&session, |t| format!("Summarise this ticket:\n{t}"))
            .map(|result| result.map(drop).map_err(|failed| failed.error))
            .collect()
    })
}

/// The child: ten tickets in one batch on a batch session that Ctrl-C cancels; four are
/// answered before the Ctrl-C, the batch never ends by itself.
fn child_with_a_batch(dir: &Path) {
    let ctrl_c = Cancel::on_ctrl_c().unwrap();
    let api = MockApi::start();
    api.set_batch_processing_time(Duration::from_secs(24 * 3600));
    let session = Session::builder()
        .backend(Backend::Batches)
        .api_key("sk-ant-test-key")
        .base_url(api.url())
        .model("claude-haiku-4-5")
        .batch_poll_interval(Duration::from_millis(5))
        .journal(dir.join("journal.jsonl"))
        .with_cancel(&ctrl_c)
        .build()
        .unwrap();
    let run = map_tickets_in_background(session);
    support::wait_until("the batch", PATIENCE, || api.batch_count() == 1);
    let id = api.batches()[0].id.clone();
    assert_eq!(api.advance_batch(&id, 4), 4);
    say("submitted, 4 answered");
    let results = run.join().unwrap();
    let answered = results.iter().filter(|r| r.is_ok()).count();
    let cancelled = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Cancelled)))
        .count();
    let canceled = api.batches()[0].counts.canceled;
    say(&format!(
        "answered {answered}, cancelled {cancelled}, batch ended with {canceled} canceled"
    ));
}

/// The child: ten tickets on a session that Ctrl-C cancels, answers held until then (or,
/// with `forever`, never answered).
fn child(dir: &Path, forever: bool) {
    let ctrl_c = Cancel::on_ctrl_c().unwrap();
    let api = MockApi::start();
    let (arrived_tx, arrived) = crossbeam_channel::unbounded();
    let released = Arc::new(AtomicBool::new(false));
    {
        let (ctrl_c, released) = (ctrl_c.clone(), Arc::clone(&released));
        api.set_reply(move |prompt| {
            let _ = arrived_tx.send(());
            // The answer waits for the Ctrl-C (and, `forever`, for the end of the program).
            support::wait_until("the Ctrl-C", PATIENCE * 2, || {
                ctrl_c.is_cancelled() && (!forever || released.load(Ordering::SeqCst))
            });
            Reply::text(format!("Summary: {}", &prompt[..60]))
        });
    }
    let session = Session::builder()
        .backend(Backend::MessagesApi)
        .api_key("sk-ant-test-key")
        .base_url(api.url())
        .model("claude-haiku-4-5")
        .concurrency(CONCURRENCY)
        .journal(dir.join("journal.jsonl"))
        .with_cancel(&ctrl_c)
        .build()
        .unwrap();
    let run = map_tickets_in_background(session);
    for _ in 0..CONCURRENCY {
        arrived
            .recv_timeout(PATIENCE)
            .expect("an item reached the API");
    }
    say(&format!("in flight: {CONCURRENCY}"));
    if forever {
        support::wait_until("the first Ctrl-C", PATIENCE, || ctrl_c.is_cancelled());
        say("cancelled");
        // The second Ctrl-C ends the program here, with the items still in flight.
        let _ = run.join();
        released.store(true, Ordering::SeqCst);
        unreachable!("the second Ctrl-C ended the program");
    }
    let results = run.join().unwrap();
    let answered = results.iter().filter(|r| r.is_ok()).count();
    let cancelled = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Cancelled)))
        .count();
    let same = Cancel::on_ctrl_c().unwrap().is_cancelled();
    say(&format!(
        "answered {answered}, cancelled {cancelled} before they started, same handle: {same}"
    ));
}

/// A program with a SIGINT handler of its own: `on_ctrl_c` refuses rather than replace it.
fn child_with_a_handler_of_its_own() {
    extern "C" fn own(_: libc::c_int) {}
    // SAFETY: installs a handler that does nothing, before any thread of this program.
    unsafe {
        libc::signal(
            libc::SIGINT,
            own as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    match Cancel::on_ctrl_c() {
        Ok(_) => say("installed"),
        Err(error) => say(&format!("refused: {error}")),
    }
}

/// A program started with SIGINT ignored: the handle comes, and Ctrl-C does not set it.
fn child_started_with_ctrl_c_ignored() {
    let ctrl_c = Cancel::on_ctrl_c().unwrap();
    say("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    say(&format!("cancelled: {}", ctrl_c.is_cancelled()));
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}
