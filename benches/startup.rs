//! Starting many processes, on the real CLI against a loopback mock API.
//!
//! Section 1: time to the first answer and to the whole batch, with processes started a few at
//! a time (the default, `max_starting_processes` = the number of cores) and all at once, for
//! 2, 8 and 32 processes, side by side, at an instant API.
//! Section 2: where a process's start-up CPU goes: user + system CPU of one CLI process (and
//! what it started and reaped) from start to its first answer, with the seal as it was in
//! 0.1.0 and as it is now (the CLI's own calls, git and the `ps` shell off), alternating,
//! medians of 7.
//! Section 3: 200 support tickets at a 3 s API latency with 32 processes (the latency bound is
//! 200 / 32 × 3 s = 18.75 s): a bare driver with the 0.1.0 seal, a bare driver with the seal
//! now, and `claude_map`, one after the other.
//!
//! Run: `CLAUDE_CODE_BIN=/path/to/claude cargo bench --bench startup` (about 3 minutes).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use claude_rayon_mock_api::{Fault, MockApi, Reply, CLI_ENV_REMOVE};

use claude_rayon::prelude::*;
use claude_rayon::SessionBuilder;
use rayon::prelude::*;

/// (time to the first answer, time to the last) for `2 × concurrency` items.
fn run(builder: SessionBuilder, concurrency: usize) -> (Duration, Duration) {
    let session = builder.concurrency(concurrency).build().expect("session");
    let started = Instant::now();
    let results: Vec<_> = (0..2 * concurrency)
        .into_par_iter()
        .claude_map(&session, |i| format!("item {i}"))
        .collect();
    let whole = started.elapsed();
    assert!(results.iter().all(Result::is_ok), "every item must succeed");
    let first = session
        .stats()
        .time_to_first_result
        .expect("an answer came");
    drop(session);
    (first, whole)
}

fn main() {
    let Some(cli) = common::real_cli() else {
        println!("startup: skipped (set CLAUDE_CODE_BIN to the claude executable)");
        return;
    };
    let api = MockApi::start();
    let home = tempfile::tempdir().unwrap();
    let env = api.cli_env(home.path());
    let make = || common::real_builder(&cli, &env, claude_rayon_mock_api::CLI_ENV_REMOVE);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("{cores} cores; items = 2 x processes; times in seconds");
    println!("processes  first answer: at once  staggered   whole batch: at once  staggered");
    for n in [2usize, 8, 32] {
        let (first_at_once, whole_at_once) = run(make().cli(|c| c.max_starting_processes(n)), n);
        let (first_staggered, whole_staggered) = run(make(), n);
        println!(
            "{n:>9}  {:>20.2}  {:>9.2}  {:>20.2}  {:>9.2}",
            first_at_once.as_secs_f64(),
            first_staggered.as_secs_f64(),
            whole_at_once.as_secs_f64(),
            whole_staggered.as_secs_f64()
        );
    }
    cpu_sections(&cli, &api, home.path());
}

