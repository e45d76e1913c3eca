//! Settings only the Claude Code CLI understands, with their checks; and the settings
//! that take one of a fixed list of values.

use std::fmt;
use std::path::PathBuf;

use crate::backend::spec::AnswerSpec;
use crate::Error;

/// The longest line read from the CLI by default: answers of tens of megabytes fit.
const DEFAULT_MAX_LINE_BYTES: usize = 256 * 1024 * 1024;

/// A warm process is retired after this many items: the most a process was measured over
/// on both CLI versions (`benches/process_memory.rs`, docs/tuning.md).
const DEFAULT_RECYCLE_AFTER_ITEMS: Option<u64> = Some(2000);
/// A warm process is retired above this resident memory: above every reading of a healthy
/// process over 2,000 items (at most 475 MiB), about 2.5 times a fresh one.
const DEFAULT_RECYCLE_ABOVE_MEMORY: Option<u64> = Some(512 * 1024 * 1024);

/// What the model may do without asking (`--permission-mode`). Matters only when tools are
/// on ([`CliOptions::tools`]).
///
/// # Examples
///
/// ```
/// use claude_rayon::{PermissionMode, Session};
///
/// let builder = Session::builder().cli(|c| c.tools(["Read"]).permission_mode(PermissionMode::Plan));
/// assert_eq!(PermissionMode::AcceptEdits.to_string(), "acceptEdits");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PermissionMode {
    /// `default`: ask before anything that needs permission (in `-p` mode: refuse it).
    Default,
    /// `acceptEdits`: file edits without asking.
    AcceptEdits,
    /// `auto`: the CLI decides.
    Auto,
    /// `bypassPermissions`: everything without asking.
    BypassPermissions,
    /// `dontAsk`: refuse what would need asking.
    DontAsk,
    /// `plan`: plan only, change nothing.
    Plan,
}

impl PermissionMode {
    /// The value the CLI takes.
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionMode::Default => "default",
            PermissionMode::AcceptEdits => "acceptEdits",
            PermissionMode::Auto => "auto",
            PermissionMode::BypassPermissions => "bypassPermissions",
            PermissionMode::DontAsk => "dontAsk",
            PermissionMode::Plan => "plan",
        }
    }
}

impl fmt::Display for PermissionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings only the Claude Code CLI understands: where it is, its arguments, environment and
/// working folder, its tools, how its processes are sealed and recycled. Set them through
/// [`SessionBuilder::cli`](crate::SessionBuilder::cli); `build()` checks them with the rest.
///
/// The defaults suit batch work: no tools, an empty system prompt, sealed processes (no
/// memory files, hooks, MCP servers or customizations of yours) and no transcripts written
/// to `~/.claude`.
///
/// `Debug` shows the names of the environment variables set, never their values.
///
/// # Examples
///
/// ```
/// use claude_rayon::Session;
///
/// let builder = Session::builder()
///     .model("sonnet")
///     .cli(|c| c.env("ANTHROPIC_API_KEY", "sk-ant-secret").max_turns(1))
///     // Calls compose: this one sees the options as the one before left them.
///     .cli(|c| c.arg("--verbose"));
/// let shown = format!("{builder:?}");
/// assert!(shown.contains("ANTHROPIC_API_KEY") && !shown.contains("sk-ant-secret"));
/// ```
#[derive(Clone)]
pub struct CliOptions {
    pub(crate) cli_path: Option<PathBuf>,
    /// Keep the CLI's own system prompt instead of an empty one.
    pub(crate) keep_cli_system_prompt: bool,
    pub(crate) tools: Option<Vec<String>>,
    pub(crate) allowed_tools: Vec<String>,
    pub(crate) disallowed_tools: Vec<String>,
    pub(crate) permission_mode: Option<PermissionMode>,
    pub(crate) max_turns: Option<u32>,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) env_remove: Vec<String>,
    pub(crate) persist_sessions: bool,
    pub(crate) fresh_process_per_item: bool,
    /// A process is retired at checkin once it has answered this many items.
    pub(crate) recycle_after_items: Option<u64>,
    /// A process is retired at checkin once its resident memory is above this (bytes).
    pub(crate) recycle_above_memory: Option<u64>,
    pub(crate) extra_args: Vec<String>,
    pub(crate) load_user_config: bool,
    pub(crate) interpret_item_text: bool,
    pub(crate) max_line_bytes: usize,
    pub(crate) max_starting_processes: usize,
    pub(crate) cli_max_retries: Option<u32>,
}

