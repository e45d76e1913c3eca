//! Sort a folder of documents into given categories with `claude_group_by`, and print each
//! category with its documents, then the documents that could not be sorted.
//!
//! ```sh
//! cargo run -p examples --bin categorize -- examples/data/docs
//! cargo run -p examples --bin categorize -- --categories "finance,engineering,personal" --simulate examples/data/docs
//! ```
//!
//! Flags: `--categories a,b,c` (default: finance, engineering, personal, other),
//! `--backend api|cli` (the Messages API with ANTHROPIC_API_KEY, or the claude CLI: the default), `--simulate`, `--model NAME`, `--concurrency N`, `--out DIR` (default
//! `target/categorize`), `--no-journal`, `--estimate` (print what the run would cost at list
//! prices, and stop before any call). Reads `.txt` and `.md` files, never through a
//! symbolic link (a linked document is skipped: it could point out of the folder). The
//! categories are kept in a journal in the output folder, so a rerun pays only for documents
//! not sorted yet.

mod common;

use std::path::PathBuf;

use claude_rayon::prelude::*;
use claude_rayon::Session;
use rayon::prelude::*;

const DEFAULT_CATEGORIES: &str = "finance,engineering,personal,other";
const USAGE: &str =
    "usage: categorize [--categories a,b,c] [--backend api|cli] [--simulate] [--model M] \
    [--concurrency N] [--out DIR] [--no-journal] [--estimate] DIR";
/// Long documents are cut: the first part is enough to tell the category.
const MAX_CHARS: usize = 8_000;

fn main() {
    claude_rayon::simulator::serve_if_requested();
    common::install_logger();
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(run(&args));
}

fn run(args: &[String]) -> i32 {
    let positional =
        common::positional(args, &["--categories", "--model", "--concurrency", "--out"]);
    if common::wants_help(args) {
        println!("{USAGE}\n\n{}", common::LINKS_NOTE);
        return 0;
    }
    let Some(dir) = positional.first().map(PathBuf::from) else {
        eprintln!("{USAGE}");
        return 2;
    };
    let out_dir = common::flag_value(args, "--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/categorize"));
    let categories: Vec<String> = common::flag_value(args, "--categories")
        .unwrap_or_else(|| DEFAULT_CATEGORIES.to_string())
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    // Each document with the identity the listing found, so that only that file is read.
    let mut documents: Vec<(PathBuf, (u64, u64))> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("txt" | "md")))
            .filter_map(|p| common::plain_file_id(&p).map(|id| (p, id)))
            .collect(),
        Err(err) => {
            eprintln!("cannot read {}: {err}", dir.display());
            return 1;
        }
    };
    documents.sort();
    if documents.is_empty() {
        eprintln!("no .txt or .md documents in {}", dir.display());
        return 1;
    }

    // What every document shares, given once to the session (the appended system prompt)
    // rather than in each prompt: with long category definitions, the API reads them from its
    // prompt cache.
    let guide = format!(
        "You sort documents into exactly one of these categories: {}. Judge by the \
         document's main subject, not by words it happens to contain.",
        categories.join(", ")
    );
    let builder = Session::builder()
        .concurrency(4)
        .append_system_prompt(guide);
    let Some(backend) = common::start(builder, args, Some(&out_dir)) else {
        return 1;
    };
    let label = backend.label();
    let prompt = |(path, id): &(PathBuf, (u64, u64))| {
        let text: String = common::read_walked_file(path, *id)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
            .chars()
            .take(MAX_CHARS)
            .collect();
        format!(
            "Which category does this document belong to?\n\nDocument `{}`:\n{text}",
            path.file_name().unwrap_or_default().to_string_lossy()
        )
    };
    // An answer is one category: a few tokens.
    if common::estimate_first(
        &backend,
        documents.len(),
        documents.iter().map(prompt),
        5,
        args,
    ) {
        return 0;
    }

    let groups = documents
        .par_iter()
        .claude_group_by(&backend.session, categories.iter().cloned(), |d| prompt(d))
        .groups();
    if let Some(message) = groups
        .failed
        .iter()
        .find_map(|f| common::explain_fatal(&f.error))
    {
        eprintln!("{message}");
        return 1;
    }
    for (category, members) in groups.iter() {
        println!("{label}{category} ({})", members.len());
        for (path, _) in members {
            println!("{label}  {}", path.display());
        }
    }
    if !groups.failed.is_empty() {
        println!("not sorted ({})", groups.failed.len());
        common::print_failures(
            groups
                .failed
                .iter()
                .map(|failed| (failed.item.0.display().to_string(), &failed.error)),
        );
    }
    let stats = backend.session.stats();
    let cost = if backend.simulated {
        " (simulated: nothing billed)"
    } else {
        ""
    };
    println!(
        "{label}{} documents, {} sorted, {} failed, {} requests, {} from the journal, ${:.4}{cost}",
        groups.len(),
        groups.len() - groups.failed.len(),
        groups.failed.len(),
        stats.requests,
        stats.replayed,
        stats.cost_usd
    );
    i32::from(!groups.failed.is_empty())
}
