//! Find anomalies in a log with `claude_windows`: the file is read line by line as the
//! analysis goes (never whole), overlapping windows of lines are analysed in parallel, and the
//! findings print in file order with the line numbers they cover.
//!
//! ```sh
//! cargo run -p examples --bin log_anomalies -- examples/data/sample.log
//! cargo run -p examples --bin log_anomalies -- --simulate --window 20 --step 10 examples/data/sample.log
//! ```
//!
//! Flags: `--window N` lines per window (default 20), `--step N` lines between window starts
//! (default 10, so windows overlap by half and an anomaly at a window's edge is still seen
//! with its context), `--backend api|cli`, `--simulate`, `--model NAME`, `--concurrency N` (default 4).
//!
//! Because windows overlap, two windows may report the same line: a finding that cites a line
//! an earlier window already reported is left out.

mod common;

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::rc::Rc;

use claude_rayon::prelude::*;
use claude_rayon::Session;

const USAGE: &str =
    "usage: log_anomalies [--window N] [--step N] [--backend api|cli] [--simulate] [--model M] [--concurrency N] FILE";

fn main() {
    claude_rayon::simulator::serve_if_requested();
    common::install_logger();
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(run(&args));
}

/// A number flag, or the default; `Err` with a message when it is not a positive number.
fn count_flag(args: &[String], name: &str, default: usize) -> Result<usize, String> {
    match common::flag_value(args, name) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "{name} needs a positive number, not {v:?}\n{USAGE}"
            )),
        },
    }
}

fn run(args: &[String]) -> i32 {
    let flags = ["--window", "--step", "--model", "--concurrency"];
    let positional = common::positional(args, &flags);
    let Some(path) = positional.first().map(PathBuf::from) else {
        eprintln!("{USAGE}");
        return 2;
    };
    let sizes = (
        count_flag(args, "--window", 20),
        count_flag(args, "--step", 10),
        count_flag(args, "--concurrency", 4),
    );
    let (size, step, concurrency) = match sizes {
        (Ok(size), Ok(step), Ok(concurrency)) => (size, step, concurrency),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err) => {
            eprintln!("cannot open {}: {err}", path.display());
            return 1;
        }
    };

    let Some(backend) = common::start(Session::builder().concurrency(concurrency), args, None)
    else {
        return 1;
    };
    let label = backend.label();

    // Lines are read lazily, numbered from 1. A read error ends the source; it is reported
    // after the windows read so far.
    let read_error: Rc<RefCell<Option<std::io::Error>>> = Rc::default();
    let lines = {
        let read_error = Rc::clone(&read_error);
        BufReader::new(file)
            .lines()
            .map_while(move |line| match line {
                Ok(line) => Some(line),
                Err(err) => {
                    *read_error.borrow_mut() = Some(err);
                    None
                }
            })
            .enumerate()
            .map(|(i, line)| (i + 1, line))
    };
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let windows = lines.claude_windows(&backend.session, size, step, move |window| {
        prompt(&name, window)
    });

    let mut reported: HashSet<usize> = HashSet::new();
    let (mut analysed, mut findings, mut failed) = (0, 0, 0);
    for result in windows {
        match result {
            Ok((window, response)) => {
                analysed += 1;
                let span = format!("lines {}-{}", window.start + 1, window.end());
                let answer = response.text.trim();
                if answer.eq_ignore_ascii_case("none") {
                    println!("{label}{span}: nothing anomalous");
                    continue;
                }
                for finding in answer.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    // The simulator labels its own answers; one label per line is enough.
                    let finding = finding.strip_prefix("[simulated] ").unwrap_or(finding);
                    if let Some(line) = cited_line(finding) {
                        if !reported.insert(line) {
                            continue;
                        }
                    }
                    findings += 1;
                    println!("{label}{span}: {finding}");
                }
            }
            Err(failure) => {
                if let Some(message) = common::explain_fatal(&failure.error) {
                    // Dropping the windows here cancels every window not yet started.
                    eprintln!("{message}");
                    return 1;
                }
                failed += 1;
                let window = &failure.item;
                println!(
                    "lines {}-{}: not analysed: {}",
                    window.start + 1,
                    window.end(),
                    failure.error
                );
            }
        }
    }
    if let Some(err) = read_error.borrow().as_ref() {
        eprintln!("stopped reading {}: {err}", path.display());
        failed += 1;
    }
    let stats = backend.session.stats();
    println!(
        "{label}{analysed} windows analysed, {findings} findings, {failed} failed, {} requests, ${:.4}",
        stats.requests, stats.cost_usd
    );
    i32::from(failed > 0)
}

fn prompt(file: &str, window: &[(usize, String)]) -> String {
    let (first, last) = (window[0].0, window[window.len() - 1].0);
    let mut prompt = format!(
        "Lines {first}-{last} of the log file `{file}` follow, each after its line number. \
         Report anything anomalous: errors, crashes, resource exhaustion, unusual latency, \
         security events, or a break in an otherwise regular pattern (such as time going \
         backwards). Answer with one finding per line, as `LINE: what is wrong`, citing the \
         line number; answer exactly `none` if nothing is anomalous. No other text.\n\n"
    );
    for (number, text) in window {
        prompt.push_str(&format!("{number} | {text}\n"));
    }
    prompt
}

/// The line number a finding starts with (`"14: pool exhausted"` or `"line 14: …"` give 14).
fn cited_line(finding: &str) -> Option<usize> {
    let (head, _) = finding.split_once(':')?;
    let head = head.trim();
    let number = head
        .strip_prefix("line ")
        .or_else(|| head.strip_prefix("Line "))
        .or_else(|| head.strip_prefix("LINE "))
        .unwrap_or(head);
    number.trim().parse().ok()
}