impl Default for CliOptions {
    fn default() -> Self {
        CliOptions {
            cli_path: None,
            keep_cli_system_prompt: false,
            tools: Some(Vec::new()),
            allowed_tools: Vec::new(),
            disallowed_tools: Vec::new(),
            permission_mode: None,
            max_turns: None,
            cwd: None,
            env: Vec::new(),
            env_remove: Vec::new(),
            persist_sessions: false,
            fresh_process_per_item: false,
            recycle_after_items: DEFAULT_RECYCLE_AFTER_ITEMS,
            recycle_above_memory: DEFAULT_RECYCLE_ABOVE_MEMORY,
            extra_args: Vec::new(),
            load_user_config: false,
            interpret_item_text: false,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_starting_processes: std::thread::available_parallelism()
                .map_or(2, std::num::NonZeroUsize::get)
                .max(2),
            cli_max_retries: Some(2),
        }
    }
}

impl CliOptions {
    /// The `claude` executable to run. Without it: `CLAUDE_CODE_BIN`, then `claude` on `PATH`,
    /// then the usual install folders.
    pub fn cli_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.cli_path = Some(path.into());
        self
    }

    /// Keep the CLI's own system prompt (about 6 KB, billed on every item) instead of an
    /// empty one. `build()` refuses it together with
    /// [`SessionBuilder::system_prompt`](crate::SessionBuilder::system_prompt)
    /// ([`Error::InvalidConfig`]): the CLI takes one or the other.
    ///
    /// # Examples
    ///
    /// ```
    /// // The CLI's own prompt, and yours after it.
    /// let builder = claude_rayon::Session::builder()
    ///     .cli(|c| c.cli_system_prompt())
    ///     .append_system_prompt("Answer in one line.");
    /// ```
    pub fn cli_system_prompt(mut self) -> Self {
        self.keep_cli_system_prompt = true;
        self
    }

    /// The built-in tools offered to the model (`--tools`). The default is none (`--tools ""`):
    /// tool definitions add about 64 KB to every request. Pass `["default"]` for all of them.
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::{PermissionMode, Session};
    ///
    /// // Items may read files, and nothing else.
    /// let builder = Session::builder()
    ///     .cli(|c| c.tools(["Read"]).permission_mode(PermissionMode::Plan));
    /// ```
    pub fn tools<S: Into<String>>(mut self, tools: impl IntoIterator<Item = S>) -> Self {
        self.tools = Some(tools.into_iter().map(Into::into).collect());
        self
    }

    /// Tools the model may use without asking (`--allowedTools`), e.g. `"Bash(git *)"`.
    pub fn allowed_tools<S: Into<String>>(mut self, tools: impl IntoIterator<Item = S>) -> Self {
        self.allowed_tools = tools.into_iter().map(Into::into).collect();
        self
    }

    /// Tools the model may never use (`--disallowedTools`).
    pub fn disallowed_tools<S: Into<String>>(mut self, tools: impl IntoIterator<Item = S>) -> Self {
        self.disallowed_tools = tools.into_iter().map(Into::into).collect();
        self
    }

    /// The permission mode (`--permission-mode`).
    pub fn permission_mode(mut self, mode: PermissionMode) -> Self {
        self.permission_mode = Some(mode);
        self
    }

    /// The most model turns per item (`--max-turns`); running out is [`CliError::MaxTurns`](crate::CliError::MaxTurns).
    pub fn max_turns(mut self, turns: u32) -> Self {
        self.max_turns = Some(turns);
        self
    }

    /// The working directory of the CLI processes. Without it, each session runs its
    /// processes in a private, empty folder of its own (mode 0700, removed at close). Either
    /// way, the project configuration in that folder (its `CLAUDE.md`, `.mcp.json`,
    /// `.claude/settings.json`, skills and commands) does not apply.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// // The model reads the repository it reviews.
    /// let session = claude_rayon::Session::builder()
    ///     .cli(|c| c.cwd("/src/my-project").tools(["Read", "Grep"]))
    ///     .build()?;
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Set an environment variable for the CLI processes (for example `ANTHROPIC_API_KEY`).
    /// Values are never shown in `Debug` output, logs or errors.
    ///
    /// # Examples
    ///
    /// ```
    /// let key = "sk-ant-secret"; // read from your own secret store
    /// let builder = claude_rayon::Session::builder()
    ///     .cli(|c| c.env("ANTHROPIC_API_KEY", key).env_remove("ANTHROPIC_AUTH_TOKEN"));
    /// assert!(!format!("{builder:?}").contains(key));
    /// ```
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// Remove an inherited environment variable from the CLI processes (for example
    /// `ANTHROPIC_AUTH_TOKEN`, so that an API key given with [`env`](Self::env) is used).
    pub fn env_remove(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env_remove.push(key);
        self
    }

    /// How many CLI processes may be starting at once (default: the number of cores, at
    /// least 2). A start costs about 0.8 s of CPU; starting 32 at once on 2 cores delays
    /// every first answer by many seconds, while starting them a few at a time gets the first
    /// answers in about a second and the rest as each process warms up. Set it to
    /// `concurrency` to start them all at once.
    pub fn max_starting_processes(mut self, processes: usize) -> Self {
        self.max_starting_processes = processes;
        self
    }

    /// The longest line the CLI may write, in bytes (default 256 MiB; an answer is one line).
    /// A longer line fails its item with [`CliError::Protocol`](crate::CliError::Protocol) and the process is killed, so a
    /// CLI that writes without end cannot take the program's memory.
    pub fn max_line_bytes(mut self, bytes: usize) -> Self {
        self.max_line_bytes = bytes;
        self
    }

    /// Keep the CLI's transcripts under `~/.claude/projects` (default: off, so a batch does
    /// not flood the user's `claude --resume` list).
    pub fn persist_sessions(mut self, persist: bool) -> Self {
        self.persist_sessions = persist;
        self
    }

    /// Start a new CLI process for every item instead of reusing warm ones. Costs about
    /// 0.8 s of CPU and 300 MB per item; use it only when items must not share a process.
    pub fn fresh_process_per_item(mut self, fresh: bool) -> Self {
        self.fresh_process_per_item = fresh;
        self
    }

    /// Retire a warm process once it has answered `items` items (`None`: never), and start
    /// a fresh one for the next item. The CLI's memory grows over a long headless session;
    /// a process is retired only between items (when it goes back to the pool), so no item
    /// is cut short, lost or asked twice. A [`Conversation`](crate::Conversation) keeps its
    /// process until it is dropped. Default: `Some(2000)`, the most items a process was
    /// measured over on both CLI versions; a recycle costs about one start (docs/tuning.md,
    /// "Recycling").
    ///
    /// # Examples
    ///
    /// ```
    /// // A fresh process every 200 items; no memory ceiling.
    /// let builder = claude_rayon::Session::builder()
    ///     .cli(|c| c.recycle_after_items(Some(200)).recycle_above_memory(None));
    /// ```
    pub fn recycle_after_items(mut self, items: Option<u64>) -> Self {
        self.recycle_after_items = items;
        self
    }

    /// Retire a warm process, between items, once its resident memory (Linux `VmRSS`) is
    /// above `bytes` (`None`: never). Read from `/proc` when the process goes back to the
    /// pool; elsewhere than Linux only [`recycle_after_items`](Self::recycle_after_items)
    /// applies. Default: `Some(512 MiB)`, above every reading of a healthy process over
    /// 2,000 items (at most 475 MiB; 187-190 MiB fresh), so that it retires only a process
    /// that grows beyond what a healthy one reaches (docs/tuning.md, "Recycling").
    pub fn recycle_above_memory(mut self, bytes: Option<u64>) -> Self {
        self.recycle_above_memory = bytes;
        self
    }

    /// Load your own Claude Code configuration into every process: `~/.claude/CLAUDE.md`,
    /// your hooks, MCP servers, skills, plugins, agents and output styles (default: off).
    ///
    /// Off, the processes are sealed: they read no memory files, run no hooks, start no MCP
    /// servers and load no customizations, while your login or API key works as usual. The
    /// project's configuration (in the working directory) stays off either way, and an
    /// item's text still cannot attach files or run commands; see
    /// [`interpret_item_text`](Self::interpret_item_text) for that.
    ///
    /// # Examples
    ///
    /// ```
    /// // Items may use the MCP servers and memory configured in ~/.claude.
    /// let builder = claude_rayon::Session::builder().cli(|c| c.load_user_config(true));
    /// ```
    pub fn load_user_config(mut self, load: bool) -> Self {
        self.load_user_config = load;
        self
    }

    /// Let an item's text do what text typed into the CLI does (default: off): `@path`
    /// attaches that file to the request and a leading `/` runs a CLI command (`/config`
    /// can rewrite your settings). Turn it on only for prompts you wrote yourself.
    ///
    /// Off, an item's text is always sent as text: `@` mentions stay text, and text that
    /// begins with `/` is sent with one leading space so that the CLI does not run it.
    pub fn interpret_item_text(mut self, interpret: bool) -> Self {
        self.interpret_item_text = interpret;
        self
    }

    /// An extra command-line argument for the CLI, passed as is after the ones this crate sets.
    /// Flags that would undo the sealing (`--settings`, `--setting-sources`, `--mcp-config`,
    /// `--plugin-dir`, `--plugin-url`, `--agents`, `--agent`, `--add-dir`) are refused by
    /// `build()` unless [`load_user_config`](Self::load_user_config) is on.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// How often the CLI itself retries an API call before reporting an error
    /// (`CLAUDE_CODE_MAX_RETRIES`; default here 2, the CLI's own default is 10). `None` keeps
    /// the CLI's default. See the crate's retry documentation for how the two share the work.
    pub fn cli_max_retries(mut self, retries: Option<u32>) -> Self {
        self.cli_max_retries = retries;
        self
    }

    /// The system prompt the CLI is given: the CLI's own (`None`) when it is kept, else the
    /// one set, else the empty one. The command line and the journal's key both use this.
    pub(crate) fn system_prompt<'a>(&self, spec: &'a AnswerSpec) -> Option<&'a str> {
        if self.keep_cli_system_prompt {
            None
        } else {
            Some(spec.system_prompt.as_deref().unwrap_or(""))
        }
    }

    /// The checks only the CLI needs, `spec` being what the session asks of every answer
    /// (its prompts and schema go on the command line).
    pub(crate) fn validate(&self, spec: &AnswerSpec) -> Result<(), Error> {
        let invalid = |msg: String| Err(Error::InvalidConfig(msg));
        if self.keep_cli_system_prompt && spec.system_prompt.is_some() {
            return invalid(
                "system_prompt(..) and cli(|c| c.cli_system_prompt()) both given; keep the \
                 CLI's own system prompt or give yours, not both"
                    .into(),
            );
        }
        if self.recycle_after_items == Some(0) {
            return invalid(
                "cli(|c| c.recycle_after_items(..)) must be at least 1 (None never recycles)"
                    .into(),
            );
        }
        if self.max_starting_processes == 0 {
            return invalid("cli(|c| c.max_starting_processes(..)) must be at least 1".into());
        }
        if self.max_line_bytes < 64 * 1024 {
            return invalid(format!(
                "cli(|c| c.max_line_bytes({})) is too small for the CLI's own lines; use at least 64 KiB",
                self.max_line_bytes
            ));
        }
        if self.max_turns == Some(0) {
            return invalid("cli(|c| c.max_turns(..)) must be at least 1".into());
        }
        let tools_off = matches!(&self.tools, Some(t) if t.is_empty());
        if tools_off && !self.allowed_tools.is_empty() {
            return invalid(format!(
                "cli(|c| c.allowed_tools({:?})) given but tools are off (the default); enable them with cli(|c| c.tools([...]))",
                self.allowed_tools
            ));
        }
        if let Some(both) = self
            .allowed_tools
            .iter()
            .find(|t| self.disallowed_tools.contains(t))
        {
            return invalid(format!("tool {both:?} is both allowed and disallowed"));
        }
        for (key, _) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return invalid(format!("environment variable name {key:?} is not valid"));
            }
        }
        if let Some(dir) = &self.cwd {
            if !dir.is_dir() {
                return invalid(format!(
                    "cli(|c| c.cwd(..)): {} is not a directory",
                    dir.display()
                ));
            }
        }
        if !self.load_user_config {
            let flag_name = |arg: &str| arg.split('=').next().unwrap_or("").to_string();
            if let Some(arg) = self
                .extra_args
                .iter()
                .find(|a| super::seal::UNSEALING_ARGS.contains(&flag_name(a).as_str()))
            {
                return invalid(format!(
                    "cli(|c| c.arg({:?})) would load configuration into sealed processes; turn \
                     on cli(|c| c.load_user_config(true)) to pass it",
                    flag_name(arg)
                ));
            }
        }
        if self.cli_max_retries.is_some_and(|r| r > 15) {
            return invalid("cli(|c| c.cli_max_retries(..)) is capped at 15 by the CLI".into());
        }
        self.validate_command_line(spec)
    }
}