/// User + system CPU of one CLI process and the descendants it reaped, from its start to its
/// first answer; `None` if it gave none within [`ANSWER_PATIENCE`].
// Reaped with wait4, which `Child::wait` cannot do: it gives the child's resource usage.
#[allow(clippy::zombie_processes)]
fn start_cpu(
    cli: &std::path::Path,
    api: &MockApi,
    home: &std::path::Path,
    cwd: &std::path::Path,
    seal: common::Seal,
) -> Option<Duration> {
    let mut command = common::bare_command((cli, api, home, cwd), seal, &[]);
    let mut child = command.spawn().expect("spawn the CLI");
    let mut stdin = child.stdin.take().expect("stdin");
    let message = serde_json::json!({
        "type": "user",
        "message": { "role": "user", "content": common::ticket(1, 600) },
    });
    writeln!(stdin, "{message}").expect("write");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let (answered_tx, answered) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let answered = stdout
            .lines()
            .map_while(Result::ok)
            .any(|line| common::is_result(&line));
        let _ = answered_tx.send(answered);
    });
    // A CLI that never answers is reported, instead of the bench hanging.
    let answered = answered.recv_timeout(ANSWER_PATIENCE).unwrap_or(false);
    // Killed after its answer: what is measured is a start and one answer, not the exit.
    let _ = child.kill();
    drop(stdin);
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, writing only into the structs we pass.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4");
    reader.join().expect("reader");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    answered.then(|| tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// How long a process may take to its first answer in the start-up CPU section.
const ANSWER_PATIENCE: Duration = Duration::from_secs(60);

fn cpu_sections(cli: &std::path::Path, api: &MockApi, home: &std::path::Path) {
    let cwd = tempfile::tempdir().unwrap();
    println!();
    println!("== start-up CPU of one process (user + system, to its first answer), medians of 7");
    let (mut before, mut now) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        before.push(start_cpu(cli, api, home, cwd.path(), common::Seal::Before));
        now.push(start_cpu(cli, api, home, cwd.path(), common::Seal::Now));
        if before.last() == Some(&None) {
            break;
        }
    }
    let now = common::median(
        now.into_iter()
            .map(|d| d.expect("the sealed CLI answers"))
            .collect(),
    );
    let before_answers = match before.into_iter().collect::<Option<Vec<_>>>() {
        Some(before) => {
            let before = common::median(before);
            println!(
                "  seal of 0.1.0 {:.2} s   seal now {:.2} s   ({:.0}% less)",
                before.as_secs_f64(),
                now.as_secs_f64(),
                100.0 * (1.0 - now.as_secs_f64() / before.as_secs_f64())
            );
            true
        }
        None => {
            println!(
                "  seal of 0.1.0: no answer within {} s   seal now {:.2} s",
                ANSWER_PATIENCE.as_secs(),
                now.as_secs_f64()
            );
            false
        }
    };
    let seals: &[common::Seal] = if before_answers {
        &[common::Seal::Before, common::Seal::Now]
    } else {
        &[common::Seal::Now]
    };

    println!();
    println!("== 200 tickets, API latency 3 s, 32 processes (latency bound 18.75 s)");
    api.set_reply(|_| Reply::Fault(Fault::Slow(Duration::from_secs(3))));
    let tickets: Vec<String> = (0..200)
        .map(|i| common::ticket(i, 300 + (i * 97) % 1700))
        .collect();
    for &seal in seals {
        api.clear_requests();
        let cpu = common::children_cpu_time();
        let took = common::bare_driver((cli, api, home, cwd.path()), &tickets, 32, seal, &[]);
        println!(
            "  bare driver, seal {:<6}  {:>6.2} s  ({} API calls, CLI CPU {:.1} s)",
            format!("{seal:?}"),
            took.as_secs_f64(),
            api.request_count(),
            (common::children_cpu_time() - cpu).as_secs_f64()
        );
    }
    api.clear_requests();
    let env = api.cli_env(home);
    let cpu = common::children_cpu_time();
    let session = common::real_builder(cli, &env, CLI_ENV_REMOVE)
        .concurrency(32)
        .build()
        .expect("session");
    let started = Instant::now();
    let answered = tickets
        .par_iter()
        .claude_map(&session, |t| t.to_string())
        .filter(Result::is_ok)
        .count();
    let took = started.elapsed();
    assert_eq!(answered, tickets.len(), "every ticket answered");
    let first = session.stats().time_to_first_result;
    session.close().expect("close");
    println!(
        "  claude_map               {:>6.2} s  ({} API calls, CLI CPU {:.1} s, first answer after {:.2} s)",
        took.as_secs_f64(),
        api.request_count(),
        (common::children_cpu_time() - cpu).as_secs_f64(),
        first.map_or(0.0, |d| d.as_secs_f64())
    );
}
