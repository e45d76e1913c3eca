//! Security, quality and documentation analyses of every source file under a directory, in
//! parallel on one session. Writes a readable report and a JSONL file of raw results, and ends
//! with a summary.
//!
//! ```sh
//! cargo run --release -p examples --bin analyze_codebase -- src
//! cargo run --release -p examples --bin analyze_codebase -- --simulate --out /tmp/report src
//! ```
//!
//! Flags: `--backend api|cli` (the Messages API with ANTHROPIC_API_KEY, or the claude CLI: the default), `--simulate` (built-in simulator), `--model NAME`, `--concurrency N`,
//! `--out DIR` (default `target/analysis`), `--max-files N`, `--budget USD`, `--no-journal`,
//! `--estimate` (print what the run would cost at list prices, and stop before any call).
//! Answers are kept in a journal in the output folder (`journal.jsonl`), so a rerun after an
//! interruption (Ctrl-C, a crash, an expired login) pays only for the analyses not done yet;
//! `--no-journal` asks everything again.
//! Files ignored by `.gitignore`, binary files and files over 200 KB are skipped. Symbolic
//! links are never followed (a link to a file or a folder is skipped): nothing outside the
//! tree you name is read or sent.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use claude_rayon::prelude::*;
use claude_rayon::{Outcome, Response, Session};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

const MAX_FILE_BYTES: u64 = 200 * 1024;

const USAGE: &str =
    "usage: analyze_codebase [--backend api|cli] [--simulate] [--model M] [--concurrency N] \
    [--out DIR] [--max-files N] [--budget USD] [--no-journal] [--estimate] DIR";

/// One analysis: its name and what to look for.
const ANALYSES: [(&str, &str); 3] = [
    (
        "security",
        "security problems: injection, unsafe input handling, secrets in code, unsafe memory or \
         concurrency use, missing validation",
    ),
    (
        "quality",
        "correctness and maintainability problems: bugs, error handling, edge cases, needless \
         complexity, duplicated logic",
    ),
    (
        "documentation",
        "documentation gaps: public items without docs, misleading comments, missing examples \
         or explanations of why",
    ),
];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Finding {
    severity: String,
    #[serde(default)]
    line: Option<u64>,
    title: String,
    detail: String,
}

#[derive(Debug, Deserialize)]
struct Findings {
    findings: Vec<Finding>,
}

/// One file and one analysis to run on it.
#[derive(Debug, Clone)]
struct Job {
    path: PathBuf,
    /// The file's device and inode as the walk found it: only that file is read.
    id: (u64, u64),
    language: &'static str,
    analysis: usize,
}

/// A source file the walk found: its path, identity and language.
type Source = (PathBuf, (u64, u64), &'static str);

fn language_of(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?;
    Some(match ext {
        "rs" => "Rust",
        "py" => "Python",
        "js" | "mjs" | "cjs" | "jsx" => "JavaScript",
        "ts" | "tsx" => "TypeScript",
        "go" => "Go",
        "rb" => "Ruby",
        "ex" | "exs" => "Elixir",
        "java" => "Java",
        "kt" => "Kotlin",
        "c" | "h" => "C",
        "cc" | "cpp" | "hpp" | "cxx" => "C++",
        "cs" => "C#",
        "swift" => "Swift",
        "php" => "PHP",
        "scala" => "Scala",
        "sh" | "bash" => "Shell",
        "lua" => "Lua",
        "erl" => "Erlang",
        "hs" => "Haskell",
        "ml" => "OCaml",
        _ => return None,
    })
}

/// Source files under `root`: .gitignore respected, binary and huge files skipped, and no
/// symbolic link followed (the walker does not enter linked folders, and a linked file is
/// skipped), so that nothing outside the tree is read.
fn source_files(root: &Path) -> (Vec<Source>, usize) {
    let mut files = Vec::new();
    let mut skipped = 0;
    // .gitignore counts outside a git checkout too (an unpacked tarball, say).
    let walker = ignore::WalkBuilder::new(root)
        .require_git(false)
        .follow_links(false)
        .build();
    for entry in walker.flatten() {
        let path = entry.path();
        let Some(id) = common::plain_file_id(path) else {
            continue;
        };
        let Some(language) = language_of(path) else {
            continue;
        };
        let too_big = entry
            .metadata()
            .map(|m| m.len() > MAX_FILE_BYTES)
            .unwrap_or(true);
        if too_big || is_binary(path, id) {
            skipped += 1;
            continue;
        }
        files.push((path.to_path_buf(), id, language));
    }
    files.sort();
    (files, skipped)
}

fn is_binary(path: &Path, id: (u64, u64)) -> bool {
    match common::read_walked_file(path, id) {
        Ok(bytes) => bytes[..bytes.len().min(8192)].contains(&0),
        Err(_) => true,
    }
}

fn prompt_for(job: &Job) -> String {
    let (name, focus) = ANALYSES[job.analysis];
    let source = common::read_walked_file(&job.path, job.id)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let numbered: String = source
        .lines()
        .enumerate()
        .map(|(i, line)| format!("{:>5} | {line}\n", i + 1))
        .collect();
    format!(
        "You are reviewing the {language} file `{path}` for {name}: {focus}.\n\n{numbered}",
        language = job.language,
        path = job.path.display(),
    )
}

/// What every review shares, given once to the session (the appended system prompt) rather
/// than in each prompt: with a long rubric, the API reads it from its prompt cache.
const RUBRIC: &str = "You review source files. Report each real problem once, with the line \
    number it is on, a short title and one or two sentences of detail. Rank severity honestly \
    (high, medium, low). If there are no problems, return an empty list.";

fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "findings": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "severity": {"enum": ["high", "medium", "low"]},
                        "line": {"type": "integer"},
                        "title": {"type": "string"},
                        "detail": {"type": "string"}
                    },
                    "required": ["severity", "title", "detail"]
                }
            }
        },
        "required": ["findings"]
    })
}

