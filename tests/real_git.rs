//! Real tier: nothing runs from the folder the CLI works in. A git checkout can carry
//! configuration that runs a program (`core.fsmonitor` and a clean filter run on `git
//! status`), and so can the user's own `~/.gitconfig`; an archive or a copied tree is enough
//! to plant one.
//! The CLI (2.1.197) runs `git status` in its working folder unless told not to, so a session
//! with `cwd(checkout)`, or with no cwd while the temp folder lies inside a work tree, would
//! run them. One test in this binary: it points the temp folder into a checkout.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use claude_rayon::prelude::*;
use claude_rayon::Session;
use rayon::prelude::*;
use support::{ticket, Real};

/// A script `dir/tag.sh` that logs each run under `tag` to `log`, then runs `then`.
fn logging_script(dir: &Path, tag: &str, log: &Path, then: &str) -> PathBuf {
    let path = dir.join(format!("{tag}.sh"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho {tag} \"$@\" >> {}\n{then}\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A program that logs each run under `tag` and answers like a monitor with nothing to say.
fn logging_program(dir: &Path, tag: &str, log: &Path) -> PathBuf {
    logging_script(dir, tag, log, "exit 1")
}

/// A clean filter that logs each run under `tag` and passes the file through.
fn logging_filter(dir: &Path, tag: &str, log: &Path) -> PathBuf {
    logging_script(dir, tag, log, "cat")
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .status()
        .expect("git");
    assert!(status.success(), "git {args:?}");
}

/// The control: `git status` in `dir`, with `home` as HOME, runs `whose` monitor and filter
/// (logged under `monitor` and `filter`), so the test would see a run.
#[track_caller]
fn assert_git_status_runs(
    dir: &Path,
    home: &Path,
    log: &Path,
    [monitor, filter]: [&str; 2],
    whose: &str,
) {
    let control = Command::new("git")
        .args(["--no-optional-locks", "status", "--short"])
        .current_dir(dir)
        .env("HOME", home)
        .output()
        .unwrap();
    assert!(control.status.success());
    assert!(
        std::fs::read_to_string(log).is_ok_and(|l| l.contains(monitor) && l.contains(filter)),
        "{whose} monitor and filter do not run under git status: the test proves nothing"
    );
}

/// Every item answered on `session`.
#[track_caller]
fn assert_all_answered(session: &Session, items: &[String]) {
    let answered = items
        .par_iter()
        .claude_map(session, |t| t.to_string())
        .filter(Result::is_ok)
        .count();
    assert_eq!(answered, items.len());
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn nothing_runs_from_a_checkout_or_the_users_git_config() {
    let Some(real) = Real::start("nothing_runs_from_a_checkout_or_the_users_git_config") else {
        return;
    };
    let checkout = real.cwd.path().join("checkout");
    let programs = real.home.path().join("programs");
    std::fs::create_dir_all(&programs).unwrap();
    let log = real.home.path().join("ran.log");
    // A second checkout without configuration of its own: the user's applies there.
    let plain = real.cwd.path().join("plain");
    for dir in [&checkout, &plain] {
        std::fs::create_dir_all(dir).unwrap();
        git(dir, &["init", "-q"]);
        std::fs::write(dir.join("README.md"), ticket(1, 400)).unwrap();
        git(dir, &["add", "README.md"]);
        git(dir, &["commit", "-q", "-m", "first"]);
    }
    // Only now, so that setting up ran none of them.
    let repo_monitor = logging_program(&programs, "repo-fsmonitor", &log);
    git(
        &checkout,
        &["config", "core.fsmonitor", repo_monitor.to_str().unwrap()],
    );
    // A clean filter runs when `git status` finds a file changed since it was staged.
    let repo_filter = logging_filter(&programs, "repo-clean-filter", &log);
    std::fs::write(checkout.join(".gitattributes"), "*.md filter=tidy\n").unwrap();
    git(
        &checkout,
        &["config", "filter.tidy.clean", repo_filter.to_str().unwrap()],
    );
    let user_monitor = logging_program(&programs, "user-fsmonitor", &log);
    let user_filter = logging_filter(&programs, "user-clean-filter", &log);
    let user_attributes = real.home.path().join("attributes");
    std::fs::write(&user_attributes, "*.md filter=neat\n").unwrap();
    std::fs::write(
        real.home.path().join(".gitconfig"),
        format!(
            "[core]\n\tfsmonitor = {}\n\tattributesFile = {}\n[filter \"neat\"]\n\tclean = {}\n",
            user_monitor.display(),
            user_attributes.display(),
            user_filter.display()
        ),
    )
    .unwrap();
    // The same text with another modification time: only the filtered text tells git
    // whether it changed.
    for dir in [&checkout, &plain] {
        let readme = std::fs::File::options()
            .write(true)
            .open(dir.join("README.md"))
            .unwrap();
        readme
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000))
            .unwrap();
    }
    // The control: git itself runs them, so the test would see a run.
    let home = real.home.path();
    let repo_tags = ["repo-fsmonitor", "repo-clean-filter"];
    assert_git_status_runs(&checkout, home, &log, repo_tags, "the planted");
    let user_tags = ["user-fsmonitor", "user-clean-filter"];
    assert_git_status_runs(&plain, home, &log, user_tags, "the user's");
    std::fs::remove_file(&log).unwrap();

    let items: Vec<String> = (0..4).map(|i| ticket(i, 500)).collect();
    // With the checkout as the working folder.
    let session = real
        .builder()
        .cli(|c| c.cwd(&checkout))
        .concurrency(2)
        .build()
        .unwrap();
    assert_all_answered(&session, &items);
    session.close().unwrap();
    // With no cwd, the private folder inside a work tree (the temp folder is one there).
    let tmp = plain.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    // SAFETY (edition 2021: safe): the only test in this binary, set before any session.
    std::env::set_var("TMPDIR", &tmp);
    std::env::remove_var("XDG_RUNTIME_DIR");
    let session = real
        .bare_builder()
        .model("claude-sonnet-4-5")
        .cli(|c| c.cli_max_retries(Some(0)))
        .concurrency(2)
        .build()
        .unwrap();
    assert_all_answered(&session, &items);
    let pids = real.cli_pids();
    assert!(!pids.is_empty());
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", pids[0])).unwrap();
    assert!(cwd.starts_with(&tmp), "{}", cwd.display());
    session.close().unwrap();

    let ran = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        ran.is_empty(),
        "programs ran from git configuration:\n{ran}"
    );
}
