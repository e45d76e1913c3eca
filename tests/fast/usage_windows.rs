//! Subscription usage windows (claude.ai logins), with the simulator reporting them as the
//! real CLI does: a used-up window pauses every item until it resets and nothing fails, a
//! warning is logged once, a spend cap stops the run, and a cancel or close ends the pause.

use crate::support;

use std::collections::HashMap;
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use claude_rayon::prelude::*;
use claude_rayon::{Cancel, Error, Outcome, Response, Session, UsageWindow};
use rayon::prelude::*;
use support::{quick_retries, thread_prefix, ticket, wait_until, Fake};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A window that is used up until `until` (seconds since the UNIX epoch).
fn used_up_until(fake: &Fake, until: u64, window: &str) -> claude_rayon::SessionBuilder {
    fake.builder().cli(|c| {
        c.env(
            "CLAUDE_RAYON_SIM_USAGE_LIMIT_UNTIL",
            format!("{until},{window}"),
        )
    })
}

fn tickets(n: usize) -> Vec<String> {
    (0..n).map(|i| ticket(i, 600)).collect()
}

/// When each prompt reached a fake CLI, in milliseconds since the UNIX epoch.
fn prompt_times(fake: &Fake) -> Vec<(String, u64)> {
    fake.events()
        .iter()
        .filter(|e| e["event"] == "prompt")
        .map(|e| {
            (
                e["prompt"].as_str().unwrap().to_string(),
                e["t_ms"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_used_up_window_pauses_every_worker_until_it_resets_and_nothing_fails() {
    let fake = Fake::new();
    // Resets two seconds from now: every call before is refused.
    let until = unix_now() + 2;
    let session = used_up_until(&fake, until, "five_hour")
        .concurrency(3)
        // A refused call spent as a retry would fail the items here.
        .retry_policy(quick_retries(0))
        .build()
        .unwrap();
    let items = tickets(8);
    let outcome: Outcome<(String, Response), String> = items
        .clone()
        .into_par_iter()
        .claude_map(&session, |t| t.clone())
        .collect();
    let failed: Vec<_> = outcome.dead_letter.iter().map(|f| &f.error).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(outcome.ok.len(), items.len());
    for (item, response) in &outcome.ok {
        assert_eq!(response.text, format!("echo: {item}"));
    }
    let prompts = prompt_times(&fake);
    let reset_ms = until * 1000;
    // Only the calls in flight when the window closed were refused: no item was sent again
    // during the window, let alone failed one after another.
    let refused = prompts.iter().filter(|(_, t)| *t < reset_ms).count();
    assert!(
        (1..=3).contains(&refused),
        "{refused} prompts reached the CLI before the reset"
    );
    // After the reset, every item was asked exactly once.
    let mut answered: HashMap<&str, usize> = HashMap::new();
    for (prompt, _) in prompts.iter().filter(|(_, t)| *t >= reset_ms) {
        *answered.entry(prompt.as_str()).or_default() += 1;
    }
    assert_eq!(answered.len(), items.len());
    assert!(answered.values().all(|n| *n == 1), "{answered:?}");
    let stats = session.stats();
    assert_eq!(stats.usage_limit_pauses, 1, "one window, one pause");
    assert!(stats.usage_limit_wait > Duration::ZERO);
    assert_eq!((stats.failed, stats.retried), (0, 0));
    // The refused calls reached the API: they are requests.
    assert_eq!(stats.requests, prompts.len() as u64);
}

/// Log records kept for the tests (warnings and above), with the thread that made them.
fn captured() -> &'static Mutex<Vec<(String, String)>> {
    static RECORDS: OnceLock<Mutex<Vec<(String, String)>>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        struct Capture;
        impl log::Log for Capture {
            fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
                metadata.level() <= log::Level::Warn
            }
            fn log(&self, record: &log::Record<'_>) {
                if self.enabled(record.metadata()) {
                    let thread = std::thread::current().name().unwrap_or("").to_string();
                    captured()
                        .lock()
                        .unwrap()
                        .push((thread, record.args().to_string()));
                }
            }
            fn flush(&self) {}
        }
        // Set once, before any record is taken: `captured` is not re-entered here.
        static CAPTURE: Capture = Capture;
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Warn);
        Mutex::new(Vec::new())
    })
}

#[test]
fn a_warning_is_logged_once_per_window_not_per_item() {
    captured();
    let fake = Fake::new();
    let session = fake.builder().concurrency(3).build().unwrap();
    let prefix = thread_prefix(&session);
    let items: Vec<String> = (0..9)
        .map(|i| {
            let window = if i % 3 == 0 {
                "seven_day,0.8"
            } else {
                "five_hour,0.95"
            };
            format!("{} [[sim:usage-warning={window}]]", ticket(i, 500))
        })
        .collect();
    let outcome: Outcome<(String, Response), String> = items
        .into_par_iter()
        .claude_map(&session, |t| t.clone())
        .collect();
    assert_eq!((outcome.ok.len(), outcome.dead_letter.len()), (9, 0));
    let warnings: Vec<String> = captured()
        .lock()
        .unwrap()
        .iter()
        .filter(|(thread, _)| thread.starts_with(&prefix))
        .map(|(_, text)| text.clone())
        .collect();
    let about = |window: &str| {
        warnings
            .iter()
            .filter(|w| w.contains(&format!("{window} usage window")))
            .collect::<Vec<_>>()
    };
    let five_hour = about("five-hour");
    assert_eq!(five_hour.len(), 1, "{warnings:#?}");
    assert!(
        five_hour[0].contains("95% used") && five_hour[0].contains("UTC"),
        "{}",
        five_hour[0]
    );
    assert_eq!(about("weekly").len(), 1, "{warnings:#?}");
    assert_eq!(session.stats().usage_limit_pauses, 0);
}