fn severity_rank(severity: &str) -> u8 {
    match severity {
        "high" => 0,
        "medium" => 1,
        _ => 2,
    }
}

fn main() {
    claude_rayon::simulator::serve_if_requested();
    common::install_logger();
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(run(&args));
}

fn run(args: &[String]) -> i32 {
    let valued = [
        "--model",
        "--concurrency",
        "--out",
        "--max-files",
        "--budget",
    ];
    let positional = common::positional(args, &valued);
    if common::wants_help(args) {
        println!("{USAGE}\n\n{}", common::LINKS_NOTE);
        return 0;
    }
    let Some(root) = positional.first().map(PathBuf::from) else {
        eprintln!("{USAGE}");
        return 2;
    };
    let out_dir = common::flag_value(args, "--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/analysis"));
    let concurrency: usize = common::flag_value(args, "--concurrency")
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let max_files: usize = common::flag_value(args, "--max-files")
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);

    let (mut files, skipped) = source_files(&root);
    files.truncate(max_files);
    if files.is_empty() {
        eprintln!("no source files found under {}", root.display());
        return 1;
    }

    let mut builder = Session::builder()
        .concurrency(concurrency)
        .append_system_prompt(RUBRIC)
        .json_schema(schema())
        .timeout(Duration::from_secs(300));
    if let Some(budget) = common::flag_value(args, "--budget").and_then(|v| v.parse().ok()) {
        builder = builder.max_budget_usd(budget);
    }
    let Some(backend) = common::start(builder, args, Some(&out_dir)) else {
        return 1;
    };
    let label = backend.label();
    let session = &backend.session;

    let jobs: Vec<Job> = files
        .iter()
        .flat_map(|(path, id, language)| {
            (0..ANALYSES.len()).map(move |analysis| Job {
                path: path.clone(),
                id: *id,
                language,
                analysis,
            })
        })
        .collect();
    eprintln!(
        "{label}analysing {} files ({} analyses each, {} skipped as binary or huge) with {} processes",
        files.len(),
        ANALYSES.len(),
        skipped,
        concurrency
    );
    // A finding list in JSON: a few hundred tokens an analysis.
    if common::estimate_first(&backend, jobs.len(), jobs.iter().map(prompt_for), 400, args) {
        return 0;
    }
    let started = Instant::now();
    let outcome: Outcome<(Job, Response), Job> = jobs
        .par_iter()
        .cloned()
        .claude_map(session, prompt_for)
        .collect();
    let wall = started.elapsed();

    if let Some(message) = outcome
        .dead_letter
        .iter()
        .find_map(|f| common::explain_fatal(&f.error))
    {
        eprintln!("{message}");
        return 1;
    }
    if let Err(err) = std::fs::create_dir_all(&out_dir) {
        eprintln!("cannot create {}: {err}", out_dir.display());
        return 1;
    }
    let report_path = out_dir.join("report.md");
    let jsonl_path = out_dir.join("results.jsonl");
    let (report, jsonl, total_findings) = render(&outcome, &files, label, backend.simulated);
    if let Err(err) =
        std::fs::write(&report_path, report).and_then(|()| std::fs::write(&jsonl_path, jsonl))
    {
        eprintln!("cannot write the report: {err}");
        return 1;
    }
    let stats = session.stats();
    println!("{label}summary");
    println!("  files analysed   {}", files.len());
    println!(
        "  analyses         {} ok, {} failed",
        outcome.ok.len(),
        outcome.dead_letter.len()
    );
    println!("  findings         {total_findings}");
    println!(
        "  from the journal {} of {} analyses (no call, nothing paid now)",
        stats.replayed,
        jobs.len()
    );
    println!(
        "  tokens           {} in, {} out",
        stats.usage.input_tokens
            + stats.usage.cache_read_input_tokens
            + stats.usage.cache_creation_input_tokens,
        stats.usage.output_tokens
    );
    println!(
        "  cost             ${:.4}{}",
        stats.cost_usd,
        if backend.simulated {
            " (simulated: a made-up figure, nothing was billed)"
        } else {
            ""
        }
    );
    println!("  wall time        {:.1} s", wall.as_secs_f64());
    println!("  report           {}", report_path.display());
    println!("  raw results      {}", jsonl_path.display());
    if !outcome.dead_letter.is_empty() {
        println!("  failed (each error once; every failure is in the raw results)");
        common::print_failures(outcome.dead_letter.iter().map(|failed| {
            let what = format!(
                "{} ({})",
                failed.item.path.display(),
                ANALYSES[failed.item.analysis].0
            );
            (what, &failed.error)
        }));
    }
    i32::from(!outcome.dead_letter.is_empty())
}

