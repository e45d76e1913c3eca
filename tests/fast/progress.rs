//! Progress: the callback's counts match stats() at the end, it is called at a bounded rate,
//! the bar renders the expected fields, and no bar is drawn when stderr is not a terminal.

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use claude_rayon::prelude::*;
use claude_rayon::Progress;
use rayon::prelude::*;
use support::{quick_retries, Fake};

#[test]
fn the_final_callback_matches_stats_and_calls_are_rate_limited() {
    let fake = Fake::new();
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let session = fake
        .builder()
        .concurrency(3)
        .retry_policy(quick_retries(1))
        .on_progress(move |p| sink.lock().unwrap().push(p.clone()))
        .build()
        .unwrap();
    let started = Instant::now();
    let results: Vec<_> = (0..60u32)
        .into_par_iter()
        .claude_map(&session, |i| {
            if i % 10 == 0 {
                format!("[[sim:error=400]] {i}")
            } else if i % 10 == 1 {
                format!("[[sim:fail-times=p{i},1,529]] [[sim:delay=5]] {i}")
            } else {
                format!("[[sim:delay=5]] {i}")
            }
        })
        .collect();
    let elapsed = started.elapsed();
    assert_eq!(results.len(), 60);
    let seen = seen.lock().unwrap();
    let last = seen.last().expect("at least the final report");
    assert!(last.finished && last.run == "claude_map");
    let stats = session.stats();
    assert_eq!((last.done, last.total), (60, Some(60)));
    assert_eq!(last.succeeded, stats.succeeded);
    assert_eq!(last.failed, stats.failed);
    assert_eq!((last.succeeded, last.failed), (54, 6));
    assert_eq!(last.retried, stats.retried);
    assert_eq!(last.retried, 6);
    assert_eq!(last.tokens, stats.usage.total());
    assert!((last.cost_usd - stats.cost_usd).abs() < 1e-12);
    // At most one report per 100 ms while running, plus the final one.
    let bound = (elapsed.as_millis() / 100) as usize + 2;
    assert!(seen.len() <= bound, "{} reports in {elapsed:?}", seen.len());
    // Counts only grow.
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
    assert_eq!(seen.iter().filter(|p| p.finished).count(), 1);
}

#[test]
fn streams_report_progress_without_a_total() {
    let fake = Fake::new();
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let session = fake
        .builder()
        .concurrency(2)
        .on_progress(move |p| sink.lock().unwrap().push(p.clone()))
        .build()
        .unwrap();
    let n = (0..15u32)
        .claude_stream_map(&session, |i| format!("line {i}"))
        .count();
    assert_eq!(n, 15);
    let seen = seen.lock().unwrap();
    let last = seen.last().unwrap();
    assert!(last.finished);
    assert_eq!((last.done, last.total, last.succeeded), (15, None, 15));
}

#[cfg(feature = "progress")]
#[test]
fn the_bar_renders_the_expected_fields() {
    use indicatif::{InMemoryTerm, ProgressDrawTarget};
    let fake = Fake::new();
    let term = InMemoryTerm::new(4, 200);
    let target_term = term.clone();
    let session = fake
        .builder()
        .concurrency(2)
        .retry_policy(quick_retries(0))
        .progress_draw_target(move || ProgressDrawTarget::term_like(Box::new(target_term.clone())))
        .build()
        .unwrap();
    let results: Vec<_> = (0..20u32)
        .into_par_iter()
        .claude_map(&session, |i| {
            if *i == 7 {
                "[[sim:error=400]]".to_string()
            } else {
                format!("item {i}")
            }
        })
        .collect();
    assert_eq!(results.len(), 20);
    let screen = term.contents();
    println!("{screen}");
    for field in [
        "claude_map",
        "20/20",
        "1 failed",
        "0 retries",
        "throttle waits",
        "pauses",
        "tokens",
        "$0.",
        "/s",
    ] {
        assert!(
            screen.contains(field),
            "{field:?} missing from the bar:\n{screen}"
        );
    }
}

/// A terminal that reports fewer columns than it has, as one whose size cannot be read does
/// (taken for 80 columns): what the bar pads its line to is then not the end of the line.
#[cfg(feature = "progress")]
#[derive(Debug)]
struct WiderThanItSays {
    screen: indicatif::InMemoryTerm,
    says: u16,
}

