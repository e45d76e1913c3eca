//! No child outlives its session: drop, close, panic, a killed parent; concurrency limits.
//! The tests of items, close, cancel and conversations run on both backends (their process
//! checks on the CLI only); those about processes themselves on the CLI only.

use crate::{on_both_backends, support};

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use claude_rayon::Error;
use support::backends::TestBackend;
use support::{pid_alive, wait_until, Fake};

const GONE: Duration = Duration::from_secs(10);

#[test]
fn every_child_is_gone_after_drop() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(3).build().unwrap();
    std::thread::scope(|s| {
        for i in 0..6 {
            let session = &session;
            s.spawn(move || session.query(format!("[[sim:delay=30]] {i}")).unwrap());
        }
    });
    let pids = fake.pids();
    assert!(!pids.is_empty() && pids.len() <= 3, "{pids:?}");
    assert!(pids.iter().all(|&p| pid_alive(p)));
    let clone = session.clone();
    drop(session);
    assert!(pids.iter().all(|&p| pid_alive(p)), "a clone keeps them");
    drop(clone);
    for pid in pids {
        wait_until("child gone after drop", GONE, || !pid_alive(pid));
    }
}

fn close_ends_processes_and_reports_stats(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    session.query("a").unwrap();
    session.query("b").unwrap();
    let other = session.clone();
    let pids = b.fake().map(Fake::pids).unwrap_or_default();
    let stats = session.close().unwrap();
    assert_eq!(stats.succeeded, 2);
    assert!(stats.usage.output_tokens > 0 && stats.cost_usd > 0.0);
    assert!(stats.time_to_first_result.is_some());
    for pid in pids {
        wait_until("child gone after close", GONE, || !pid_alive(pid));
    }
    assert!(matches!(other.query("c"), Err(Error::Closed)));
    assert!(matches!(other.close(), Err(Error::Closed)));
}

#[test]
fn children_die_when_the_thread_owning_the_session_panics() {
    let fake = Fake::new();
    let builder = fake.builder().concurrency(1);
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let session = builder.build().unwrap();
        session.query("x").unwrap();
        tx.send(()).unwrap();
        panic!("boom");
    })
    .join();
    assert!(result.is_err());
    rx.recv().unwrap();
    let pids = fake.pids();
    assert_eq!(pids.len(), 1);
    for pid in pids {
        wait_until("child gone after a panic", GONE, || !pid_alive(pid));
    }
}

#[test]
fn processes_outlive_the_thread_that_started_them() {
    // The parent-death signal follows the forking thread; children must not die with it.
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| session.query("from a short-lived thread").unwrap());
    });
    let pid = fake.pids()[0];
    assert!(pid_alive(pid));
    assert_eq!(session.query("again").unwrap().text, "echo: again");
    assert_eq!(fake.pids(), vec![pid]);
}

#[test]
fn concurrency_caps_processes() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(2).build().unwrap();
    std::thread::scope(|s| {
        for i in 0..8 {
            let session = &session;
            s.spawn(move || session.query(format!("[[sim:delay=20]] {i}")).unwrap());
        }
    });
    assert_eq!(session.stats().processes_started as usize, 2);
    assert_eq!(session.stats().succeeded, 8);
}

#[test]
fn fresh_process_per_item_starts_one_per_item_and_ends_each() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(2)
        .cli(|c| c.fresh_process_per_item(true))
        .build()
        .unwrap();
    for i in 0..3 {
        assert_eq!(
            session.query(format!("q{i}")).unwrap().text,
            format!("echo: q{i}")
        );
    }
    let pids = fake.pids();
    assert_eq!(pids.len(), 3);
    for pid in pids {
        wait_until("per-item process ended", GONE, || !pid_alive(pid));
    }
    assert_eq!(session.stats().processes_live as usize, 0);
}

/// Run by `children_die_with_a_killed_parent` in a child copy of this test binary.
/// The parent of `children_die_with_a_killed_parent`: this test binary re-run as a child
/// process, which starts a CLI process, reports its pid, and waits to be killed.
fn run_parent_for_kill_test() -> ! {
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
    session.query("x").unwrap();
    println!("\nCHILD_PID {}", fake.pids()[0]);
    // Wait for the kill: the test holds stdin open until then.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    std::process::exit(0);
}

