//! What the examples share: finding the CLI or falling back to the simulator, and stopping
//! plainly on an authentication failure.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use claude_rayon::{Backend as Answerer, CliError, Error, Session, SessionBuilder};

/// Show the library's warnings on stderr (a failed item, a pause on a usage window, too
/// little memory for `concurrency` at `build()`): it reports through `log`, and without a
/// logger those lines go nowhere. `RUST_LOG` overrides the level (`RUST_LOG=claude_rayon=debug`
/// also shows every retry).
pub fn install_logger() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
}

/// How the session was made, so output can be labelled.
pub struct Backend {
    pub session: Session,
    pub simulated: bool,
}

impl Backend {
    /// The label that goes before any line that could be mistaken for a real finding.
    pub fn label(&self) -> &'static str {
        if self.simulated {
            "[simulated] "
        } else {
            ""
        }
    }
}

/// Build on the Messages API (`api`: an API key in `ANTHROPIC_API_KEY`), or on the real CLI,
/// or on the built-in simulator when `simulate` is set or no CLI is found (saying so
/// plainly). The caller's `main` must call
/// `claude_rayon::simulator::serve_if_requested()` first. With `journal_dir`, answers are
/// kept in a journal there (one for real answers, one for simulated ones), so a rerun after
/// an interruption pays only for what is left.
pub fn connect(
    builder: SessionBuilder,
    simulate: bool,
    api: bool,
    journal_dir: Option<&Path>,
) -> Result<Backend, Error> {
    let journaled = |builder: SessionBuilder, name: &str| match journal_dir {
        Some(dir) => builder.journal(dir.join(name)),
        None => builder,
    };
    if api && !simulate {
        let session =
            journaled(builder.backend(Answerer::MessagesApi), "journal-api.jsonl").build()?;
        eprintln!("using the Messages API");
        return Ok(Backend {
            session,
            simulated: false,
        });
    }
    if !simulate {
        match journaled(builder.clone(), "journal.jsonl").build() {
            Ok(session) => {
                if let Some(cli) = session.cli_path() {
                    eprintln!("using the claude CLI at {}", cli.display());
                }
                return Ok(Backend {
                    session,
                    simulated: false,
                });
            }
            Err(err @ Error::Cli(CliError::NotFound { .. })) => {
                eprintln!("{err}");
                eprintln!("running on the built-in simulator instead: findings are NOT real.\n");
            }
            Err(err) => return Err(err),
        }
    } else {
        eprintln!("--simulate: running on the built-in simulator: findings are NOT real.\n");
    }
    Ok(Backend {
        session: journaled(builder.simulated()?, "journal-simulated.jsonl").build()?,
        simulated: true,
    })
}

/// The flags every example takes (`--backend api|cli`, `--model`, `--concurrency`,
/// `--simulate`) applied to
/// `builder`, a progress bar asked for, and the session started; `None` after saying why not.
/// With `journal_dir`, the session keeps a journal there unless `--no-journal` is given.
pub fn start(
    mut builder: SessionBuilder,
    args: &[String],
    journal_dir: Option<&Path>,
) -> Option<Backend> {
    // A bar on stderr when it is a terminal (built with `--features progress`).
    builder = builder.progress(true);
    // Ctrl-C: the first stops starting items (answers in flight kept), a second quits.
    if let Ok(ctrl_c) = claude_rayon::Cancel::on_ctrl_c() {
        builder = builder.with_cancel(&ctrl_c);
    }
    if let Some(model) = flag_value(args, "--model") {
        builder = builder.model(model);
    }
    if let Some(n) = flag_value(args, "--concurrency").and_then(|v| v.parse().ok()) {
        builder = builder.concurrency(n);
    }
    let api = match flag_value(args, "--backend").as_deref() {
        None | Some("cli") => false,
        Some("api") => true,
        Some(other) => {
            eprintln!("--backend takes `api` (the Messages API, ANTHROPIC_API_KEY) or `cli` (the claude CLI), not {other:?}");
            return None;
        }
    };
    let journal_dir = journal_dir.filter(|_| !args.iter().any(|a| a == "--no-journal"));
    match connect(
        builder,
        args.iter().any(|a| a == "--simulate"),
        api,
        journal_dir,
    ) {
        Ok(backend) => Some(backend),
        Err(err) => {
            eprintln!("cannot start: {err}");
            None
        }
    }
}

