//! A session's private working folder never outlives its program: removed by the watchdog
//! after `kill -9` or `exec` of the host, and swept at the next start when a program ended
//! without a watchdog; a folder whose program still runs is never touched. A temp folder
//! that does not exist is named in a typed error from `build()`.
//!
//! Each host is this test binary re-run as a child process (the test named in an environment
//! variable), so that it can be killed, exec another program, or run with its own TMPDIR.

use crate::support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use claude_rayon::{CliError, Error};
use support::{wait_until, Fake};

const HOST_TEST: &str = "CLAUDE_RAYON_TEST_FOLDER_HOST";
const HOST_THEN: &str = "CLAUDE_RAYON_TEST_FOLDER_HOST_THEN";
const GONE: Duration = Duration::from_secs(10);

/// The host: a session with its own private folder (no `cwd`), one item answered, the folder
/// reported; then it waits to be killed, or execs a program that waits.
fn run_host(then: &str) -> ! {
    let fake = Fake::new();
    let session = fake.builder().concurrency(1).build().unwrap();
    session
        .query("A customer asks whether the spring catalogue ships to Norway.")
        .unwrap();
    let folder = fake.events()[0]["cwd"].as_str().unwrap().to_string();
    println!("\nFOLDER {folder}");
    if then == "exec" {
        use std::os::unix::process::CommandExt;
        // Waits on stdin, like the host, until the test ends it.
        let error = Command::new("/bin/sh").args(["-c", "read x"]).exec();
        panic!("exec failed: {error}");
    }
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    std::process::exit(0);
}

/// Start this test's host; returns it with the private folder it reported.
fn start_host(test: &str, then: &str, tmpdir: Option<&Path>) -> (Child, PathBuf) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            &support::this_test(module_path!(), test),
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(HOST_TEST, test)
        .env(HOST_THEN, then)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(tmpdir) = tmpdir {
        command.env("TMPDIR", tmpdir).env_remove("XDG_RUNTIME_DIR");
    }
    let mut host = command.spawn().unwrap();
    let stdout = BufReader::new(host.stdout.take().unwrap());
    let mut before = String::new();
    let folder = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            let folder = l.split_once("FOLDER ").map(|(_, f)| PathBuf::from(f));
            before.push_str(&l);
            before.push('\n');
            folder
        })
        .expect("the host reports its folder");
    support::assert_ran_one_test(&before);
    (host, folder)
}

fn serve_as_host(test: &str) {
    if std::env::var(HOST_TEST).is_ok_and(|t| t == test) {
        run_host(&std::env::var(HOST_THEN).unwrap());
    }
}

#[test]
fn a_killed_hosts_private_folder_is_removed() {
    serve_as_host("a_killed_hosts_private_folder_is_removed");
    let (mut host, folder) = start_host("a_killed_hosts_private_folder_is_removed", "wait", None);
    assert!(folder.is_dir(), "{}", folder.display());
    host.kill().unwrap(); // SIGKILL: no destructor runs in the host.
    host.wait().unwrap();
    wait_until(
        &format!("{} removed after kill -9 of its host", folder.display()),
        GONE,
        || !folder.exists(),
    );
}

#[test]
fn a_host_that_execs_leaves_no_private_folder() {
    serve_as_host("a_host_that_execs_leaves_no_private_folder");
    let (mut host, folder) = start_host("a_host_that_execs_leaves_no_private_folder", "exec", None);
    wait_until(
        &format!("{} removed after its host ran exec", folder.display()),
        GONE,
        || !folder.exists(),
    );
    host.kill().unwrap();
    host.wait().unwrap();
}

/// The pid namespace of this process, as private folders' names carry it.
fn pid_namespace() -> String {
    let link = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let link = link.to_str().unwrap();
    link.trim_start_matches("pid:[")
        .trim_end_matches(']')
        .to_string()
}

/// When process `pid` started, in clock ticks since boot.
fn process_start(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(19).unwrap().to_string()
}

