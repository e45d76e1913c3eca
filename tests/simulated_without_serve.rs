//! A program that builds `Session::builder().simulated()` but whose `main` forgot
//! `claude_rayon::simulator::serve_if_requested()`, as a new user's might: `build()` refuses
//! at once with an error that names the call, and the program is started again at most once
//! (it used to start itself again and again: 6,707 processes after 15 s).
//!
//! A test binary of its own (`harness = false`): its `main` is that program. Each copy started
//! as the simulator appends its pid to the file named by `STARTS_ENV`, and a copy that finds
//! more than a few there exits at once, so that a regression fails this test instead of
//! filling the machine with processes.

use std::io::Write;
use std::path::Path;

use claude_rayon::{CliError, Error, Session};

/// The file each copy of this program appends its pid to.
const STARTS_ENV: &str = "CLAUDE_RAYON_TEST_SIMULATOR_STARTS";
/// A copy that finds this many starts before it ends at once (the fuse).
const FUSE: usize = 4;

/// What the user wrote: a simulated session and one item, but no `serve_if_requested()`.
fn users_program() -> Result<String, Error> {
    let session = Session::builder().simulated()?.concurrency(2).build()?;
    let answer = session.query(
        "Summarise this support ticket in one line: the export to CSV has failed every night \
         since Tuesday with a timeout after about ninety seconds, and the finance team needs \
         the file for the month-end close on Friday morning.",
    )?;
    Ok(answer.text)
}

fn starts(record: &Path) -> Vec<String> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn main() {
    if let Some(record) = std::env::var_os(STARTS_ENV) {
        // A copy started as the simulator: note the start, and burn the fuse if need be.
        let record = Path::new(&record);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(record)
            .unwrap();
        writeln!(file, "{}", std::process::id()).unwrap();
        drop(file);
        if starts(record).len() > FUSE {
            std::process::exit(9);
        }
        match users_program() {
            Ok(_) => std::process::exit(0),
            Err(error) => {
                eprintln!("{error}");
                std::process::exit(1);
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("starts");
    // Copies inherit it (and this process records nothing itself).
    std::env::set_var(STARTS_ENV, &record);
    let error = users_program().unwrap_err();
    let starts = starts(&record);
    assert!(
        starts.len() <= 1,
        "the program was started {} times as the simulator: {starts:?}",
        starts.len()
    );
    assert!(
        matches!(error, Error::Cli(CliError::SimulatorNotServed { .. })),
        "not the simulator error: {error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("claude_rayon::simulator::serve_if_requested()"),
        "{message}"
    );
    // The copy reached its own build() and refused there: it ended, it was not killed.
    assert!(message.contains("exited with code 1"), "{message}");
    println!("test simulated_without_serve ... ok ({message})");
}
