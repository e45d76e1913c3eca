//! A CLI that cannot start (a flag it does not know, `bypassPermissions` as root) is not
//! started again and again for every item: the second start that fails the same way stops
//! the run with the CLI's own message, and starts that failed are not counted as requests.

use crate::support;

use claude_rayon::prelude::*;
use claude_rayon::{CliError, Error, MapResult, Session};
use rayon::prelude::*;
use support::{quick_retries, Fake};

const REFUSAL: &str = "error: unknown option '--no-such-flag'";
const SECRET: &str = "sk-ant-start-failure-0123456789";

/// Items as a user writes them: a few hundred characters of prose each.
fn tickets() -> Vec<String> {
    (1..=3)
        .map(|i| {
            format!(
                "Support ticket {i}: the customer writes that since the last update the export \
                 button on the reports page does nothing at all, that they tried two browsers \
                 and cleared the cache, and that the monthly figures are due to their board \
                 on Friday. Summarise the problem in one sentence and say how urgent it is."
            )
        })
        .collect()
}

/// A session whose processes fail to start saying `start_error` (the simulator writes it and
/// exits 1), with `env` set besides, `concurrency` processes, and up to 3 retries an item.
fn failing_to_start(
    fake: &Fake,
    start_error: &str,
    env: &[(&str, &str)],
    concurrency: usize,
) -> Session {
    fake.builder()
        .cli(|mut c| {
            c = c.env("CLAUDE_RAYON_SIM_START_ERROR", start_error);
            for (key, value) in env {
                c = c.env(*key, *value);
            }
            c
        })
        .concurrency(concurrency)
        .retry_policy(quick_retries(3))
        .build()
        .unwrap()
}

/// Every ticket through `claude_map`.
fn map_tickets(session: &Session) -> Vec<MapResult<String>> {
    tickets()
        .into_par_iter()
        .claude_map(session, |t| t.clone())
        .collect()
}

#[test]
fn a_cli_that_cannot_start_stops_the_run_after_two_starts_that_fail_alike() {
    let fake = Fake::new();
    let start_error = format!("{REFUSAL} ({SECRET})");
    let session = failing_to_start(&fake, &start_error, &[("ANTHROPIC_API_KEY", SECRET)], 1);
    let results = map_tickets(&session);
    let cannot_start: Vec<&Error> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|f| &f.error)
        .filter(|e| matches!(e, Error::Cli(CliError::CannotStart { .. })))
        .collect();
    assert!(results.iter().all(Result::is_err), "{results:?}");
    assert_eq!(cannot_start.len(), 1, "{results:?}");
    let error = cannot_start[0];
    let message = error.to_string();
    assert!(message.contains(REFUSAL), "the CLI's own words: {message}");
    assert!(!message.contains(SECRET), "redacted: {message}");
    assert!(!format!("{error:?}").contains(SECRET));
    assert!(error.is_fatal() && !error.is_retryable());
    assert!(
        matches!(
            error,
            Error::Cli(CliError::CannotStart { code: Some(1), .. })
        ),
        "{error:?}"
    );
    // The other items never started a process: the run stopped.
    for result in &results {
        let error = &result.as_ref().unwrap_err().error;
        assert!(
            matches!(
                error,
                Error::Cli(CliError::CannotStart { .. }) | Error::Stopped(_)
            ),
            "{error:?}"
        );
    }
    let stats = session.stats();
    assert_eq!(
        fake.starts().len(),
        2,
        "one start, then one more that failed alike"
    );
    assert_eq!(stats.processes_started, 2);
    assert_eq!(
        stats.requests, 0,
        "a process that never started sent nothing"
    );
    assert_eq!(stats.failed, 3);
}

#[test]
fn concurrent_starts_that_fail_alike_stop_the_run_at_once() {
    let fake = Fake::new();
    let session = failing_to_start(&fake, REFUSAL, &[], 3);
    let results = map_tickets(&session);
    assert!(results.iter().all(Result::is_err));
    assert!(results.iter().any(|r| matches!(
        r.as_ref().unwrap_err().error,
        Error::Cli(CliError::CannotStart { .. })
    )));
    // Each worker starts at most one process after the first failure.
    assert!(fake.starts().len() <= 4, "{} starts", fake.starts().len());
    assert_eq!(session.stats().requests, 0);
}

#[test]
fn a_start_that_fails_once_is_tried_again_and_not_counted() {
    let fake = Fake::new();
    let session = failing_to_start(
        &fake,
        REFUSAL,
        &[("CLAUDE_RAYON_SIM_START_ERROR_TIMES", "1")],
        1,
    );
    let ticket = &tickets()[0];
    let response = session.query(ticket).unwrap();
    assert_eq!(response.text, format!("echo: {ticket}"));
    let stats = session.stats();
    assert_eq!(fake.starts().len(), 2);
    assert_eq!(
        stats.requests, 1,
        "only the start that answered sent a request"
    );
    assert_eq!(stats.retried, 1);
    assert_eq!(stats.succeeded, 1);
}

#[test]
fn starts_that_fail_differently_are_each_tried_again() {
    let fake = Fake::new();
    // Each process of this CLI says something else as it fails: a problem that changes
    // (a busy machine, say) is not fatal by itself.
    let dir = tempfile::tempdir().unwrap();
    let cli = dir.path().join("claude");
    std::fs::write(
        &cli,
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo '2.1.332 (Claude Code)'; exit 0; }\n\
         echo \"cannot start (process $$)\" >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
    let session = fake
        .builder()
        .cli(|c| c.cli_path(&cli))
        .concurrency(1)
        .retry_policy(quick_retries(2))
        .build()
        .unwrap();
    let error = session.query(&tickets()[0]).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Cli(CliError::ProcessExited { code: Some(1), .. })
        ),
        "{error:?}"
    );
    let stats = session.stats();
    assert_eq!(stats.processes_started, 3, "every try started a process");
    assert_eq!(stats.requests, 0);
}
