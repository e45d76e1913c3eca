//! The examples run in simulate mode on small fixtures, and their outputs (report, JSONL,
//! summary) are checked for content.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

/// An example program (the `examples` package). `cargo build` makes sure it is current:
/// `cargo test --test examples` alone does not rebuild other packages, and a stale binary
/// would test old code. Its claude-rayon has the features this test was built with, so the
/// build is the one `cargo test` made, not a second one that replaces it.
fn example(name: &str) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "examples", "--bin", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "building example {name}");
    let deps = std::env::current_exe().unwrap();
    deps.parent().unwrap().parent().unwrap().join(name)
}

/// The pipeline example, a package of its own (it needs SQLite): built like an example.
fn sqlite_example() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "pipeline-sqlite"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "building pipeline-sqlite");
    let deps = std::env::current_exe().unwrap();
    deps.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("pipeline-sqlite")
}

fn run(name: &str, args: &[&str]) -> (i32, String, String) {
    run_with_env(name, args, &[])
}

fn run_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let program = match name {
        "pipeline_sqlite" => sqlite_example(),
        _ => example(name),
    };
    let output = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("CLAUDE_CODE_BIN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, content: &[u8]) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

#[test]
fn analyze_codebase_writes_a_report_jsonl_and_summary() {
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    write(root, ".gitignore", b"generated/\n");
    write(
        root,
        "src/main.rs",
        b"fn main() {\n    println!(\"hi\");\n}\n",
    );
    write(
        root,
        "app/views.py",
        b"def index(request):\n    return eval(request.GET['q'])\n",
    );
    write(
        root,
        "web/util.ts",
        b"export const add = (a: number, b: number) => a + b;\n",
    );
    write(root, "lib/tasks.ex", b"defmodule Tasks do\nend\n");
    write(root, "generated/skip.rs", b"fn ignored() {}\n");
    write(root, "blob.rb", b"puts 1\0\0\0binary");
    write(root, "huge.go", &vec![b'a'; 300 * 1024]);
    write(root, "README.md", b"# not source\n");
    let out = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(
        "analyze_codebase",
        &[
            "--simulate",
            "--out",
            out.path().to_str().unwrap(),
            root.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("built-in simulator"), "{stderr}");
    assert!(stderr.contains("2 skipped as binary or huge"), "{stderr}");

    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for file in ["src/main.rs", "app/views.py", "web/util.ts", "lib/tasks.ex"] {
        assert!(report.contains(file), "{file} missing from the report");
    }
    for skipped in ["generated/skip.rs", "blob.rb", "huge.go", "README.md"] {
        assert!(
            !report.contains(skipped),
            "{skipped} should have been skipped"
        );
    }
    assert!(report.contains("### security") && report.contains("### documentation"));
    assert!(report.contains("Python") && report.contains("Elixir"));
    // Every line that could pass for a finding says it is simulated.
    let finding_lines: Vec<&str> = report.lines().filter(|l| l.starts_with("- ")).collect();
    assert!(!finding_lines.is_empty());
    assert!(
        finding_lines
            .iter()
            .all(|l| l.starts_with("- [simulated] **")),
        "{finding_lines:?}"
    );

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.path().join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4 * 3, "one line per file and analysis");
    assert!(lines
        .iter()
        .all(|l| l["simulated"] == true && l["findings"].is_array()));
    let analyses: std::collections::HashSet<&str> = lines
        .iter()
        .map(|l| l["analysis"].as_str().unwrap())
        .collect();
    assert_eq!(analyses.len(), 3);

    assert!(stdout.contains("[simulated] summary"), "{stdout}");
    assert!(stdout.contains("files analysed   4"), "{stdout}");
    assert!(stdout.contains("12 ok, 0 failed"), "{stdout}");
    assert!(
        stdout.contains("(simulated: a made-up figure, nothing was billed)"),
        "{stdout}"
    );
    // A simulated finding says it is simulated once, not in each of its fields.
    assert!(
        finding_lines
            .iter()
            .all(|l| l.matches("simulated").count() == 1),
        "{finding_lines:?}"
    );
    assert!(stdout.contains("from the journal 0 of 12"), "{stdout}");

    // Run again into the same folder: every analysis comes from the journal, the same report.
    let args = [
        "--simulate",
        "--out",
        out.path().to_str().unwrap(),
        root.to_str().unwrap(),
    ];
    let (code, again, stderr) = run("analyze_codebase", &args);
    assert_eq!(code, 0, "stdout:\n{again}\nstderr:\n{stderr}");
    assert!(again.contains("from the journal 12 of 12"), "{again}");
    assert_eq!(
        std::fs::read_to_string(out.path().join("report.md")).unwrap(),
        report,
        "the same report from the journal"
    );
    assert!(out.path().join("journal-simulated.jsonl").is_file());
    let (_, fresh, _) = run("analyze_codebase", &[&["--no-journal"], &args[..]].concat());
    assert!(fresh.contains("from the journal 0 of 12"), "{fresh}");
}

#[test]
fn categorize_prints_every_category_and_every_document_once() {
    let docs = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("a.txt", "Invoice for March"),
        ("b.md", "Our build broke"),
        ("c.txt", "Birthday on Saturday"),
        ("d.txt", "Quarterly revenue"),
        ("skip.pdf", "not a text document"),
    ] {
        write(docs.path(), name, text.as_bytes());
    }
    let out = tempfile::tempdir().unwrap();
    let args = [
        "--simulate",
        "--categories",
        "money,tech,life",
        "--out",
        out.path().to_str().unwrap(),
        docs.path().to_str().unwrap(),
    ];
    let (code, stdout, stderr) = run("categorize", &args);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for category in ["money", "tech", "life"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("[simulated] {category} ("))),
            "{category} missing:\n{stdout}"
        );
    }
    for doc in ["a.txt", "b.md", "c.txt", "d.txt"] {
        let mentions = stdout.lines().filter(|l| l.ends_with(doc)).count();
        assert_eq!(mentions, 1, "{doc} listed {mentions} times:\n{stdout}");
    }
    assert!(!stdout.contains("skip.pdf"));
    assert!(
        stdout.contains(
            "[simulated] 4 documents, 4 sorted, 0 failed, 4 requests, 0 from the journal"
        ),
        "{stdout}"
    );
    // Again: the categories come from the journal in the output folder, without a request.
    let (code, again, _) = run("categorize", &args);
    assert_eq!(code, 0);
    assert!(
        again.contains("4 documents, 4 sorted, 0 failed, 0 requests, 4 from the journal"),
        "{again}"
    );
    let listing = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.contains("documents,"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(listing(&stdout), listing(&again), "the same sorting");
}

