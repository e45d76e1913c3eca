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
/// on ([`SessionBuilder::tools`](crate::SessionBuilder::tools)).
///
/// # Examples
///
/// ```
/// use claude_rayon::{PermissionMode, Session};
///
/// let builder = Session::builder().tools(["Read"]).permission_mode(PermissionMode::Plan);
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
/// working folder, its tools, how its processes are sealed and recycled.
#[derive(Clone)]
pub(crate) struct CliOptions {
    pub cli_path: Option<PathBuf>,
    /// Keep the CLI's own system prompt instead of an empty one.
    pub keep_cli_system_prompt: bool,
    pub tools: Option<Vec<String>>,
    pub allowed_tools: Vec<String>,
    pub disallowed_tools: Vec<String>,
    pub permission_mode: Option<PermissionMode>,
    pub max_turns: Option<u32>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub env_remove: Vec<String>,
    pub persist_sessions: bool,
    pub fresh_process_per_item: bool,
    /// A process is retired at checkin once it has answered this many items.
    pub recycle_after_items: Option<u64>,
    /// A process is retired at checkin once its resident memory is above this (bytes).
    pub recycle_above_memory: Option<u64>,
    pub extra_args: Vec<String>,
    pub load_user_config: bool,
    pub interpret_item_text: bool,
    pub max_line_bytes: usize,
    pub max_starting_processes: usize,
    pub cli_max_retries: Option<u32>,
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
            return invalid("recycle_after_items must be at least 1 (None never recycles)".into());
        }
        if self.max_starting_processes == 0 {
            return invalid("max_starting_processes must be at least 1".into());
        }
        if self.max_line_bytes < 64 * 1024 {
            return invalid(format!(
                "max_line_bytes {} is too small for the CLI's own lines; use at least 64 KiB",
                self.max_line_bytes
            ));
        }
        if self.max_turns == Some(0) {
            return invalid("max_turns must be at least 1".into());
        }
        let tools_off = matches!(&self.tools, Some(t) if t.is_empty());
        if tools_off && !self.allowed_tools.is_empty() {
            return invalid(format!(
                "allowed_tools {:?} given but tools are off (the default); enable them with .tools([...])",
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
                return invalid(format!("cwd {} is not a directory", dir.display()));
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
                    "arg({:?}) would load configuration into sealed processes; turn on \
                     load_user_config(true) to pass it",
                    flag_name(arg)
                ));
            }
        }
        if self.cli_max_retries.is_some_and(|r| r > 15) {
            return invalid("cli_max_retries is capped at 15 by the CLI".into());
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
