//! Without a `redis-server` the Redis tests skip with a notice and pass, unless
//! CLAUDE_RAYON_REQUIRE_REDIS=1 (CI) makes that a failure: one of them, re-run in a child copy
//! of this binary with `REDIS_SERVER` naming nothing.

use std::process::{Command, Output, Stdio};

use crate::support::redis::{REDIS_SERVER, REQUIRE_REDIS};
use crate::support::{self};

/// The Redis test re-run without a server (any would do: this one is short).
const SOME_REDIS_TEST: (&str, &str) = (
    "redis::budget",
    "two_programs_on_one_shared_budget_stop_at_the_cap_together",
);

/// Runs [`SOME_REDIS_TEST`] with no `redis-server` to be found, `require` or not.
fn without_redis_server(require: bool) -> (Output, String, String) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            &support::this_test(SOME_REDIS_TEST.0, SOME_REDIS_TEST.1),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(REDIS_SERVER, "/nonexistent/redis-server")
        .env_remove(REQUIRE_REDIS)
        .stdin(Stdio::null());
    if require {
        command.env(REQUIRE_REDIS, "1");
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    support::assert_ran_one_test(&stdout);
    (output, stdout, stderr)
}

#[test]
fn without_a_redis_server_the_tests_skip_with_a_notice_unless_required() {
    let (output, stdout, stderr) = without_redis_server(false);
    assert!(
        output.status.success(),
        "a missing redis-server failed the test instead of skipping it:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("SKIPPED: no redis-server found"),
        "no notice that the test was skipped:\n{stdout}\n{stderr}"
    );

    let (output, stdout, stderr) = without_redis_server(true);
    assert!(
        !output.status.success(),
        "{REQUIRE_REDIS}=1 and no redis-server, yet the test passed:\n{stdout}\n{stderr}"
    );
    let said = format!("{REQUIRE_REDIS}=1 but no redis-server was found");
    assert!(
        stdout.contains(&said) || stderr.contains(&said),
        "the failure does not say why:\n{stdout}\n{stderr}"
    );
    assert!(
        !stderr.contains("SKIPPED"),
        "a required Redis test still says it was skipped:\n{stderr}"
    );
}