#[test]
fn categorize_estimate_prints_the_cost_and_asks_nothing() {
    let docs = tempfile::tempdir().unwrap();
    for (name, text) in [
        (
            "a.txt",
            "Invoice 2024-113 from Nordlys AS for 1,250.00 EUR, due last Friday.",
        ),
        (
            "b.md",
            "The nightly build broke after the compiler upgrade; the linker runs out of memory.",
        ),
        (
            "c.txt",
            "Birthday dinner on Saturday at eight, bring the photos from the lake.",
        ),
    ] {
        write(docs.path(), name, text.as_bytes());
    }
    let out = tempfile::tempdir().unwrap();
    let args = |estimate: bool| {
        let mut args = vec![
            "--simulate",
            "--model",
            "claude-haiku-4-5",
            "--out",
            out.path().to_str().unwrap(),
            docs.path().to_str().unwrap(),
        ];
        if estimate {
            args.insert(0, "--estimate");
        }
        args
    };
    let (code, stdout, stderr) = run("categorize", &args(true));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.starts_with("Estimate for 3 items on claude-haiku-4-5, at $1.00 in / $5.00 out"),
        "{stdout}"
    );
    assert!(stdout.contains("(simulated: nothing is billed"), "{stdout}");
    // Nothing was asked: the real run asks all three.
    let (code, stdout, _) = run("categorize", &args(false));
    assert_eq!(code, 0);
    assert!(
        stdout.contains("3 documents, 3 sorted, 0 failed, 3 requests, 0 from the journal"),
        "{stdout}"
    );
}

