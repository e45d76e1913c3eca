//! Real tier: a CLI that cannot start with the session's settings (a flag it does not know;
//! `bypassPermissions` as root, which the CLI refuses) is not started again for every item.
//! The second start that fails the same way stops the run with the CLI's own words, and no
//! request is counted: none reached the API.

use crate::support;

use claude_rayon::prelude::*;
use claude_rayon::{CliError, Error, PermissionMode, RetryPolicy, SessionBuilder};
use rayon::prelude::*;
use support::Real;

/// Items as a user writes them: a few hundred characters of prose each.
fn tickets() -> Vec<String> {
    (1..=3)
        .map(|i| {
            format!(
                "Ticket {i}: a customer reports that invoices exported since Monday show the \
                 wrong tax rate for orders shipped to Austria, that their accountant noticed it \
                 while closing the quarter, and that they need corrected copies before the \
                 filing deadline next week. Classify the ticket and draft a one-line reply."
            )
        })
        .collect()
}

/// Run three items on a session the CLI cannot start with; check that the run stopped after
/// at most one start per worker past the first failure, with the CLI's words, and that
/// nothing was counted as a request or reached the API.
fn check_cannot_start(real: &Real, builder: SessionBuilder, cli_says: &str) {
    let concurrency = 2;
    let session = builder
        .concurrency(concurrency)
        .retry_policy(RetryPolicy::default().max_retries(3))
        .build()
        .unwrap();
    let results: Vec<_> = tickets()
        .into_par_iter()
        .claude_map(&session, |t| t.clone())
        .collect();
    assert!(results.iter().all(Result::is_err), "{results:?}");
    let error = results
        .iter()
        .map(|r| &r.as_ref().unwrap_err().error)
        .find(|e| matches!(e, Error::Cli(CliError::CannotStart { .. })))
        .unwrap_or_else(|| panic!("one error says the CLI cannot start: {results:?}"));
    assert!(error.is_fatal());
    assert!(error.to_string().contains(cli_says), "{error}");
    let stats = session.stats();
    eprintln!(
        "{} starts, {} requests counted: {error}",
        stats.processes_started, stats.requests
    );
    assert!(
        stats.processes_started <= concurrency as u64 + 1,
        "{} starts for 3 items",
        stats.processes_started
    );
    assert_eq!(stats.requests, 0);
    assert_eq!(real.api.request_count(), 0);
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_flag_the_cli_does_not_know_stops_the_run_with_its_words() {
    let Some(real) = Real::start("a_flag_the_cli_does_not_know_stops_the_run_with_its_words")
    else {
        return;
    };
    let builder = real.builder().cli(|c| c.arg("--no-such-flag"));
    check_cannot_start(&real, builder, "unknown option '--no-such-flag'");
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn bypass_permissions_as_root_stops_the_run_with_the_clis_words() {
    let Some(real) = Real::start("bypass_permissions_as_root_stops_the_run_with_the_clis_words")
    else {
        return;
    };
    // SAFETY: geteuid only reads this process's user id.
    if unsafe { libc::geteuid() } != 0 {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\nNOTICE: bypass_permissions_as_root_stops_the_run_with_the_clis_words SKIPPED: \
             the CLI refuses bypassPermissions only to root, and this test is not root.\n"
        );
        return;
    }
    let builder = real
        .builder()
        .cli(|c| c.permission_mode(PermissionMode::BypassPermissions));
    check_cannot_start(&real, builder, "cannot be used with root/sudo privileges");
}