#[test]
fn a_spend_limit_stops_the_run_without_a_pause_or_a_retry() {
    let fake = Fake::new();
    let session = fake.builder().concurrency(2).build().unwrap();
    let items: Vec<String> = (0..6)
        .map(|i| format!("{} [[sim:spend-limit]]", ticket(i, 500)))
        .collect();
    let outcome: Outcome<(String, Response), String> = items
        .clone()
        .into_par_iter()
        .claude_map(&session, |t| t.clone())
        .collect();
    assert!(outcome.ok.is_empty());
    assert_eq!(outcome.dead_letter.len(), items.len());
    let mut reached = 0;
    for failed in &outcome.dead_letter {
        assert!(items.contains(&failed.item), "the item comes back");
        match &failed.error {
            Error::SpendLimitReached { message } => {
                assert!(message.contains("monthly spend limit"), "{message}");
                assert_eq!(failed.attempts, 1, "not retried");
                reached += 1;
            }
            Error::Stopped(why) => {
                assert!(matches!(**why, Error::SpendLimitReached { .. }), "{why:?}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(reached >= 1);
    // No process was started after the stop: only those in flight when it came.
    assert!(fake.pids().len() <= 2, "{:?}", fake.pids());
    assert_eq!(fake.prompts().len(), reached);
    let stats = session.stats();
    assert_eq!((stats.usage_limit_pauses, stats.retried), (0, 0));
    assert_eq!(session.throttle().paused_until(), None);
}

#[test]
fn a_reset_further_than_the_session_waits_fails_the_run_with_the_window() {
    let fake = Fake::new();
    let until = unix_now() + 3 * 86_400;
    let session = used_up_until(&fake, until, "seven_day")
        .concurrency(2)
        .max_usage_limit_wait(Duration::from_secs(5 * 3600))
        .build()
        .unwrap();
    let items = tickets(5);
    let outcome: Outcome<(String, Response), String> = items
        .into_par_iter()
        .claude_map(&session, |t| t.clone())
        .collect();
    assert!(outcome.ok.is_empty());
    let mut reached = 0;
    for failed in &outcome.dead_letter {
        let error = match &failed.error {
            Error::Stopped(why) => &**why,
            error => {
                reached += 1;
                error
            }
        };
        match error {
            Error::UsageLimitReached {
                window: UsageWindow::SevenDay,
                resets_at,
                message,
            } => {
                assert_eq!(*resets_at, Some(UNIX_EPOCH + Duration::from_secs(until)));
                assert!(message.contains("weekly limit"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(reached >= 1);
    assert_eq!(fake.prompts().len(), reached);
    assert_eq!(session.stats().usage_limit_pauses, 0);
}

/// Runs `items` on `session` on another thread; the outcome comes back on the channel.
fn run_in_background(
    session: &Session,
    items: Vec<String>,
    cancel: Option<Cancel>,
) -> mpsc::Receiver<Outcome<(String, Response), String>> {
    let (tx, rx) = mpsc::channel();
    let session = session.clone();
    std::thread::spawn(move || {
        let map = items.into_par_iter().claude_map(&session, |t| t.clone());
        let outcome = match &cancel {
            Some(cancel) => map.with_cancel(cancel).collect(),
            None => map.collect(),
        };
        let _ = tx.send(outcome);
    });
    rx
}

#[test]
fn a_cancel_during_the_pause_ends_the_run() {
    let fake = Fake::new();
    // An hour away: only the cancel can end this run in the test's time.
    let session = used_up_until(&fake, unix_now() + 3600, "five_hour")
        .concurrency(2)
        .build()
        .unwrap();
    let cancel = Cancel::new();
    let done = run_in_background(&session, tickets(6), Some(cancel.clone()));
    wait_until("the pause", Duration::from_secs(30), || {
        session.stats().usage_limit_pauses == 1
    });
    cancel.cancel();
    let outcome = done
        .recv_timeout(Duration::from_secs(60))
        .expect("the cancel ends the pause");
    assert!(outcome.ok.is_empty());
    assert_eq!(outcome.dead_letter.len(), 6);
    for failed in &outcome.dead_letter {
        assert!(
            matches!(
                failed.error,
                Error::Cancelled | Error::UsageLimitReached { .. }
            ),
            "{:?}",
            failed.error
        );
    }
    assert!(fake.prompts().len() <= 2);
}

#[test]
fn closing_the_session_ends_the_pause() {
    let fake = Fake::new();
    let session = used_up_until(&fake, unix_now() + 3600, "five_hour")
        .concurrency(2)
        .build()
        .unwrap();
    let done = run_in_background(&session, tickets(4), None);
    wait_until("the pause", Duration::from_secs(30), || {
        session.stats().usage_limit_pauses == 1
    });
    session.clone().close().unwrap();
    let outcome = done
        .recv_timeout(Duration::from_secs(60))
        .expect("the close ends the pause");
    assert!(outcome.ok.is_empty());
    assert_eq!(outcome.dead_letter.len(), 4);
}