#[test]
fn analyze_codebase_estimate_counts_what_the_journal_has_as_free() {
    let tree = tempfile::tempdir().unwrap();
    write(
        tree.path(),
        "src/main.rs",
        b"fn main() {\n    let v: Vec<u8> = Vec::new();\n    println!(\"{}\", v[0]);\n}\n",
    );
    let out = tempfile::tempdir().unwrap();
    let args = |estimate: bool| {
        let mut args = vec![
            "--simulate",
            "--out",
            out.path().to_str().unwrap(),
            tree.path().to_str().unwrap(),
        ];
        if estimate {
            args.insert(0, "--estimate");
        }
        args
    };
    let (code, before, stderr) = run("analyze_codebase", &args(true));
    assert_eq!(code, 0, "stdout:\n{before}\nstderr:\n{stderr}");
    assert!(before.starts_with("Estimate for 3 items on "), "{before}");
    assert!(!out.path().join("report.md").exists(), "nothing ran");
    let (code, _, _) = run("analyze_codebase", &args(false));
    assert_eq!(code, 0);
    let (_, after, _) = run("analyze_codebase", &args(true));
    assert!(
        after.starts_with("Estimate for 3 items (3 already in the journal, free; 0 to ask)"),
        "{after}"
    );
}

#[test]
fn log_anomalies_reports_windows_in_order_with_line_numbers() {
    let (code, stdout, stderr) = run("log_anomalies", &["--simulate", "examples/data/sample.log"]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let windows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("[simulated] lines "))
        .collect();
    assert!(windows.len() >= 2, "{stdout}");
    assert!(windows[0].starts_with("[simulated] lines 1-"), "{stdout}");
    let starts: Vec<usize> = windows
        .iter()
        .map(|l| {
            l["[simulated] lines ".len()..]
                .split('-')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] < w[1]),
        "in order: {starts:?}"
    );
}

#[test]
fn pipeline_sqlite_stores_one_row_per_success_and_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tickets.sqlite");
    let (code, stdout, stderr) = run(
        "pipeline_sqlite",
        &[
            "--simulate",
            "--items",
            "60",
            "--batch-size",
            "7",
            "--db",
            db.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("built-in simulator"), "{stderr}");
    let figure = |name: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("[simulated] {name} ")))
            .unwrap_or_else(|| panic!("no {name:?} line:\n{stdout}"));
        line[format!("[simulated] {name} ").len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{line}"))
    };
    let (received, succeeded, rows) = (
        figure("received"),
        figure("succeeded"),
        figure("rows stored"),
    );
    assert!(received >= 60, "{stdout}");
    assert!(succeeded > 0, "{stdout}");
    assert_eq!(rows, succeeded, "one row per success:\n{stdout}");
    assert!(
        stdout.contains("[simulated] batch   0:"),
        "batches are labelled:\n{stdout}"
    );
    assert!(stdout.contains("simulated, nothing billed"), "{stdout}");
}

#[test]
fn categorize_by_hand_really_works_on_the_fake_cli() {
    let docs = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("a.txt", "Invoice for March"),
        ("b.md", "Our build broke"),
        ("c.txt", "Birthday on Saturday"),
    ] {
        write(docs.path(), name, text.as_bytes());
    }
    let output = Command::new(example("categorize_by_hand"))
        .arg(docs.path())
        .env("CLAUDE_CODE_BIN", support::fake_cli())
        .env("CLAUDE_RAYON_SIM_DEMO", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for doc in ["a.txt", "b.md", "c.txt"] {
        let mentions = stdout.lines().filter(|l| l.ends_with(doc)).count();
        assert_eq!(mentions, 1, "{doc} listed {mentions} times:\n{stdout}");
    }
    assert!(stdout.contains("3 documents, 0 failed"), "{stdout}");
}