#[test]
fn children_die_with_a_killed_parent() {
    if std::env::var("CLAUDE_RAYON_TEST_PARENT").is_ok() {
        run_parent_for_kill_test();
    }
    let mut parent = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &support::this_test(module_path!(), "children_die_with_a_killed_parent"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CLAUDE_RAYON_TEST_PARENT", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = parent.stdout.take().unwrap();
    let mut before = String::new();
    let child_pid: u32 = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            let pid = l
                .split_once("CHILD_PID ")
                .map(|(_, p)| p.trim().parse().unwrap());
            before.push_str(&l);
            before.push('\n');
            pid
        })
        .expect("the parent reports its child");
    support::assert_ran_one_test(&before);
    assert!(pid_alive(child_pid));
    parent.kill().unwrap(); // SIGKILL: no destructor runs in the parent.
    parent.wait().unwrap();
    wait_until("child gone after its parent was killed", GONE, || {
        !pid_alive(child_pid)
    });
}

fn close_ends_a_conversations_process_too(b: &TestBackend) {
    let session = b.builder().concurrency(1).build().unwrap();
    let mut chat = session.conversation();
    chat.send("hello").unwrap();
    let pid = b.fake().map(|fake| fake.pids()[0]);
    session.clone().close().unwrap();
    if let Some(pid) = pid {
        wait_until("the conversation's process ends at close", GONE, || {
            !pid_alive(pid)
        });
    }
    assert!(matches!(chat.send("again"), Err(Error::Closed)));
    assert_eq!(session.stats().processes_live as usize, 0);
}

fn an_item_waiting_for_a_process_is_not_sent_after_a_cancel(b: &TestBackend) {
    use claude_rayon::prelude::*;
    use rayon::prelude::*;
    let session = b.builder().concurrency(1).build().unwrap();
    let mut chat = session.conversation();
    chat.send("holding the only process").unwrap();
    let cancel = claude_rayon::Cancel::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let (runner, run_cancel) = (session.clone(), cancel.clone());
    std::thread::spawn(move || {
        let results: Vec<_> = vec![1u32, 2]
            .into_par_iter()
            .claude_map(&runner, |i| format!("item {i}"))
            .with_cancel(&run_cancel)
            .collect();
        tx.send(results).unwrap();
    });
    wait_until("an item is waiting", GONE, || session.stats().started >= 1);
    cancel.cancel();
    drop(chat);
    let results = rx.recv_timeout(GONE).unwrap();
    assert!(results
        .iter()
        .all(|r| matches!(r, Err(f) if matches!(f.error, Error::Cancelled))));
    assert_eq!(
        b.prompts_seen().len(),
        1,
        "only the conversation's prompt was sent"
    );
}

const SIGPIPE_TEST: &str = "a_host_with_default_sigpipe_survives_a_cli_that_will_not_read";
const SIGPIPE_CHILD_ENV: &str = "CLAUDE_RAYON_TEST_SIGPIPE_CLI";