impl fmt::Debug for CliOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values of environment variables can be credentials: show names only.
        let env_names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("CliOptions")
            .field("cli_path", &self.cli_path)
            .field("keep_cli_system_prompt", &self.keep_cli_system_prompt)
            .field("tools", &self.tools)
            .field("allowed_tools", &self.allowed_tools)
            .field("disallowed_tools", &self.disallowed_tools)
            .field("permission_mode", &self.permission_mode)
            .field("max_turns", &self.max_turns)
            .field("cwd", &self.cwd)
            .field("env (values hidden)", &env_names)
            .field("env_remove", &self.env_remove)
            .field("persist_sessions", &self.persist_sessions)
            .field("load_user_config", &self.load_user_config)
            .field("interpret_item_text", &self.interpret_item_text)
            .field("fresh_process_per_item", &self.fresh_process_per_item)
            .field("recycle_after_items", &self.recycle_after_items)
            .field("recycle_above_memory", &self.recycle_above_memory)
            .field("cli_max_retries", &self.cli_max_retries)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(options: &CliOptions, spec: &AnswerSpec) -> Vec<String> {
        options
            .cli_args(spec)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn prompt(system_prompt: &str) -> AnswerSpec {
        AnswerSpec {
            system_prompt: Some(system_prompt.into()),
            ..AnswerSpec::default()
        }
    }

    #[test]
    fn defaults_turn_tools_and_system_prompt_off() {
        let a = args(&CliOptions::default(), &AnswerSpec::default());
        let joined = a.join(" ");
        assert!(joined.contains("--tools  ") || a.windows(2).any(|w| w == ["--tools", ""]));
        assert!(a.windows(2).any(|w| w == ["--system-prompt", ""]));
        assert!(a.contains(&"--no-session-persistence".to_string()));
        assert!(a.contains(&"stream-json".to_string()));
    }

    #[test]
    fn the_cli_system_prompt_is_kept_only_when_asked_for() {
        let kept = CliOptions::default().cli_system_prompt();
        assert!(!args(&kept, &AnswerSpec::default()).contains(&"--system-prompt".to_string()));
        let mine = args(&CliOptions::default(), &prompt("Be terse."));
        assert!(mine
            .windows(2)
            .any(|w| w == ["--system-prompt", "Be terse."]));
        // Both: the CLI takes one or the other, so neither silently wins.
        let both = kept.validate(&prompt("Be terse.")).unwrap_err().to_string();
        assert!(both.contains("cli_system_prompt()"), "{both}");
    }

    #[test]
    fn contradictions_are_rejected() {
        let check = |options: CliOptions| {
            options
                .validate(&AnswerSpec::default())
                .unwrap_err()
                .to_string()
        };
        assert!(check(CliOptions::default().allowed_tools(["Bash"])).contains("tools are off"));
        assert!(check(
            CliOptions::default()
                .tools(["Bash"])
                .allowed_tools(["Bash"])
                .disallowed_tools(["Bash"])
        )
        .contains("both allowed and disallowed"));
        assert!(check(CliOptions::default().max_turns(0)).contains("max_turns"));
        assert!(check(CliOptions::default().cwd("/nonexistent/dir")).contains("cwd"));
        assert!(check(CliOptions::default().env("A=B", "c")).contains("not valid"));
        assert!(check(CliOptions::default().max_line_bytes(10)).contains("max_line_bytes"));
        assert!(check(CliOptions::default().cli_max_retries(Some(16))).contains("15"));
        // The answer settings go on the command line: the OS must be able to start it.
        let spec_check = |spec: AnswerSpec| {
            CliOptions::default()
                .validate(&spec)
                .unwrap_err()
                .to_string()
        };
        assert!(spec_check(prompt("a\0b")).contains("--system-prompt contains a NUL byte"));
        assert!(spec_check(AnswerSpec {
            append_system_prompt: Some("x".repeat(130 * 1024)),
            ..AnswerSpec::default()
        })
        .contains("--append-system-prompt is 133120 bytes"));
    }

    #[test]
    fn secrets_are_redacted_and_hidden_from_debug() {
        let options = CliOptions::default()
            .env("ANTHROPIC_API_KEY", "sk-ant-very-secret")
            .env("HOME", "/tmp/home");
        assert!(!format!("{options:?}").contains("sk-ant-very-secret"));
        let secrets = options.secrets();
        assert!(secrets.contains(&"sk-ant-very-secret".to_string()));
        assert!(!secrets.contains(&"/tmp/home".to_string()));
    }
}
