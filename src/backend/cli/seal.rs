//! Sealing: what a session passes to the CLI so that neither an item's text nor the user's
//! machine steers it (README, "Security").
//!
//! Measured on the CLI (2.1.197 and 2.1.332), each with a real-tier test in
//! `tests/real/sealing.rs`:
//! - `--safe-mode` turns off memory files (CLAUDE.md), hooks, MCP servers, skills, plugins,
//!   custom commands, agents and output styles, and keeps the user's login.
//! - `--setting-sources user` drops the project's and the local settings (a project `model`,
//!   project hooks); `--strict-mcp-config` drops every MCP server not given on the command line.
//! - `CLAUDE_CODE_DISABLE_ATTACHMENTS=1` stops `@path` in a prompt from attaching that file.
//!   The user's own `settings.json` can set environment variables that override the process
//!   environment, so the same variables also go in `--settings`, which wins over it.
//! - A user message whose text starts with `/` runs as a slash command; text that starts
//!   with anything else (a space included) is plain text. So such text gets one leading space.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde_json::json;

use super::spawner;
use crate::error::shorten;
use crate::{CliError, Error};

/// The oldest CLI whose sealing flags this crate has verified (CI runs it and the newest).
pub(crate) const MIN_CLI_VERSION: CliVersion = CliVersion(2, 1, 197);

/// How long `claude --version` may take before the CLI is refused.
const VERSION_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags that seal every process. With the user's configuration re-opened, only the
/// project's and local settings stay off.
pub(crate) fn seal_args(load_user_config: bool) -> Vec<&'static str> {
    let mut args = vec!["--setting-sources", "user"];
    if !load_user_config {
        args.extend(["--safe-mode", "--strict-mcp-config"]);
    }
    args
}

/// Set for every process, sealed or not: each turns off a model call, a model switch or a
/// program the user did not ask for (found in the CLI's code, probed on 2.1.197 and 2.1.332).
const ALWAYS_ENV: &[(&str, &str)] = &[
    // Background traffic: 2.1.197 asks the model for a session title with each item's whole
    // text (a second paid call per item), and both versions call home at start-up.
    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
    // The title call again, should an Agent SDK host's environment bring it back (2.1.332).
    ("CLAUDE_CODE_DISABLE_TERMINAL_TITLE", "1"),
    ("CLAUDE_CODE_ENABLE_PROMPT_SUGGESTION", "false"),
    // `git status` in the working folder runs a checkout's `core.fsmonitor` and clean filters.
    ("CLAUDE_CODE_DISABLE_GIT_INSTRUCTIONS", "1"),
    // A stream that fails is asked again without streaming: a call the stream never shows.
    ("CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK", "1"),
    // 2.1.332 asks a refused prompt again by itself, and may answer from another model.
    ("CLAUDE_CODE_DISABLE_REFUSAL_RETRY", "1"),
    ("CLAUDE_CODE_DISABLE_REFUSAL_FALLBACK", "1"),
    ("CLAUDE_CODE_NO_MODEL_FALLBACK", "1"),
    ("CLAUDE_CODE_DISABLE_RESPONSE_COMPARISON", "1"),
    // Whatever git still runs never waits for a password or takes the index lock.
    ("GIT_TERMINAL_PROMPT", "0"),
    ("GIT_OPTIONAL_LOCKS", "0"),
];

/// Environment variables that seal every process; also passed through `--settings` so that
/// the user's own settings file cannot turn them back off.
pub(crate) fn seal_env(load_user_config: bool, interpret_item_text: bool) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ALWAYS_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if !interpret_item_text {
        env.push((
            "CLAUDE_CODE_DISABLE_ATTACHMENTS".to_string(),
            "1".to_string(),
        ));
    }
    if !load_user_config {
        env.push(("CLAUDE_CODE_SAFE_MODE".to_string(), "1".to_string()));
        env.push((
            "CLAUDE_CODE_DISABLE_AUTO_MEMORY".to_string(),
            "1".to_string(),
        ));
        // The user's and the machine's git configuration is configuration too (a global
        // `core.fsmonitor`, `core.attributesFile` with a clean filter).
        env.push(("GIT_CONFIG_GLOBAL".to_string(), "/dev/null".to_string()));
        env.push(("GIT_CONFIG_NOSYSTEM".to_string(), "1".to_string()));
    }
    env
}

/// The `--settings` value carrying [`seal_env`]. The spinner tips are set so that 2.1.197
/// does not start a shell for `ps aux | grep` (looking for an editor to suggest) at each start.
pub(crate) fn seal_settings(load_user_config: bool, interpret_item_text: bool) -> String {
    let env: serde_json::Map<String, serde_json::Value> =
        seal_env(load_user_config, interpret_item_text)
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect();
    json!({
        "env": env,
        "spinnerTipsOverride": { "excludeDefault": true, "tips": ["."] },
    })
    .to_string()
}