#[test]
fn a_host_with_default_sigpipe_survives_a_cli_that_will_not_read() {
    if let Ok(cli) = std::env::var(SIGPIPE_CHILD_ENV) {
        // The host: SIGPIPE at its default action, as many command-line programs set it.
        // SAFETY: no thread of the library exists yet.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
        let session = claude_rayon::Session::builder()
            .cli(|c| c.cli_path(cli))
            .retry_policy(
                claude_rayon::RetryPolicy::default()
                    .max_retries(1)
                    .initial_backoff(Duration::from_millis(1))
                    .max_backoff(Duration::from_millis(2)),
            )
            .build()
            .unwrap();
        let error = session.query("y".repeat(1 << 20)).unwrap_err();
        println!("\nSURVIVED {error}");
        std::process::exit(0);
    }
    // A CLI that says its version, then exits without reading a prompt.
    let dir = tempfile::tempdir().unwrap();
    let cli = dir.path().join("claude");
    std::fs::write(
        &cli,
        "#!/bin/sh\n[ \"$1\" = --version ] && echo '2.1.332 (Claude Code)'\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &support::this_test(module_path!(), SIGPIPE_TEST),
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(SIGPIPE_CHILD_ENV, &cli)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(output.status.signal(), None, "host killed: {stdout}");
    support::assert_ran_one_test(&stdout);
    assert!(
        output.status.success() && stdout.contains("SURVIVED"),
        "{stdout}"
    );
}

fn close_ends_a_busy_process_at_once_and_counts_its_item(b: &TestBackend) {
    let session = b
        .builder()
        .timeout(Duration::from_secs(600))
        .concurrency(1)
        .build()
        .unwrap();
    let busy = session.clone();
    let caller = std::thread::spawn(move || busy.query("[[sim:hang]] forever"));
    wait_until("the call is in flight", GONE, || {
        b.prompts_seen().iter().any(|p| p.contains("forever"))
    });
    let pid = b.fake().map(|fake| fake.pids()[0]);
    let stats = session.close().unwrap();
    assert_eq!((stats.started, stats.failed), (1, 1), "{stats:?}");
    if let Some(pid) = pid {
        wait_until("the busy process is gone", GONE, || !pid_alive(pid));
    }
    assert!(caller.join().unwrap().is_err());
}

/// When each process started, in milliseconds since the UNIX epoch, in order.
fn start_times(fake: &Fake) -> Vec<u64> {
    let mut times: Vec<u64> = fake
        .events()
        .iter()
        .filter(|e| e["event"] == "start")
        .map(|e| e["t_ms"].as_u64().unwrap())
        .collect();
    times.sort_unstable();
    times
}

#[test]
fn processes_start_a_few_at_a_time() {
    use claude_rayon::prelude::*;
    use rayon::prelude::*;
    let run = |max_starting: usize| {
        let fake = Fake::new();
        let session = fake
            .builder()
            .cli(|c| c.env("CLAUDE_RAYON_SIM_STARTUP_MS", "300"))
            .concurrency(6)
            .cli(|c| c.max_starting_processes(max_starting))
            .build()
            .unwrap();
        let items: Vec<u32> = (0..12).collect();
        let outcome: claude_rayon::Outcome<_, _> = items
            .par_iter()
            .claude_map(&session, |i| format!("[[sim:delay=50]] {i}"))
            .collect();
        assert_eq!(outcome.ok.len(), 12);
        start_times(&fake)
    };
    // Two at a time: the third starts only once one of the first two answered (300 ms in).
    let staggered = run(2);
    // Warm processes take items meanwhile, so fewer than six may ever be needed.
    assert!(staggered.len() >= 3, "{staggered:?}");
    assert!(
        staggered[2] - staggered[0] >= 250,
        "third start {} ms after the first",
        staggered[2] - staggered[0]
    );
    // All at once: every start within moments.
    let at_once = run(6);
    assert!(at_once[5] - at_once[0] < 250, "{at_once:?}");
}

#[test]
fn a_start_up_slot_is_freed_once_the_process_has_loaded_not_after_its_first_item() {
    use claude_rayon::prelude::*;
    use rayon::prelude::*;
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(4)
        .cli(|c| c.max_starting_processes(1))
        .build()
        .unwrap();
    // Long items, instant start-up: the four processes start one after another as each
    // loads, not one per item length.
    let items: Vec<u32> = (0..4).collect();
    let outcome: claude_rayon::Outcome<_, _> = items
        .par_iter()
        .claude_map(&session, |i| format!("[[sim:delay=1500]] {i}"))
        .collect();
    assert_eq!(outcome.ok.len(), 4);
    let starts = start_times(&fake);
    assert_eq!(starts.len(), 4, "{starts:?}");
    assert!(
        starts[3] - starts[0] < 1000,
        "the last start came {} ms after the first",
        starts[3] - starts[0]
    );
}

/// A conversation's turn on its own thread: the conversation back, and the turn's answer.
type Turn = std::thread::JoinHandle<(
    claude_rayon::Conversation,
    Result<claude_rayon::Response, Error>,
)>;

/// A conversation's turn that will not end by itself (`hang`) on its own thread; returns
/// the thread and, on the CLI, the pid of the conversation's process once the turn's prompt
/// arrived.
fn hanging_turn(b: &TestBackend, mut chat: claude_rayon::Conversation) -> (Turn, Option<u32>) {
    chat.send("Please remember that the quarterly report is due on Friday, not Monday.")
        .unwrap();
    let turn = std::thread::spawn(move || {
        let answer = chat.send(
            "[[sim:hang]] When is the quarterly report due, and who asked for it to be moved?",
        );
        (chat, answer)
    });
    wait_until("the second turn reached the model", GONE, || {
        b.prompts_seen().len() == 2
    });
    // It came with the first turn in its context: the process's own on the CLI, the history
    // the library keeps on the API.
    assert_eq!(
        b.prompts_with_context()[1].1,
        2,
        "the second turn's context"
    );
    (turn, b.fake().map(|fake| fake.pids()[0]))
}

fn a_cancel_ends_a_conversations_turn_in_flight_and_refuses_the_next(b: &TestBackend) {
    let session = b.builder().concurrency(1).build().unwrap();
    let cancel = claude_rayon::Cancel::new();
    let chat = session.conversation().with_cancel(&cancel);
    let (turn, pid) = hanging_turn(b, chat);
    cancel.cancel();
    let (mut chat, answer) = turn.join().unwrap();
    assert!(matches!(answer, Err(Error::Cancelled)), "{answer:?}");
    if let Some(pid) = pid {
        wait_until("the turn's process is gone", GONE, || !pid_alive(pid));
    }
    let next = chat.send("Is the report still due on Friday?");
    assert!(matches!(next, Err(Error::Cancelled)), "{next:?}");
    assert_eq!(b.prompts_seen().len(), 2, "nothing sent after the cancel");
    let stats = session.stats();
    assert_eq!((stats.started, stats.succeeded, stats.failed), (3, 1, 2));
    // The session goes on: a query is not the conversation's. On a thread of its own, so
    // that a query that never gets a connection fails the test rather than hangs it.
    let (asker, (answered, answer)) = (session.clone(), std::sync::mpsc::channel());
    std::thread::spawn(move || {
        let _ = answered.send(asker.query("Summarise: the report moved to Friday."));
    });
    let answer = answer
        .recv_timeout(GONE * 3)
        .expect("the query got no connection while the cancelled conversation lives");
    assert!(answer.is_ok(), "{answer:?}");
}

fn a_conversation_cancelled_before_a_turn_sends_nothing(b: &TestBackend) {
    let session = b.builder().concurrency(1).build().unwrap();
    let cancel = claude_rayon::Cancel::new();
    cancel.cancel();
    let mut chat = session.conversation().with_cancel(&cancel);
    let answer = chat.send("Draft a polite reply to a customer whose parcel arrived late.");
    assert!(matches!(answer, Err(Error::Cancelled)), "{answer:?}");
    assert!(b.prompts_seen().is_empty(), "nothing was sent");
    if let Some(fake) = b.fake() {
        assert!(fake.pids().is_empty(), "no process was started");
    }
    // Reset, the conversation goes on.
    cancel.reset();
    assert!(chat
        .send("Draft a polite reply to a customer whose parcel arrived late.")
        .is_ok());
}

fn close_during_a_conversations_turn_reports_closed(b: &TestBackend) {
    let session = b.builder().concurrency(1).build().unwrap();
    let (turn, pid) = hanging_turn(b, session.conversation());
    session.clone().close().unwrap();
    let (_chat, answer) = turn.join().unwrap();
    assert!(matches!(answer, Err(Error::Closed)), "{answer:?}");
    if let Some(pid) = pid {
        assert!(!pid_alive(pid));
    }
}

/// A support ticket of a few hundred characters, one per item.
fn ticket(i: usize) -> String {
    format!(
        "Ticket {i}: since the update on Tuesday our nightly export to CSV stops after about \
         ninety seconds with a timeout, and the finance team needs the file for the month-end \
         close. We tried a smaller date range and a different browser without luck. Please \
         classify the urgency and suggest a next step for case number {i}."
    )
}

/// The prompts each fake process answered, by pid.
fn prompts_by_pid(fake: &Fake) -> std::collections::BTreeMap<u64, Vec<String>> {
    let mut by_pid = std::collections::BTreeMap::<u64, Vec<String>>::new();
    for event in fake.events().iter().filter(|e| e["event"] == "prompt") {
        by_pid
            .entry(event["pid"].as_u64().unwrap())
            .or_default()
            .push(event["prompt"].as_str().unwrap().to_string());
    }
    by_pid
}

#[test]
fn a_process_is_recycled_after_n_items_and_every_item_is_answered_once() {
    use claude_rayon::prelude::*;
    use rayon::prelude::*;
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(2)
        .cli(|c| c.recycle_after_items(Some(3)).recycle_above_memory(None))
        .build()
        .unwrap();
    let items: Vec<usize> = (0..10).collect();
    let results: Vec<_> = items
        .par_iter()
        .claude_map(&session, |&&i| ticket(i))
        .collect();
    for (i, result) in results.iter().enumerate() {
        assert_eq!(
            result.as_ref().unwrap().1.text,
            format!("echo: {}", ticket(i))
        );
    }
    let by_pid = prompts_by_pid(&fake);
    let mut asked: Vec<String> = by_pid.values().flatten().cloned().collect();
    asked.sort();
    let mut expected: Vec<String> = items.iter().map(|&i| ticket(i)).collect();
    expected.sort();
    assert_eq!(asked, expected, "every item asked exactly once");
    assert!(
        by_pid.values().all(|prompts| prompts.len() <= 3),
        "no process answered more than 3 items: {by_pid:?}"
    );
    let stats = session.stats();
    assert_eq!(stats.processes_started as usize, fake.pids().len());
    assert!(fake.pids().len() >= 4, "10 items, 3 per process");
    let full = by_pid.values().filter(|p| p.len() == 3).count() as u64;
    assert_eq!(stats.processes_recycled, full, "{by_pid:?}");
    assert_eq!((stats.succeeded, stats.failed, stats.requests), (10, 0, 10));
}

#[test]
fn a_process_above_the_memory_ceiling_is_recycled_between_items() {
    let fake = Fake::new();
    // Any process is above one byte: each is retired after its item.
    let session = fake
        .builder()
        .concurrency(1)
        .cli(|c| c.recycle_after_items(None).recycle_above_memory(Some(1)))
        .build()
        .unwrap();
    for i in 0..3 {
        assert_eq!(
            session.query(ticket(i)).unwrap().text,
            format!("echo: {}", ticket(i))
        );
    }
    let pids = fake.pids();
    assert_eq!(pids.len(), 3, "one process per item");
    let stats = session.stats();
    assert_eq!(stats.processes_recycled, 3);
    for pid in pids {
        wait_until("a retired process ends", GONE, || !pid_alive(pid));
    }
}

#[test]
fn a_conversation_keeps_its_process_past_the_recycling_limit() {
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(1)
        .cli(|c| c.recycle_after_items(Some(2)))
        .build()
        .unwrap();
    let mut chat = session.conversation();
    for i in 0..4 {
        chat.send(format!("[[sim:context]] {}", ticket(i))).unwrap();
    }
    let prompts = fake.prompts();
    assert_eq!(prompts.last().unwrap().1, 4, "the fourth turn saw all four");
    assert_eq!(fake.pids().len(), 1);
    drop(chat);
    // Given back past its limit, it is retired; the next item gets a new process.
    session.query(ticket(9)).unwrap();
    assert_eq!(fake.pids().len(), 2);
    assert_eq!(session.stats().processes_recycled, 1);
}

fn a_cancel_ends_the_wait_for_a_process_a_conversation_holds(b: &TestBackend) {
    use claude_rayon::prelude::*;
    use claude_rayon::{Cancel, Outcome};
    use rayon::prelude::*;

    let session = b.builder().concurrency(1).build().unwrap();
    // The one process is held by a conversation until the end of the test.
    let mut chat = session.conversation();
    chat.send(
        "You are reviewing a pull request that renames the configuration loader and moves its \
         defaults into a table; remember that the table must stay sorted by key.",
    )
    .unwrap();
    let cancel = Cancel::new();
    let (done, outcome) = std::sync::mpsc::channel();
    {
        let (session, cancel) = (session.clone(), cancel.clone());
        // On its own thread, so that a wait that never ends fails the test instead of
        // hanging it.
        std::thread::spawn(move || {
            let outcome: Outcome<_, String> = vec![
                "Summarise the release notes for version 4.2: the exporter streams rows instead \
                 of buffering them, the importer accepts gzip, and the CLI gained a --dry-run \
                 flag that prints what would change."
                    .to_string(),
            ]
            .into_par_iter()
            .claude_map(&session, |notes| notes.clone())
            .with_cancel(&cancel)
            .collect();
            let _ = done.send(outcome);
        });
    }
    wait_until("the item waits for a process", GONE, || {
        session.stats().waiting_for_connection == 1
    });
    cancel.cancel();
    let outcome = outcome
        .recv_timeout(Duration::from_secs(30))
        .expect("the run ended after its cancel");
    assert_eq!(outcome.dead_letter.len(), 1, "{outcome:?}");
    let failed = &outcome.dead_letter[0];
    assert!(
        matches!(failed.error, Error::Cancelled),
        "{:?}",
        failed.error
    );
    assert!(failed.item.contains("release notes"));
    let stats = session.stats();
    assert_eq!(stats.waiting_for_connection, 0);
    assert_eq!(stats.requests, 1, "only the conversation's turn was sent");
    assert_eq!(b.prompts_seen().len(), 1);
    drop(chat);
}

on_both_backends!(
    close_ends_processes_and_reports_stats,
    close_ends_a_conversations_process_too,
    an_item_waiting_for_a_process_is_not_sent_after_a_cancel,
    close_ends_a_busy_process_at_once_and_counts_its_item,
    a_conversation_cancelled_before_a_turn_sends_nothing,
    close_during_a_conversations_turn_reports_closed,
    a_cancel_ends_the_wait_for_a_process_a_conversation_holds,
);

on_both_backends!(a_cancel_ends_a_conversations_turn_in_flight_and_refuses_the_next);