/// The Markdown report, the JSONL lines, and the number of findings.
fn render(
    outcome: &Outcome<(Job, Response), Job>,
    files: &[Source],
    label: &str,
    simulated: bool,
) -> (String, String, usize) {
    let mut report = String::new();
    let mut jsonl = String::new();
    let mut total = 0;
    let _ = writeln!(report, "# {label}Code analysis\n");
    if simulated {
        let _ = writeln!(
            report,
            "> These results come from the built-in simulator, not from Claude: no finding below is real.\n"
        );
    }
    for (path, _, language) in files {
        let _ = writeln!(report, "## {} ({language})\n", path.display());
        for (analysis, _) in ANALYSES.iter().enumerate() {
            let name = ANALYSES[analysis].0;
            let _ = writeln!(report, "### {name}\n");
            let ok = outcome
                .ok
                .iter()
                .find(|(job, _)| &job.path == path && job.analysis == analysis);
            let failed = outcome
                .dead_letter
                .iter()
                .find(|f| &f.item.path == path && f.item.analysis == analysis);
            match (ok, failed) {
                (Some((_, response)), _) => {
                    let mut findings = response
                        .parse::<Findings>()
                        .map(|f| f.findings)
                        .unwrap_or_default();
                    findings.sort_by_key(|f| (severity_rank(&f.severity), f.line.unwrap_or(0)));
                    total += findings.len();
                    if findings.is_empty() {
                        let _ = writeln!(report, "{label}No findings.\n");
                    }
                    for f in &findings {
                        let line = f.line.map(|l| format!(" (line {l})")).unwrap_or_default();
                        let _ = writeln!(
                            report,
                            "- {label}**{}**{line}: {} — {}",
                            f.severity.to_uppercase(),
                            f.title,
                            f.detail
                        );
                    }
                    let _ = writeln!(report);
                    let _ = writeln!(
                        jsonl,
                        "{}",
                        json!({"file": path, "analysis": name, "simulated": simulated,
                            "findings": findings, "usage": response.usage,
                            "cost_usd": response.cost_usd,
                            "duration_ms": response.duration.as_millis() as u64})
                    );
                }
                (None, Some(failed)) => {
                    let _ = writeln!(report, "Analysis failed: {}\n", failed.error);
                    let _ = writeln!(
                        jsonl,
                        "{}",
                        json!({"file": path, "analysis": name, "simulated": simulated,
                            "error": failed.error.to_string(), "attempts": failed.attempts})
                    );
                }
                (None, None) => {}
            }
        }
    }
    (report, jsonl, total)
}
