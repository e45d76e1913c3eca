//! Real tier: after `kill -9` of the host program, nothing the CLI started outlives it: not
//! the CLI, not its hooks' background processes (one of them left its process group with
//! `setsid`, one left it with an empty environment too, `setsid env -i`), not its MCP
//! servers; and so even when the host forked a child that lives on.
//!
//! The host is this test binary re-run as a child process (the same test, told so by an
//! environment variable), with the user's configuration loaded so that hooks and MCP servers
//! start.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::hostile::Hostile;
use support::mock_api::MockApi;
use support::{builder_against, pid_alive, real_cli, wait_until, Real};

const CHILD_TEST: &str = "CLAUDE_RAYON_TEST_HOST_TEST";
const CHILD_HOME: &str = "CLAUDE_RAYON_TEST_HOST_HOME";
const CHILD_CWD: &str = "CLAUDE_RAYON_TEST_HOST_CWD";
const CHILD_FORKS: &str = "CLAUDE_RAYON_TEST_HOST_FORKS";

/// The host: start a session whose processes run hooks and MCP servers, answer two items,
/// fork a child that lives on if told to, report the pids, then wait to be killed.
fn run_host(test: &str, home: &str, cwd: &str) -> ! {
    let api = MockApi::start();
    let cli = real_cli(test).expect("the parent found the CLI");
    let session = builder_against(&cli, &api, std::path::Path::new(home))
        .cli(|c| c.cwd(cwd))
        .model("claude-sonnet-4-5")
        .cli(|c| c.load_user_config(true).cli_max_retries(Some(0)))
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
    let mut forked = 0;
    if std::env::var_os(CHILD_FORKS).is_some() {
        // A child that is a copy of this program (no exec): it holds a copy of every file
        // descriptor the program had when it forked.
        // SAFETY: the child only calls pause, which is async-signal-safe, until killed.
        forked = unsafe { libc::fork() };
        if forked == 0 {
            loop {
                // SAFETY: waits for a signal; async-signal-safe.
                unsafe {
                    libc::pause();
                }
            }
        }
        assert!(forked > 0, "fork failed");
    }
    println!("\nREADY {forked} {}", pids.join(" "));
    // Wait for the parent's kill: stdin stays open until then.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    std::process::exit(0);
}

/// Kills a process this test started when dropped, so a failed test leaves none behind.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: signals a process this test started (the host's forked child).
            unsafe {
                libc::kill(self.0 as i32, libc::SIGKILL);
            }
        }
    }
}

/// Whether a process lost the environment the CLI gave it (`env -i`; the shell then sets
/// only `PWD`): no owner marker, no `HOME`.
fn lost_its_environment(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
        !env.split(|b| *b == 0)
            .any(|v| v.starts_with(b"HOME=") || v.starts_with(b"CLAUDE_RAYON_OWNER="))
    })
}

fn check_everything_dies_with_a_killed_host(test: &str, host_forks: bool) {
    if let (Ok(home), Ok(cwd), Ok(which)) = (
        std::env::var(CHILD_HOME),
        std::env::var(CHILD_CWD),
        std::env::var(CHILD_TEST),
    ) {
        if which == test {
            run_host(test, &home, &cwd);
        }
        return;
    }
    let Some(real) = Real::start(test) else {
        return;
    };
    let hostile = Hostile::install(&real);
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            &support::this_test(module_path!(), test),
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_TEST, test)
        .env(CHILD_HOME, real.home.path())
        .env(CHILD_CWD, real.cwd.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if host_forks {
        command.env(CHILD_FORKS, "1");
    }
    let mut host = command.spawn().unwrap();
    let stdout = host.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut before = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The test harness prints its own words before ours on the same line.
            if let Some((_, pids)) = line.split_once("READY ") {
                let _ = tx.send((before.clone(), pids.to_string()));
            }
            before.push_str(&line);
            before.push('\n');
        }
    });
    let mut reported: Vec<u32> = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok((before, pids)) => {
            support::assert_ran_one_test(&before);
            pids
        }
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect(),
        Err(_) => {
            let _ = host.kill();
            panic!("the host never became ready");
        }
    };
    let forked = KillOnDrop(reported.remove(0));
    let cli_pids = reported;
    assert_eq!(forked.0 > 0, host_forks);
    // Every hook run leaves three processes (two outside its group, one of them with an
    // empty environment); each MCP server is one.
    wait_until(
        "hooks and MCP servers started",
        Duration::from_secs(30),
        || {
            hostile.mcp_starts() >= 1
                && hostile.hook_runs() >= 2
                && hostile
                    .leftover_pids()
                    .into_iter()
                    .any(lost_its_environment)
        },
    );
    let started = hostile.leftover_pids();
    assert!(started.len() >= 7, "{started:?}");
    assert!(started.iter().chain(&cli_pids).all(|&p| pid_alive(p)));

    // SAFETY: signals the child process this test started.
    unsafe {
        libc::kill(host.id() as i32, libc::SIGKILL);
    }
    let _ = host.wait();
    let killed_at = Instant::now();
    for pid in cli_pids.iter().chain(&started) {
        wait_until(
            &format!(
                "process {pid} gone after the host was killed (environment lost: {})",
                lost_its_environment(*pid)
            ),
            Duration::from_secs(10),
            || !pid_alive(*pid),
        );
    }
    eprintln!(
        "{} descendants gone {:?} after kill -9 of the host",
        cli_pids.len() + started.len(),
        killed_at.elapsed()
    );
    if host_forks {
        assert!(pid_alive(forked.0), "the host's own child is not the CLI's");
    }
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn everything_the_cli_started_dies_with_a_killed_host() {
    check_everything_dies_with_a_killed_host(
        "everything_the_cli_started_dies_with_a_killed_host",
        false,
    );
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn everything_the_cli_started_dies_with_a_killed_host_that_forked() {
    check_everything_dies_with_a_killed_host(
        "everything_the_cli_started_dies_with_a_killed_host_that_forked",
        true,
    );
}