#[test]
fn failures_are_grouped_one_line_per_distinct_error() {
    // On the fake CLI (not the demo simulator, which ignores directives): documents whose text
    // makes it fail, the same error twice and another once.
    let docs = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("a.txt", "[[sim:error=400]] first"),
        ("b.txt", "[[sim:error=400]] second"),
        ("c.txt", "[[sim:max-turns]] third"),
        ("d.txt", "[[sim:reply=finance]] fine"),
    ] {
        write(docs.path(), name, text.as_bytes());
    }
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(example("categorize"))
        .args(["--no-journal", "--out", out.path().to_str().unwrap()])
        .arg(docs.path())
        .env("CLAUDE_CODE_BIN", support::fake_cli())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let groups: Vec<&str> = stdout.lines().filter(|l| l.contains(" × ")).collect();
    assert_eq!(groups.len(), 2, "one line per distinct error:\n{stdout}");
    assert!(
        groups[0].trim_start().starts_with("2 × ") && groups[0].contains("status 400"),
        "{stdout}"
    );
    assert!(
        groups[0].contains("a.txt") && groups[0].contains("b.txt"),
        "{stdout}"
    );
    assert!(groups[1].trim_start().starts_with("1 × "), "{stdout}");
    assert!(
        stdout.contains("4 documents, 1 sorted, 3 failed"),
        "{stdout}"
    );
}

/// What a file outside the tree holds: it must never reach a prompt.
const OUTSIDE_SECRET: &str = "sk-ant-outside-the-tree-4417";

/// A folder outside the tree, with a secret in a source file and a text file.
fn outside_the_tree() -> tempfile::TempDir {
    let outside = tempfile::tempdir().unwrap();
    let secret = format!("const TOKEN: &str = \"{OUTSIDE_SECRET}\";\n");
    write(outside.path(), "credentials.rs", secret.as_bytes());
    write(outside.path(), "lib/leak.rs", secret.as_bytes());
    write(outside.path(), "notes.txt", secret.as_bytes());
    outside
}

