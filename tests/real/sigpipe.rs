//! Real tier: a host program whose SIGPIPE action is the default (as many command-line
//! programs set it) survives a CLI process that dies while a prompt is being written to it;
//! the item fails like any crash.
//!
//! The host is this test binary re-run as a child process with SIGPIPE restored to its
//! default. The CLI is given a flag it does not know, so it exits at once without reading
//! its input, and a 1 MiB prompt (far more than a pipe holds) is written to it.

use crate::support;

use std::process::Command;
use std::time::Duration;

use claude_rayon::{CliError, Error};
use support::mock_api::MockApi;
use support::{builder_against, quick_retries, real_cli, Real};

const TEST_NAME: &str = "a_cli_dying_mid_write_does_not_kill_a_host_with_default_sigpipe";
const CHILD_ENV: &str = "CLAUDE_RAYON_TEST_SIGPIPE_HOST";

fn run_host(home: &str) -> ! {
    // SAFETY: restores the default action before any thread of the library exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let api = MockApi::start();
    let cli = real_cli(TEST_NAME).expect("the parent found the CLI");
    let session = builder_against(&cli, &api, std::path::Path::new(home))
        .cli(|c| c.arg("--no-such-flag-claude-rayon-test"))
        .retry_policy(quick_retries(2))
        .timeout(Duration::from_secs(60))
        .concurrency(1)
        .build()
        .unwrap();
    let prompt = "x".repeat(1024 * 1024);
    let error = session.query(&prompt).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Cli(CliError::ProcessExited { .. })
                | Error::Io(_)
                | Error::Cli(CliError::CannotStart { .. })
        ),
        "{error}"
    );
    println!("SURVIVED: {error}");
    std::process::exit(0);
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_cli_dying_mid_write_does_not_kill_a_host_with_default_sigpipe() {
    if let Ok(home) = std::env::var(CHILD_ENV) {
        run_host(&home);
    }
    let Some(real) = Real::start(TEST_NAME) else {
        return;
    };
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &support::this_test(module_path!(), TEST_NAME),
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, real.home.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        output.status.signal(),
        None,
        "the host was killed by a signal; stdout: {stdout}"
    );
    assert!(output.status.success(), "{stdout}");
    support::assert_ran_one_test(&stdout);
    assert!(stdout.contains("SURVIVED"), "{stdout}");
}
