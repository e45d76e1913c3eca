//! The `categorize` example written by hand, without claude-rayon: the same job (sort a folder
//! of documents into given categories, print each category with its documents, then the
//! ones that could not be sorted) with threads, `std::process::Command`, JSON parsing,
//! retries and a rate limit of its own. It exists to measure what the library saves
//! (docs/why.md), and it really works: `tests/examples.rs` runs it on the fake CLI.
//!
//! ```sh
//! cargo run -p examples --bin categorize_by_hand -- examples/data/docs
//! ```
//!
//! What it still does not do, that the library does: reuse a warm process (each item pays a
//! cold start of about 0.7 s), keep a user's `settings.json` from turning attachments back on
//! (it passes the CLI's sealing flags, no more), check the CLI's version, share a back-off
//! across workers after a 429, limit tokens, cap the budget, resume after a crash.
//!
//! A linked document is skipped and a document is never opened through a link (either could
//! point out of the folder).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const CATEGORIES: [&str; 4] = ["finance", "engineering", "personal", "other"];
const WORKERS: usize = 4;
const MAX_ATTEMPTS: u32 = 4;
const MIN_INTERVAL: Duration = Duration::from_millis(200); // at most 5 requests a second
const TIMEOUT: Duration = Duration::from_secs(120);

/// Send one prompt to a fresh `claude` process and return the text of its result.
fn ask_claude(cli: &str, prompt: &str) -> Result<String, String> {
    let mut child = Command::new(cli)
        .args([
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
        ])
        .args(["--verbose", "--tools", "", "--no-session-persistence"])
        // No user or project configuration, hooks or MCP servers; no `@file` from the text.
        .args([
            "--setting-sources",
            "user",
            "--safe-mode",
            "--strict-mcp-config",
        ])
        .env("CLAUDE_CODE_DISABLE_ATTACHMENTS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {cli}: {e}"))?;
    let message = serde_json::json!({
        "type": "user",
        "message": {"role": "user", "content": [{"type": "text", "text": prompt}]}
    });
    let mut stdin = child.stdin.take().expect("piped");
    writeln!(stdin, "{message}").map_err(|e| format!("write: {e}"))?;
    drop(stdin);
    let stdout = child.stdout.take().expect("piped");
    let started = Instant::now();
    let mut outcome = Err("the CLI ended without a result".to_string());
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("read: {e}"))?;
        if started.elapsed() > TIMEOUT {
            outcome = Err("timed out".into());
            break;
        }
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if value["type"] == "result" {
            outcome = if value["is_error"] == true {
                Err(format!("API error: {}", value["result"]))
            } else {
                Ok(value["result"].as_str().unwrap_or_default().to_string())
            };
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// Wait until at least `MIN_INTERVAL` has passed since the last request of any worker.
fn throttle(last: &Mutex<Option<Instant>>) {
    loop {
        let mut last = last.lock().unwrap();
        let now = Instant::now();
        match *last {
            Some(at) if now < at + MIN_INTERVAL => {
                let wait = at + MIN_INTERVAL - now;
                drop(last);
                thread::sleep(wait);
            }
            _ => {
                *last = Some(now);
                return;
            }
        }
    }
}

/// Case, quotes and punctuation aside, which category the answer is.
fn category_of(answer: &str) -> Option<&'static str> {
    let cleaned: String = answer
        .trim()
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    CATEGORIES.iter().copied().find(|c| *c == cleaned)
}

/// Ask with retries and backoff; re-ask once when the answer is not a category.
fn classify(cli: &str, text: &str, last: &Mutex<Option<Instant>>) -> Result<&'static str, String> {
    let mut prompt = format!(
        "Which category does this document belong to?\n\n{text}\n\nReply with exactly one \
         of the allowed answers below and nothing else.\nAllowed answers: {}",
        CATEGORIES.join(" | ")
    );
    let mut reasked = false;
    let mut attempt = 0;
    loop {
        attempt += 1;
        throttle(last);
        match ask_claude(cli, &prompt) {
            Ok(answer) => match category_of(&answer) {
                Some(category) => return Ok(category),
                None if !reasked => {
                    reasked = true;
                    prompt = format!("{prompt}\n\n(Your earlier reply {answer:?} is not allowed.)");
                }
                None => return Err(format!("not a category: {answer:?}")),
            },
            Err(error) if attempt < MAX_ATTEMPTS => {
                let backoff = Duration::from_millis(500 * 2u64.pow(attempt - 1));
                eprintln!("retrying in {:.1} s: {error}", backoff.as_secs_f64());
                thread::sleep(backoff);
            }
            Err(error) => return Err(error),
        }
    }
}

fn main() {
    let dir = match std::env::args().nth(1) {
        Some(help) if help == "--help" || help == "-h" => {
            println!("usage: categorize_by_hand DIR\n\nSymbolic links are never followed: a linked document is skipped.");
            return;
        }
        Some(dir) => PathBuf::from(dir),
        None => {
            eprintln!("usage: categorize_by_hand DIR");
            std::process::exit(2);
        }
    };
    let cli = std::env::var("CLAUDE_CODE_BIN").unwrap_or_else(|_| "claude".into());
    let mut documents: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("a readable folder")
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file())) // not a link: it could lead out
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("txt" | "md")))
        .collect();
    documents.sort();
    let queue = Arc::new(Mutex::new(documents.clone()));
    let results = Arc::new(Mutex::new(HashMap::new()));
    let last = Arc::new(Mutex::new(None));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (queue, results, last, cli) =
                (queue.clone(), results.clone(), last.clone(), cli.clone());
            thread::spawn(move || loop {
                let Some(path) = queue.lock().unwrap().pop() else {
                    return;
                };
                let mut text = String::new();
                let _ = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW) // a link put there since is not followed
                    .open(&path)
                    .and_then(|mut file| file.read_to_string(&mut text));
                let text: String = text.chars().take(8_000).collect();
                let outcome = classify(&cli, &text, &last);
                results.lock().unwrap().insert(path, outcome);
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a worker panicked");
    }
    let results = results.lock().unwrap();
    for category in CATEGORIES {
        let members: Vec<&PathBuf> = documents
            .iter()
            .filter(|d| matches!(results.get(*d), Some(Ok(c)) if *c == category))
            .collect();
        println!("{category} ({})", members.len());
        for path in members {
            println!("  {}", path.display());
        }
    }
    let failed: Vec<_> = documents
        .iter()
        .filter_map(|d| match results.get(d) {
            Some(Err(error)) => Some((d, error)),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        println!("not sorted ({})", failed.len());
        for (path, error) in &failed {
            println!("  {}: {error}", path.display());
        }
    }
    println!("{} documents, {} failed", documents.len(), failed.len());
    std::process::exit(i32::from(!failed.is_empty()));
}