/// Every prompt the (fake or simulated) CLI was sent, from its record.
fn prompts_sent(record: &Path) -> Vec<String> {
    support::read_events(record)
        .iter()
        .filter(|e| e["event"] == "prompt")
        .map(|e| e["prompt"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_examples_never_read_a_file_through_a_link_out_of_their_tree() {
    let outside = outside_the_tree();
    let o = outside.path();
    let record_dir = tempfile::tempdir().unwrap();
    let record = record_dir.path().join("record.jsonl");
    let record_env = [("CLAUDE_RAYON_SIM_RECORD", record.to_str().unwrap())];

    // analyze_codebase: a linked file and a linked folder inside the tree.
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    write(
        root,
        "src/main.rs",
        b"fn main() {\n    println!(\"inside the tree\");\n}\n",
    );
    std::os::unix::fs::symlink(o.join("credentials.rs"), root.join("src/config.rs")).unwrap();
    std::os::unix::fs::symlink(o.join("lib"), root.join("vendor")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run_with_env(
        "analyze_codebase",
        &[
            "--simulate",
            "--no-journal",
            "--out",
            out.path().to_str().unwrap(),
            root.to_str().unwrap(),
        ],
        &record_env,
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let sent = prompts_sent(&record);
    assert!(
        sent.iter().any(|p| p.contains("inside the tree")),
        "the record works: {sent:?}"
    );
    assert!(
        !sent.iter().any(|p| p.contains(OUTSIDE_SECRET)),
        "a file outside the tree was sent"
    );
    assert!(stdout.contains("files analysed   1"), "{stdout}");
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        !report.contains("config.rs") && !report.contains("leak.rs"),
        "{report}"
    );

    // categorize, on the fake CLI: a linked document.
    let docs = tempfile::tempdir().unwrap();
    write(
        docs.path(),
        "a.txt",
        b"[[sim:reply=finance]] Invoice for March, inside the folder",
    );
    std::os::unix::fs::symlink(o.join("notes.txt"), docs.path().join("b.txt")).unwrap();
    std::fs::remove_file(&record).unwrap();
    let fake = support::fake_cli();
    let output = Command::new(example("categorize"))
        .args(["--no-journal", "--out", out.path().to_str().unwrap()])
        .arg(docs.path())
        .env("CLAUDE_CODE_BIN", &fake)
        .envs(record_env)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let sent = prompts_sent(&record);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        !sent.iter().any(|p| p.contains(OUTSIDE_SECRET)),
        "a file outside the folder was sent"
    );
    assert!(!stdout.contains("b.txt"), "{stdout}");

    // categorize_by_hand, the same folder.
    std::fs::remove_file(&record).unwrap();
    let output = Command::new(example("categorize_by_hand"))
        .arg(docs.path())
        .env("CLAUDE_CODE_BIN", &fake)
        .envs(record_env)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let sent = prompts_sent(&record);
    assert!(
        !sent.is_empty() && !sent.iter().any(|p| p.contains(OUTSIDE_SECRET)),
        "{sent:?}"
    );

    // Each says so in its help.
    for name in ["analyze_codebase", "categorize", "categorize_by_hand"] {
        let (code, stdout, stderr) = run(name, &["--help"]);
        assert_eq!(code, 0, "{name}: {stderr}");
        assert!(
            stdout
                .to_lowercase()
                .contains("symbolic links are never followed"),
            "{name} --help:\n{stdout}"
        );
    }
}

#[test]
fn categorize_runs_on_the_messages_api_with_backend_api() {
    let api = claude_rayon_mock_api::MockApi::start();
    api.set_reply(|prompt| {
        let category = if prompt.contains("Invoice") || prompt.contains("revenue") {
            "money"
        } else if prompt.contains("build") {
            "tech"
        } else {
            "life"
        };
        claude_rayon_mock_api::Reply::text(category)
    });
    let docs = tempfile::tempdir().unwrap();
    for (name, text) in [
        (
            "a.txt",
            "Invoice for March: the customer paid twice and asks for a refund.",
        ),
        (
            "b.md",
            "Our build broke after the compiler upgrade; the linker cannot find libssl.",
        ),
        (
            "c.txt",
            "Birthday on Saturday at the lake house, bring a cake and a warm jacket.",
        ),
        (
            "d.txt",
            "Quarterly revenue grew by eight percent, led by the new annual plans.",
        ),
    ] {
        write(docs.path(), name, text.as_bytes());
    }
    let out = tempfile::tempdir().unwrap();
    let url = api.url();
    let (code, stdout, stderr) = run_with_env(
        "categorize",
        &[
            "--backend",
            "api",
            "--categories",
            "money,tech,life",
            "--out",
            out.path().to_str().unwrap(),
            docs.path().to_str().unwrap(),
        ],
        &[
            ("ANTHROPIC_API_KEY", "sk-ant-example-test"),
            ("ANTHROPIC_BASE_URL", &url),
        ],
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("using the Messages API"), "{stderr}");
    assert!(
        stdout.contains("4 documents, 4 sorted, 0 failed, 4 requests, 0 from the journal"),
        "{stdout}"
    );
    assert!(!stdout.contains("[simulated]"), "{stdout}");
    assert_eq!(api.request_count(), 4);
    for (category, doc) in [("money", "a.txt"), ("tech", "b.md"), ("life", "c.txt")] {
        let section = stdout
            .split(&format!("{category} ("))
            .nth(1)
            .unwrap_or_else(|| panic!("{category} missing:\n{stdout}"));
        assert!(
            section.contains(doc),
            "{doc} not under {category}:\n{stdout}"
        );
    }
}

#[test]
fn the_examples_show_the_librarys_warnings() {
    // More processes than this machine has memory for: `build()` warns through `log`, which
    // reaches stderr only because the example installs a logger.
    let (code, stdout, stderr) = run(
        "log_anomalies",
        &[
            "--simulate",
            "--concurrency",
            "200",
            "examples/data/sample.log",
        ],
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("WARN") && stderr.contains("concurrency 200 needs about"),
        "the memory warning at build() is not shown:\n{stderr}"
    );
}
