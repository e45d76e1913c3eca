//! Real tier: after `kill -9` of the host program, nothing the CLI started outlives it: not
//! the CLI, not its hooks' background processes (one of them left its process group with
//! `setsid`), not its MCP servers.
//!
//! The host is this test binary re-run as a child process (the same test, told so by an
//! environment variable), with the user's configuration loaded so that hooks and MCP servers
//! start.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::hostile::Hostile;
use support::mock_api::MockApi;
use support::{builder_against, pid_alive, real_cli, wait_until, Real};

const TEST_NAME: &str = "everything_the_cli_started_dies_with_a_killed_host";
const CHILD_HOME: &str = "CLAUDE_RAYON_TEST_HOST_HOME";
const CHILD_CWD: &str = "CLAUDE_RAYON_TEST_HOST_CWD";

/// The host: start a session whose processes run hooks and MCP servers, answer two items,
/// report the CLI pids, then wait to be killed.
fn run_host(home: &str, cwd: &str) -> ! {
    let api = MockApi::start();
    let cli = real_cli(TEST_NAME).expect("the parent found the CLI");
    let session = builder_against(&cli, &api, std::path::Path::new(home))
        .cwd(cwd)
        .model("claude-sonnet-4-5")
        .load_user_config(true)
        .cli_max_retries(Some(0))
        .timeout(Duration::from_secs(60))
        .concurrency(2)
        .build()
        .unwrap();
    std::thread::scope(|s| {
        for i in 0..2 {
            let session = &session;
            s.spawn(move || session.query(format!("item {i}")).unwrap());
        }
    });
    let pids: Vec<String> = support::cli_pids_with_home(std::path::Path::new(home))
        .iter()
        .map(u32::to_string)
        .collect();
    assert_eq!(pids.len(), 2, "two CLI processes: {pids:?}");
    println!("\nREADY {}", pids.join(" "));
    // Wait for the parent's kill: stdin stays open until then.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    std::process::exit(0);
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn everything_the_cli_started_dies_with_a_killed_host() {
    if let (Ok(home), Ok(cwd)) = (std::env::var(CHILD_HOME), std::env::var(CHILD_CWD)) {
        run_host(&home, &cwd);
    }
    let Some(real) = Real::start(TEST_NAME) else {
        return;
    };
    let hostile = Hostile::install(&real);
    let mut host = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads", "1"])
        .env(CHILD_HOME, real.home.path())
        .env(CHILD_CWD, real.cwd.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = host.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The test harness prints its own words before ours on the same line.
            if let Some((_, pids)) = line.split_once("READY ") {
                let _ = tx.send(pids.to_string());
            }
        }
    });
    let cli_pids: Vec<u32> = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(pids) => pids
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect(),
        Err(_) => {
            let _ = host.kill();
            panic!("the host never became ready");
        }
    };
    // Every hook run leaves two processes (one outside its group); each MCP server is one.
    wait_until(
        "hooks and MCP servers started",
        Duration::from_secs(30),
        || hostile.mcp_starts() >= 1 && hostile.hook_runs() >= 2,
    );
    let started = hostile.leftover_pids();
    assert!(started.len() >= 5, "{started:?}");
    assert!(started.iter().chain(&cli_pids).all(|&p| pid_alive(p)));

    // SAFETY: signals the child process this test started.
    unsafe {
        libc::kill(host.id() as i32, libc::SIGKILL);
    }
    let _ = host.wait();
    let killed_at = Instant::now();
    for pid in cli_pids.iter().chain(&started) {
        wait_until(
            &format!("process {pid} gone after the host was killed"),
            Duration::from_secs(10),
            || !pid_alive(*pid),
        );
    }
    eprintln!(
        "{} descendants gone {:?} after kill -9 of the host",
        cli_pids.len() + started.len(),
        killed_at.elapsed()
    );
}