/// A run of more items than this prints its cost estimate before it starts.
pub const LARGE_RUN: usize = 200;

/// The cost estimate of a run of `items` prompts at list prices, `output_tokens` an answer:
/// with `--estimate` printed on stdout, and `true` returned (stop: nothing is spent); for a
/// run of more than [`LARGE_RUN`] items printed on stderr before it starts.
pub fn estimate_first<P: AsRef<str>>(
    backend: &Backend,
    items: usize,
    prompts: impl IntoIterator<Item = P>,
    output_tokens: u64,
    args: &[String],
) -> bool {
    let wanted = args.iter().any(|a| a == "--estimate");
    if !wanted && items <= LARGE_RUN {
        return false;
    }
    let estimate = backend
        .session
        .estimate(prompts)
        .with_output_tokens(output_tokens);
    let simulated = if backend.simulated {
        "
(simulated: nothing is billed; the figures are what a real run would cost)"
    } else {
        ""
    };
    if wanted {
        println!("{estimate}{simulated}");
    } else {
        eprintln!(
            "{estimate}{simulated}
(--estimate prints this and stops before any call)"
        );
    }
    wanted
}

/// If `error` means no item can succeed (bad credentials, spent budget), say what to do.
pub fn explain_fatal(error: &Error) -> Option<String> {
    let root = match error {
        Error::Stopped(cause) => cause.as_ref(),
        other => other,
    };
    match root {
        Error::Authentication { .. } => Some(format!(
            "stopped: {root}\n(or run with --simulate to try the example on the built-in simulator)"
        )),
        Error::BudgetExceeded { .. } => Some(format!("stopped: {root}")),
        _ => None,
    }
}

/// What every example that reads a folder says in its `--help`.
pub const LINKS_NOTE: &str = "Symbolic links are never followed: a link in the folder (to a \
file or to another folder) is skipped, so nothing outside the folder you name is read or sent.";

/// The identity (device, inode) of a plain file found by walking a folder, `None` for
/// anything else: a symbolic link is not followed, since it can point out of the folder (at
/// `~/.ssh`, say) and the file would be sent to the model.
pub fn plain_file_id(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type().is_file().then(|| (meta.dev(), meta.ino()))
}

/// The bytes of a file a walk found as `id` (see [`plain_file_id`]): opened without
/// following a link at its path, and read only if it is still that very file, so a link or
/// another file put there since (at the file or at a folder above it) is not read.
pub fn read_walked_file(path: &Path, id: (u64, u64)) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        // Non-blocking: a FIFO put in its place would otherwise hold the open forever.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() || (meta.dev(), meta.ino()) != id {
        return Err(std::io::Error::other(format!(
            "{} is no longer the file found in the folder",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Whether `--help` (or `-h`) was asked for.
pub fn wants_help(args: &[String]) -> bool {
    args.iter().any(|a| a == "--help" || a == "-h")
}

/// `--name value` from the arguments.
pub fn flag_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The flags every example takes that have a value (see [`start`]).
pub const COMMON_FLAGS_WITH_VALUES: &[&str] = &["--backend", "--model", "--concurrency"];

/// The arguments that are neither flags nor flag values (`flags_with_values` are the
/// example's own; the common ones are always known).
pub fn positional(args: &[String], flags_with_values: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for arg in args {
        if skip {
            skip = false;
            continue;
        }
        if flags_with_values.contains(&arg.as_str())
            || COMMON_FLAGS_WITH_VALUES.contains(&arg.as_str())
        {
            skip = true;
        } else if !arg.starts_with("--") {
            out.push(arg.clone());
        }
    }
    out
}

/// Failures grouped by what went wrong: one line per distinct error with how many items had
/// it and a few of them, most frequent first (the full list is in the example's own output
/// files).
pub fn print_failures<'a>(failures: impl IntoIterator<Item = (String, &'a Error)>) {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (item, error) in failures {
        let key = error.to_string();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, items)) => items.push(item),
            None => groups.push((key, vec![item])),
        }
    }
    groups.sort_by_key(|(_, items)| std::cmp::Reverse(items.len()));
    for (error, items) in groups {
        let shown: Vec<&str> = items.iter().take(3).map(String::as_str).collect();
        let more = items.len().saturating_sub(shown.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let error: String = error.chars().take(160).collect();
        println!(
            "  {:>4} × {error}  ({}{more})",
            items.len(),
            shown.join(", ")
        );
    }
}