/// Command-line flags that would undo the sealing; refused in `arg(..)` unless the user's
/// configuration is re-opened.
pub(crate) const UNSEALING_ARGS: &[&str] = &[
    "--settings",
    "--setting-sources",
    "--mcp-config",
    "--plugin-dir",
    "--plugin-url",
    "--agents",
    "--agent",
    "--add-dir",
];

/// An item's text as it is sent: text the CLI would run as a command (it starts with `/`)
/// gets one leading space; everything else is sent unchanged.
pub(crate) fn item_text(prompt: &str, interpret_item_text: bool) -> Cow<'_, str> {
    if !interpret_item_text && prompt.starts_with('/') {
        Cow::Owned(format!(" {prompt}"))
    } else {
        Cow::Borrowed(prompt)
    }
}

/// A CLI version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CliVersion(pub u32, pub u32, pub u32);

impl CliVersion {
    /// Read the version from `claude --version` output (`2.1.197 (Claude Code)`).
    pub(crate) fn parse(output: &str) -> Option<CliVersion> {
        let word = output.split_whitespace().next()?;
        let core = word.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let version = CliVersion(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(version)
    }
}

impl fmt::Display for CliVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

type VersionKey = (PathBuf, u64, Option<SystemTime>, Vec<(String, String)>);

/// Refuse a CLI older than [`MIN_CLI_VERSION`], or one that does not say its version. The
/// answer is cached per executable (path, size, modification time) and environment.
pub(crate) fn check_cli_version(
    program: &Path,
    env: &[(String, String)],
    env_remove: &[String],
) -> Result<CliVersion, Error> {
    static CACHE: OnceLock<Mutex<HashMap<VersionKey, Result<CliVersion, String>>>> =
        OnceLock::new();
    let meta = std::fs::metadata(program).ok();
    let key = (
        program.to_path_buf(),
        meta.as_ref().map_or(0, |m| m.len()),
        meta.and_then(|m| m.modified().ok()),
        env.to_vec(),
    );
    let cache = CACHE.get_or_init(Default::default);
    let cached = cache.lock().get(&key).cloned();
    let answer = match cached {
        Some(answer) => answer,
        None => {
            let answer = read_version(program, env, env_remove);
            // Only a version read is kept: a check that failed (a busy machine, a spawn error)
            // is tried again at the next build().
            if answer.is_ok() {
                cache.lock().insert(key, answer.clone());
            }
            answer
        }
    };
    let refuse = |version: String| {
        Error::Cli(CliError::Unsupported {
            path: program.to_path_buf(),
            version,
            minimum: MIN_CLI_VERSION.to_string(),
        })
    };
    match answer {
        Ok(version) if version >= MIN_CLI_VERSION => Ok(version),
        Ok(version) => Err(refuse(version.to_string())),
        Err(what) => Err(refuse(what)),
    }
}

fn read_version(
    program: &Path,
    env: &[(String, String)],
    env_remove: &[String],
) -> Result<CliVersion, String> {
    let mut cmd = Command::new(program);
    cmd.arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_remove("CLAUDECODE");
    for key in env_remove {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("`--version` could not run: {e}"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    // Read on a thread so that a CLI that never ends cannot hold the caller past the limit.
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.by_ref().take(4096).read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let output = rx.recv_deadline(Instant::now() + VERSION_TIMEOUT);
    let _ = child.kill();
    let _ = child.wait();
    let output =
        output.map_err(|_| format!("`--version` gave no answer in {VERSION_TIMEOUT:?}"))?;
    CliVersion::parse(&output).ok_or_else(|| shorten(output.trim(), 100))
}

/// A private, empty working directory for a session's processes (mode 0700), removed when
/// dropped. Under `XDG_RUNTIME_DIR` when there is one (a folder only this user can write,
/// so no one else can plant a `CLAUDE.md` in a parent folder), else the temp folder.
///
/// A program killed with `kill -9`, or one that ran `exec`, drops nothing: the watchdog
/// removes its folders when it ends (`spawner`), and a start sweeps away the folders of
/// programs that ended without one. A folder's name says whose it is (pid namespace, pid,
/// the process's start time, a nonce; `spawner::Host`), so a folder is removed only when it
/// is ours by name and by owner and the program that made it has ended, never because its
/// pid was given to another process.
pub(crate) struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    pub(crate) fn create(session_id: u64) -> Result<PrivateDir, Error> {
        let parent = private_dir_parent();
        PrivateDir::create_in(&parent, session_id).map_err(|source| {
            Error::Cli(CliError::TempFolder {
                path: parent,
                source: std::sync::Arc::new(source),
            })
        })
    }

    fn create_in(parent: &Path, session_id: u64) -> std::io::Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        let host = spawner::host();
        // Once per folder and program: the watchdog learns where to clean up, and what
        // ended programs left there goes.
        static SEEN: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
        if SEEN
            .get_or_init(Default::default)
            .lock()
            .insert(parent.to_path_buf())
        {
            sweep_stale(parent, host);
            spawner::watch_folder(parent);
        }
        let prefix = host.folder_prefix();
        let mut attempt = 0u32;
        loop {
            let path = parent.join(format!("{prefix}{session_id}-{attempt}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Where private folders are made: `XDG_RUNTIME_DIR` when it is an absolute path to a folder,
/// else the temp folder (`TMPDIR`, else `/tmp`).
fn private_dir_parent() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(runtime) if runtime.is_absolute() && runtime.is_dir() => runtime,
        Some(runtime) => {
            log::warn!(
                "XDG_RUNTIME_DIR ({}) is not a folder; the claude processes' private folder goes in the temp folder",
                runtime.display()
            );
            std::env::temp_dir()
        }
        None => std::env::temp_dir(),
    }
}

/// Remove the private folders in `parent` whose programs have ended: ours by name (this pid
/// namespace), a directory owned by this user, not a link, and the process that made it is
/// gone (or is this one, before an `exec`).
fn sweep_stale(parent: &Path, host: &spawner::Host) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    // SAFETY: geteuid only reads this process's user id.
    let me = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if host.folder_owner_ended(name) != Some(true) {
            continue;
        }
        let path = entry.path();
        let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if ours {
            log::debug!("removing {}, left by a program that ended", path.display());
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(
            CliVersion::parse("2.1.197 (Claude Code)\n"),
            Some(CliVersion(2, 1, 197))
        );
        assert_eq!(CliVersion::parse("2.1.332"), Some(CliVersion(2, 1, 332)));
        assert_eq!(
            CliVersion::parse("3.0.0-beta.1 (Claude Code)"),
            Some(CliVersion(3, 0, 0))
        );
        assert_eq!(CliVersion::parse("Claude Code"), None);
        assert_eq!(CliVersion::parse(""), None);
        assert_eq!(CliVersion::parse("2.1"), None);
        assert_eq!(CliVersion::parse("2.1.3.4"), None);
        assert!(CliVersion(2, 1, 197) < CliVersion(2, 1, 332));
        assert!(CliVersion(2, 0, 999) < MIN_CLI_VERSION);
        assert!(CliVersion(10, 0, 0) > MIN_CLI_VERSION);
    }

    #[test]
    fn only_command_text_changes() {
        assert_eq!(
            item_text("/config model=haiku", false),
            " /config model=haiku"
        );
        assert_eq!(item_text("/clear", false), " /clear");
        assert_eq!(item_text("//x", false), " //x");
        for plain in ["hello /cost", " /cost", "@.env", "!ls", "#note", "&x", ""] {
            assert_eq!(item_text(plain, false), plain);
        }
        assert_eq!(item_text("/cost", true), "/cost");
    }

    #[test]
    fn settings_carry_the_seal() {
        let sealed: serde_json::Value = serde_json::from_str(&seal_settings(false, false)).unwrap();
        assert_eq!(sealed["env"]["CLAUDE_CODE_DISABLE_ATTACHMENTS"], "1");
        assert_eq!(sealed["env"]["CLAUDE_CODE_SAFE_MODE"], "1");
        let reopened: serde_json::Value =
            serde_json::from_str(&seal_settings(true, false)).unwrap();
        assert_eq!(reopened["env"]["CLAUDE_CODE_DISABLE_ATTACHMENTS"], "1");
        assert!(reopened["env"].get("CLAUDE_CODE_SAFE_MODE").is_none());
        let open: serde_json::Value = serde_json::from_str(&seal_settings(true, true)).unwrap();
        assert_eq!(open["env"]["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"], "1");
        assert_eq!(open["env"]["CLAUDE_CODE_DISABLE_GIT_INSTRUCTIONS"], "1");
        assert!(open["env"].get("CLAUDE_CODE_DISABLE_ATTACHMENTS").is_none());
        assert_eq!(sealed["env"]["GIT_CONFIG_GLOBAL"], "/dev/null");
        assert!(open["env"].get("GIT_CONFIG_GLOBAL").is_none());
        assert_eq!(open["spinnerTipsOverride"]["excludeDefault"], true);
        assert!(seal_args(false).contains(&"--safe-mode"));
        assert!(!seal_args(true).contains(&"--safe-mode"));
        assert!(seal_args(true).contains(&"--setting-sources"));
    }

    #[test]
    fn private_dir_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = PrivateDir::create(7).unwrap();
        let path = dir.path().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
        std::fs::write(path.join("left"), "x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }
}
