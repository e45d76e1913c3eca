//! How a session's processes are launched: the CLI's arguments and environment from the
//! settings, and the check that the OS can start them.

use std::ffi::OsString;

use super::options::CliOptions;
use crate::backend::cli::secrets::is_secret_key;
use crate::backend::spec::AnswerSpec;
use crate::Error;

/// Linux caps one argv string at 128 KiB; stay clear of it.
const MAX_ARG_BYTES: usize = 120 * 1024;
/// Linux caps arguments and environment together at ARG_MAX (often 2 MiB, with the inherited
/// environment included); stay well clear of it.
const MAX_COMMAND_LINE_BYTES: usize = 1024 * 1024;

impl CliOptions {
    /// What the CLI will be started with must be something the OS can start: no NUL byte
    /// anywhere, no single argument or variable over Linux's 128 KiB cap, and all of it well
    /// under the total limit.
    pub(crate) fn validate_command_line(&self, spec: &AnswerSpec) -> Result<(), Error> {
        let invalid = |msg: String| Err(Error::InvalidConfig(msg));
        let mut total = 0;
        let args = self.cli_args(spec);
        for (i, arg) in args.iter().enumerate() {
            let text = arg.to_string_lossy();
            // Name the setting by its flag (`--system-prompt`, `--json-schema`, ...).
            let name = match i.checked_sub(1).map(|p| args[p].to_string_lossy()) {
                Some(flag) if flag.starts_with("--") => flag.into_owned(),
                _ => format!(
                    "the argument {:?}",
                    text.chars().take(40).collect::<String>()
                ),
            };
            if text.contains('\0') {
                return invalid(format!("{name} contains a NUL byte"));
            }
            if text.len() > MAX_ARG_BYTES {
                return invalid(format!(
                    "{name} is {} bytes; the CLI takes it on the command line, which Linux caps \
                     at 128 KiB",
                    text.len()
                ));
            }
            total += text.len() + 1;
        }
        for (key, value) in self.cli_env() {
            if value.contains('\0') {
                return invalid(format!("environment variable {key} contains a NUL byte"));
            }
            if key.len() + value.len() + 1 > MAX_ARG_BYTES {
                return invalid(format!(
                    "environment variable {key} is {} bytes; Linux caps one at 128 KiB",
                    value.len()
                ));
            }
            total += key.len() + value.len() + 2;
        }
        if total > MAX_COMMAND_LINE_BYTES {
            return invalid(format!(
                "the CLI's arguments and environment come to {total} bytes; keep them under \
                 {MAX_COMMAND_LINE_BYTES} (the OS limit includes the inherited environment)"
            ));
        }
        Ok(())
    }

    /// The CLI's arguments, in the order the CLI documents them. Prompts never go here.
    pub(crate) fn cli_args(&self, spec: &AnswerSpec) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            // Each API call's start shows, so calls the CLI repeats on its own (a cut stream
            // sent again without streaming) are counted; the deltas are skipped unparsed.
            "--include-partial-messages",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let mut push = |flag: &str, value: &str| {
            args.push(flag.into());
            args.push(value.into());
        };
        if let Some(model) = &spec.model {
            push("--model", model);
        }
        if let Some(prompt) = self.system_prompt(spec) {
            push("--system-prompt", prompt);
        }
        if let Some(prompt) = &spec.append_system_prompt {
            push("--append-system-prompt", prompt);
        }
        if let Some(tools) = &self.tools {
            push("--tools", &tools.join(","));
        }
        if !self.allowed_tools.is_empty() {
            push("--allowedTools", &self.allowed_tools.join(","));
        }
        if !self.disallowed_tools.is_empty() {
            push("--disallowedTools", &self.disallowed_tools.join(","));
        }
        if let Some(mode) = self.permission_mode {
            push("--permission-mode", mode.as_str());
        }
        if let Some(turns) = self.max_turns {
            push("--max-turns", &turns.to_string());
        }
        if let Some(schema) = &spec.json_schema {
            push("--json-schema", &schema.to_string());
        }
        if let Some(effort) = spec.effort {
            push("--effort", effort.as_str());
        }
        if !self.persist_sessions {
            args.push("--no-session-persistence".into());
        }
        args.extend(
            crate::backend::cli::seal::seal_args(self.load_user_config)
                .into_iter()
                .map(OsString::from),
        );
        args.push("--settings".into());
        args.push(
            crate::backend::cli::seal::seal_settings(
                self.load_user_config,
                self.interpret_item_text,
            )
            .into(),
        );
        args.extend(self.extra_args.iter().map(OsString::from));
        args
    }

    /// The environment the CLI runs with: ours on top of the inherited one.
    pub(crate) fn cli_env(&self) -> Vec<(String, String)> {
        let mut env =
            crate::backend::cli::seal::seal_env(self.load_user_config, self.interpret_item_text);
        if let Some(retries) = self.cli_max_retries {
            env.push(("CLAUDE_CODE_MAX_RETRIES".to_string(), retries.to_string()));
        }
        env.extend(self.env.iter().cloned());
        env
    }

    /// Values that must never appear in text we show: secret-looking variables we pass and
    /// the credentials the CLI would inherit.
    pub(crate) fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = self
            .env
            .iter()
            .filter(|(k, _)| is_secret_key(k))
            .map(|(_, v)| v.clone())
            .collect();
        for key in [
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_AUTH_TOKEN",
            "CLAUDE_CODE_OAUTH_TOKEN",
        ] {
            if let Ok(value) = std::env::var(key) {
                secrets.push(value);
            }
        }
        // Very short values would redact ordinary words; keys are never that short.
        secrets.retain(|s| s.len() >= 6);
        secrets
    }
}