#[cfg(feature = "progress")]
impl indicatif::TermLike for WiderThanItSays {
    fn width(&self) -> u16 {
        self.says
    }
    fn height(&self) -> u16 {
        self.screen.height()
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.screen.move_cursor_up(n)
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.screen.move_cursor_down(n)
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.screen.move_cursor_right(n)
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.screen.move_cursor_left(n)
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.screen.write_line(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.screen.write_str(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.screen.clear_line()
    }
    fn flush(&self) -> std::io::Result<()> {
        self.screen.flush()
    }
}

#[cfg(feature = "progress")]
#[test]
fn the_bar_ends_its_line_when_the_run_ends() {
    use indicatif::{InMemoryTerm, ProgressDrawTarget, TermLike};
    let fake = Fake::new();
    let screen = InMemoryTerm::new(10, 240);
    let target_screen = screen.clone();
    let session = fake
        .builder()
        .concurrency(2)
        .progress_draw_target(move || {
            ProgressDrawTarget::term_like(Box::new(WiderThanItSays {
                screen: target_screen.clone(),
                says: 160,
            }))
        })
        .build()
        .unwrap();
    let results: Vec<_> = (0..12u32)
        .into_par_iter()
        .claude_map(&session, |i| {
            format!("Summarise ticket {i}: the export drops rows.")
        })
        .collect();
    assert_eq!(results.len(), 12);
    // What the program prints next, as `println!` would on the same terminal.
    screen.write_line("summary: 12 tickets").unwrap();
    let contents = screen.contents();
    let lines: Vec<&str> = contents.lines().collect();
    let bar = lines
        .iter()
        .position(|l| l.starts_with("claude_map ["))
        .unwrap_or_else(|| panic!("the last state stays on screen:\n{contents}"));
    assert!(lines[bar].contains("12/12"), "{contents}");
    assert!(
        !lines[bar].contains("summary"),
        "the next output landed on the bar's line:\n{contents}"
    );
    assert_eq!(
        lines.get(bar + 1).copied(),
        Some("summary: 12 tickets"),
        "the next output starts the next line:\n{contents}"
    );
    // A second run draws a bar of its own below, and ends it the same way.
    let _: Vec<_> = (0..3u32)
        .into_par_iter()
        .claude_map(&session, |i| format!("Summarise ticket {i}."))
        .collect();
    screen.write_line("done").unwrap();
    let contents = screen.contents();
    let lines: Vec<&str> = contents.lines().collect();
    let n = lines.len();
    assert!(
        lines[n - 2].starts_with("claude_map [") && lines[n - 2].contains("3/3"),
        "{contents}"
    );
    assert_eq!(lines[n - 1], "done", "{contents}");
}

/// The child of `no_bar_when_stderr_is_not_a_terminal`: this test binary re-run with its
/// stderr on a pipe, running a session with the bar turned on.
fn run_child_with_progress_on() -> ! {
    let fake = Fake::new();
    let session = fake
        .builder()
        .concurrency(2)
        .progress(true)
        .build()
        .unwrap();
    let results: Vec<_> = (0..10u32)
        .into_par_iter()
        .claude_map(&session, |i| format!("item {i}"))
        .collect();
    assert_eq!(results.len(), 10);
    eprintln!("CHILD DONE");
    std::process::exit(0);
}

#[test]
fn no_bar_when_stderr_is_not_a_terminal() {
    if std::env::var("CLAUDE_RAYON_TEST_PROGRESS_CHILD").is_ok() {
        run_child_with_progress_on();
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &support::this_test(module_path!(), "no_bar_when_stderr_is_not_a_terminal"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CLAUDE_RAYON_TEST_PROGRESS_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    support::assert_ran_one_test(&String::from_utf8_lossy(&output.stdout));
    assert!(stderr.contains("CHILD DONE"), "{stderr}");
    assert!(
        !stderr.contains("claude_map"),
        "a bar was drawn on a pipe:\n{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "escape codes on a pipe:\n{stderr}"
    );
}

#[cfg(feature = "progress")]
#[test]
fn a_pipeline_turns_its_own_bar_on_or_off() {
    use claude_rayon::pipeline::Pipeline;
    use indicatif::{InMemoryTerm, ProgressDrawTarget};
    let draw = |show: bool| {
        let fake = Fake::new();
        let term = InMemoryTerm::new(4, 200);
        let target_term = term.clone();
        // The session has somewhere to draw but does not ask for a bar itself.
        let session = fake
            .builder()
            .concurrency(2)
            .progress_draw_target(move || {
                ProgressDrawTarget::term_like(Box::new(target_term.clone()))
            })
            .progress(false)
            .build()
            .unwrap();
        let stats = Pipeline::builder(&session)
            .source(0..12u32)
            .prompt(|i: &u32| format!("item {i}"))
            .batch_size(5)
            .progress(show)
            .on_batch(|_| {})
            .run()
            .unwrap();
        assert_eq!(stats.succeeded, 12);
        term.contents()
    };
    let shown = draw(true);
    assert!(
        shown.contains("pipeline") && shown.contains("12 done"),
        "{shown}"
    );
    assert!(draw(false).trim().is_empty());
}

#[test]
fn progress_says_why_items_are_retried() {
    let fake = Fake::new();
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let session = fake
        .builder()
        .concurrency(1)
        .on_progress(move |p| sink.lock().unwrap().push(p.clone()))
        .build()
        .unwrap();
    let results: Vec<_> = (0..3u32)
        .into_par_iter()
        .claude_map(&session, |i| format!("[[sim:fail-times=w{i},1,529]] {i}"))
        .collect();
    assert!(results.iter().all(Result::is_ok));
    let last = seen.lock().unwrap().last().cloned().unwrap();
    let reason = last.retry_reason.expect("a reason");
    assert!(reason.contains("529"), "{reason}");
    assert!(session
        .stats()
        .last_retry_reason
        .is_some_and(|r| r.contains("529")));
    // A run without retries has no reason, even after one that had.
    seen.lock().unwrap().clear();
    let _: Vec<_> = (0..2u32)
        .into_par_iter()
        .claude_map(&session, |i| format!("fine {i}"))
        .collect();
    assert_eq!(seen.lock().unwrap().last().unwrap().retry_reason, None);
}