#[test]
fn folders_of_ended_programs_are_swept_at_the_next_start_and_live_ones_kept() {
    let test = "folders_of_ended_programs_are_swept_at_the_next_start_and_live_ones_kept";
    serve_as_host(test);
    let parent = tempfile::tempdir().unwrap();
    let ns = pid_namespace();
    let me = std::process::id();
    // A program that ended: a process that has exited; its pid may be anyone's now, but not
    // with the start time the folder names.
    let mut ended = Command::new("true").spawn().unwrap();
    let ended_pid = ended.id();
    ended.wait().unwrap();
    let dead = parent
        .path()
        .join(format!("claude-rayon-{ns}-{ended_pid}-1-abc-1-0"));
    // A pid that is alive now, with another start time: the pid was given to another process.
    let reused = parent
        .path()
        .join(format!("claude-rayon-{ns}-{me}-1-abc-1-0"));
    // This test process: alive, with its real start time.
    let live = parent.path().join(format!(
        "claude-rayon-{ns}-{me}-{}-abc-1-0",
        process_start(me)
    ));
    // Another pid namespace: its pids mean nothing here.
    let elsewhere = parent
        .path()
        .join(format!("claude-rayon-1-{ended_pid}-1-abc-1-0"));
    // Not one of ours by name.
    let other = parent.path().join("claude-rayon-notes");
    for folder in [&dead, &reused, &live, &elsewhere, &other] {
        std::fs::create_dir(folder).unwrap();
        std::fs::write(folder.join("left.txt"), "x").unwrap();
    }
    // A link named like a dead program's folder, to a folder that must stay whole.
    let target = tempfile::tempdir().unwrap();
    std::fs::write(target.path().join("keep.txt"), "x").unwrap();
    let link = parent
        .path()
        .join(format!("claude-rayon-{ns}-{ended_pid}-2-abc-1-0"));
    std::os::unix::fs::symlink(target.path(), &link).unwrap();

    let (mut host, folder) = start_host(test, "wait", Some(parent.path()));
    assert!(folder.starts_with(parent.path()), "{}", folder.display());
    assert!(!dead.exists(), "an ended program's folder is swept");
    assert!(!reused.exists(), "a folder whose pid was reused is swept");
    for kept in [&live, &elsewhere, &other] {
        assert!(kept.join("left.txt").exists(), "{} kept", kept.display());
    }
    assert!(
        target.path().join("keep.txt").exists(),
        "a link is not followed"
    );
    assert!(std::fs::symlink_metadata(&link).is_ok());
    drop(host.stdin.take());
    host.wait().unwrap();
    wait_until("the host's own folder removed", GONE, || !folder.exists());
}

const MISSING_TMPDIR_HOST: &str = "CLAUDE_RAYON_TEST_MISSING_TMPDIR";

#[test]
fn a_temp_folder_that_does_not_exist_is_named_at_build() {
    if std::env::var_os(MISSING_TMPDIR_HOST).is_some() {
        let error = claude_rayon::Session::builder()
            .cli(|c| c.cli_path(support::fake_cli()))
            .build()
            .unwrap_err();
        println!("\nERROR {error:?}");
        let Error::Cli(CliError::TempFolder { path, .. }) = &error else {
            panic!("not a TempFolder error: {error:?}");
        };
        println!("\nPATH {}", path.display());
        std::process::exit(0);
    }
    let missing = tempfile::tempdir().unwrap().path().join("gone");
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &support::this_test(
                module_path!(),
                "a_temp_folder_that_does_not_exist_is_named_at_build",
            ),
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(MISSING_TMPDIR_HOST, "1")
        .env("TMPDIR", &missing)
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    support::assert_ran_one_test(&stdout);
    assert!(
        stdout.contains(&format!("PATH {}", missing.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("TMPDIR"),
        "says where it came from: {stdout}"
    );
    assert!(!stdout.contains("I/O error talking to the claude process"));
}
