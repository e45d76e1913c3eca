//! What decides an answer besides the prompt, read from where the CLI process really gets it:
//! the session's settings, its whole command line, the environment the process will have
//! (inherited, removed and set), and the settings files the CLI reads even when sealed (the
//! user's `settings.json`, with its `model` and `env`, and the machine's managed settings).
//! The journal keys every answer by this and the prompt, so a change to any of them, however
//! it is made, asks again instead of replaying an answer another model gave.
//!
//! Measured with 2.1.197 sealed (`--setting-sources user --safe-mode`): the model named in
//! `$CLAUDE_CONFIG_DIR/settings.json` (or `~/.claude/settings.json`) is the one the process
//! uses, and so is `ANTHROPIC_MODEL` from the environment or from that file's `env` block.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::options::CliOptions;
use crate::backend::spec::AnswerSpec;

/// The session's answer-deciding fingerprint (a SHA-256 in hex), or why it cannot be known.
pub(crate) use crate::backend::AnswerSettings;

/// Parts of environment variable names that decide which model answers, or how: the model
/// and its aliases, thinking and effort, output length, the provider, betas, system prompts.
const ANSWER_ENV_PARTS: &[&str] = &[
    "MODEL",
    "THINKING",
    "EFFORT",
    "OUTPUT_TOKENS",
    "BETAS",
    "SYSTEM_PROMPT",
    "USE_BEDROCK",
    "USE_VERTEX",
    "USE_FOUNDRY",
];

/// Parts of names of credentials, whose values stay out of the fingerprint (a new API key
/// does not change an answer).
const CREDENTIAL_PARTS: &[&str] = &["KEY", "SECRET", "PASSWORD", "AUTH", "CREDENTIAL"];

/// Command-line flags whose value names a file the CLI reads for its settings or prompts.
const FILE_FLAGS: &[&str] = &[
    "--settings",
    "--system-prompt-file",
    "--append-system-prompt-file",
];

/// Where the machine's managed settings are (read by the CLI whatever `--setting-sources`).
#[cfg(target_os = "macos")]
const MANAGED_DIR: &str = "/Library/Application Support/ClaudeCode";
#[cfg(not(target_os = "macos"))]
const MANAGED_DIR: &str = "/etc/claude-code";

/// Whether an environment variable of this name can change an answer.
fn decides_answer(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ANSWER_ENV_PARTS.iter().any(|p| upper.contains(p))
        && !CREDENTIAL_PARTS.iter().any(|p| upper.contains(p))
}

/// The SHA-256, in lower-case hex, of the fingerprint's JSON.
fn fingerprint_of(inputs: &Value) -> String {
    Sha256::digest(inputs.to_string().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl CliOptions {
    /// What, besides the prompt, decides an answer, hashed: the journal's key is made of this
    /// and the prompt as sent. `Err` says why it cannot be known (a settings file the CLI
    /// would read cannot be read here), and a journal then refuses the session.
    pub(crate) fn answer_settings(&self, spec: &AnswerSpec) -> AnswerSettings {
        let env = self.child_env();
        let config_dir = config_dir(&env)?;
        let mut files = BTreeMap::new();
        let user_settings = config_dir.join("settings.json");
        files.insert(display(&user_settings), settings_file(&user_settings)?);
        for path in managed_settings_files()? {
            files.insert(display(&path), settings_file(&path)?);
        }
        if self.load_user_config {
            // The user's memory goes into every request once the configuration is loaded.
            let memory = config_dir.join("CLAUDE.md");
            files.insert(display(&memory), text_file(&memory)?);
        }
        for path in self.file_args() {
            files.insert(display(&path), text_file(&path)?);
        }
        let answer_env: BTreeMap<String, String> =
            env.into_iter().filter(|(k, _)| decides_answer(k)).collect();
        Ok(fingerprint_of(&self.fingerprint_inputs(
            spec,
            &answer_env,
            &files,
        )))
    }

    /// Everything the fingerprint holds, from the session's settings and what was read from
    /// the machine (`answer_env`, `files`). Its field names are part of every journal key.
    fn fingerprint_inputs(
        &self,
        spec: &AnswerSpec,
        answer_env: &BTreeMap<String, String>,
        files: &BTreeMap<String, Value>,
    ) -> Value {
        let tools_off = matches!(&self.tools, Some(t) if t.is_empty());
        json!({
            "model": spec.model,
            "system_prompt": self.system_prompt(spec),
            "append_system_prompt": spec.append_system_prompt,
            "json_schema": spec.json_schema,
            "tools": self.tools,
            "allowed_tools": self.allowed_tools,
            "disallowed_tools": self.disallowed_tools,
            "permission_mode": self.permission_mode.map(|m| m.as_str()),
            "effort": spec.effort.map(|e| e.as_str()),
            "max_turns": self.max_turns,
            "load_user_config": self.load_user_config,
            "interpret_item_text": self.interpret_item_text,
            "extra_args": self.extra_args,
            "env": answer_env,
            "files": files,
            // With tools on, the model may read the working folder.
            "cwd": (!tools_off).then(|| self.cwd.as_deref().map(display)),
        })
    }

    /// The environment a CLI process will have: this program's, without what is removed,
    /// with what the session sets (as `CliProcess::spawn` builds it).
    fn child_env(&self) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        env.remove("CLAUDECODE");
        for key in &self.env_remove {
            env.remove(key);
        }
        env.extend(self.cli_env());
        env
    }

    /// Files named by `FILE_FLAGS` among the extra arguments (`--flag path` or
    /// `--flag=path`), relative ones resolved as the CLI resolves them, in its working folder.
    fn file_args(&self) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        let mut args = self.extra_args.iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag, Some(value.to_string())),
                None => (arg.as_str(), None),
            };
            if !FILE_FLAGS.contains(&flag) {
                continue;
            }
            let Some(value) = inline.or_else(|| args.next().cloned()) else {
                continue;
            };
            // `--settings` also takes the JSON itself, which is in the fingerprint as is.
            if flag == "--settings" && value.trim_start().starts_with('{') {
                continue;
            }
            let path = PathBuf::from(value);
            paths.push(match &self.cwd {
                Some(cwd) if path.is_relative() => cwd.join(path),
                _ => path,
            });
        }
        paths
    }
}

/// The CLI's configuration folder: `CLAUDE_CONFIG_DIR`, else `~/.claude`.
fn config_dir(env: &BTreeMap<String, String>) -> Result<PathBuf, String> {
    let named = |key: &str| env.get(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = named("CLAUDE_CONFIG_DIR")
        .or_else(|| named("HOME").map(|home| home.join(".claude")))
        .ok_or(
            "cannot tell where the CLI reads its settings (neither HOME nor CLAUDE_CONFIG_DIR \
             is set for it), so not which model answers",
        )?;
    if dir.is_relative() {
        return Err(format!(
            "cannot tell where the CLI reads its settings: its configuration folder {} is a \
             relative path",
            dir.display()
        ));
    }
    Ok(dir)
}

/// The managed settings files, in the order the CLI reads them.
fn managed_settings_files() -> Result<Vec<PathBuf>, String> {
    let dir = Path::new(MANAGED_DIR);
    let mut files = vec![dir.join("managed-settings.json")];
    let drop_in = dir.join("managed-settings.d");
    match std::fs::read_dir(&drop_in) {
        Ok(entries) => {
            let mut found: Vec<PathBuf> = entries
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .map_err(|e| unreadable(&drop_in, &e))?;
            found.retain(|p| p.extension().is_some_and(|e| e == "json"));
            found.sort();
            files.extend(found);
        }
        Err(e) if is_absent(&e) => {}
        Err(e) => return Err(unreadable(&drop_in, &e)),
    }
    Ok(files)
}

/// A settings file as it decides answers: `null` when absent, its JSON (credentials in its
/// `env` block left out) when it parses, else its text. The whole file, not only `model`
/// and `env`: a key the CLI reads today or adds tomorrow cannot slip past the journal.
fn settings_file(path: &Path) -> Result<Value, String> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if is_absent(&e) => return Ok(Value::Null),
        Err(e) => return Err(unreadable(path, &e)),
    };
    let Ok(mut settings) = serde_json::from_str::<Value>(&text) else {
        return Ok(Value::String(text));
    };
    if let Some(env) = settings.get_mut("env").and_then(Value::as_object_mut) {
        for (key, value) in env.iter_mut() {
            if CREDENTIAL_PARTS
                .iter()
                .any(|p| key.to_ascii_uppercase().contains(p))
            {
                *value = Value::Null;
            }
        }
    }
    Ok(settings)
}

/// A file's text, or `null` when it is absent.
fn text_file(path: &Path) -> Result<Value, String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if is_absent(&e) => Ok(Value::Null),
        Err(e) => Err(unreadable(path, &e)),
    }
}

fn is_absent(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
}

fn unreadable(path: &Path, error: &std::io::Error) -> String {
    format!(
        "cannot read {} ({error}), which the CLI reads and which may choose its model, so the \
         journal cannot tell which model answers; fix or remove it",
        path.display()
    )
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::builder::SessionBuilder;

    fn home() -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".claude")).unwrap();
        home
    }

    fn answer_settings(builder: SessionBuilder) -> AnswerSettings {
        builder.cli.answer_settings(&builder.settings.spec)
    }

    fn settings(home: &Path, builder: SessionBuilder) -> AnswerSettings {
        answer_settings(builder.cli(|c| {
            c.env("HOME", home.to_str().unwrap())
                .env_remove("CLAUDE_CONFIG_DIR")
        }))
    }

    #[test]
    fn every_source_of_the_model_changes_the_fingerprint() {
        let home = home();
        let h = home.path();
        let base = settings(h, SessionBuilder::default()).unwrap();
        assert_eq!(base, settings(h, SessionBuilder::default()).unwrap());
        let differs = |b: SessionBuilder| {
            let other = settings(h, b).unwrap();
            assert_ne!(other, base);
        };
        differs(SessionBuilder::default().model("haiku"));
        differs(SessionBuilder::default().cli(|c| c.arg("--model=haiku")));
        differs(SessionBuilder::default().cli(|c| c.env("ANTHROPIC_MODEL", "haiku")));
        differs(SessionBuilder::default().cli(|c| c.env("ANTHROPIC_DEFAULT_SONNET_MODEL", "x")));
        differs(SessionBuilder::default().cli(|c| c.env("MAX_THINKING_TOKENS", "1024")));
        differs(SessionBuilder::default().cli(|c| c.load_user_config(true)));
        differs(SessionBuilder::default().cli(|c| c.interpret_item_text(true)));
        // Neither a credential nor an unrelated variable does.
        let same = |b: SessionBuilder| assert_eq!(settings(h, b).unwrap(), base);
        same(SessionBuilder::default().cli(|c| c.env("ANTHROPIC_API_KEY", "sk-ant-other")));
        same(SessionBuilder::default().cli(|c| c.env("CLAUDE_RAYON_UNRELATED", "1")));

        let file = h.join(".claude/settings.json");
        std::fs::write(&file, r#"{"model": "claude-haiku-4-5"}"#).unwrap();
        let haiku = settings(h, SessionBuilder::default()).unwrap();
        assert_ne!(haiku, base);
        std::fs::write(&file, r#"{"env": {"ANTHROPIC_MODEL": "claude-haiku-4-5"}}"#).unwrap();
        let env_block = settings(h, SessionBuilder::default()).unwrap();
        assert_ne!(env_block, base);
        assert_ne!(env_block, haiku);
        // The same JSON, spaced otherwise: the same settings.
        std::fs::write(
            &file,
            r#"{ "env" : { "ANTHROPIC_MODEL" : "claude-haiku-4-5" } }"#,
        )
        .unwrap();
        assert_eq!(settings(h, SessionBuilder::default()).unwrap(), env_block);
        // A file the CLI cannot parse still counts, by its text.
        std::fs::write(&file, "{ not json").unwrap();
        assert_ne!(settings(h, SessionBuilder::default()).unwrap(), base);
    }

    #[test]
    fn the_config_folder_is_where_the_cli_looks() {
        let home = home();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(
            elsewhere.path().join("settings.json"),
            r#"{"model":"opus"}"#,
        )
        .unwrap();
        let with = |b: SessionBuilder| {
            answer_settings(b.cli(|c| c.env("HOME", home.path().to_str().unwrap()))).unwrap()
        };
        let in_home = with(SessionBuilder::default().cli(|c| c.env_remove("CLAUDE_CONFIG_DIR")));
        let moved = with(
            SessionBuilder::default()
                .cli(|c| c.env("CLAUDE_CONFIG_DIR", elsewhere.path().to_str().unwrap())),
        );
        assert_ne!(in_home, moved);
    }

    #[test]
    fn files_named_on_the_command_line_count_by_their_content() {
        let home = home();
        let dir = tempfile::tempdir().unwrap();
        let prompt = dir.path().join("system.txt");
        std::fs::write(&prompt, "Answer in French.").unwrap();
        let builder = || {
            SessionBuilder::default()
                .cli(|c| c.arg("--system-prompt-file").arg(prompt.to_str().unwrap()))
        };
        let french = settings(home.path(), builder()).unwrap();
        std::fs::write(&prompt, "Answer in German.").unwrap();
        assert_ne!(settings(home.path(), builder()).unwrap(), french);
    }

    #[test]
    fn an_unreadable_settings_file_is_an_unknown_model() {
        let home = home();
        // A folder where the file should be: it cannot be read.
        std::fs::create_dir(home.path().join(".claude/settings.json")).unwrap();
        let why = settings(home.path(), SessionBuilder::default()).unwrap_err();
        assert!(
            why.contains("settings.json") && why.contains("model"),
            "{why}"
        );
        let no_home = answer_settings(
            SessionBuilder::default().cli(|c| c.env_remove("HOME").env_remove("CLAUDE_CONFIG_DIR")),
        )
        .unwrap_err();
        assert!(no_home.contains("HOME"), "{no_home}");
    }

    /// What goes into every journal key besides the prompt, pinned: moving the settings
    /// (a backend seam) must not change a key, or every journal would be asked again.
    #[test]
    fn the_fingerprint_of_fixed_settings_is_pinned() {
        let builder = SessionBuilder::default()
            .model("claude-sonnet-4-5")
            .append_system_prompt("Answer in one paragraph.")
            .cli(|c| c.max_turns(1));
        let env = BTreeMap::from([("ANTHROPIC_MODEL".to_string(), "opus".to_string())]);
        let files = BTreeMap::from([(
            "/home/u/.claude/settings.json".to_string(),
            json!({"model": "haiku"}),
        )]);
        assert_eq!(
            fingerprint_of(
                &builder
                    .cli
                    .fingerprint_inputs(&builder.settings.spec, &env, &files)
            ),
            PINNED_FINGERPRINT
        );
    }

    const PINNED_FINGERPRINT: &str =
        "0406b34a6a3a19b8746b14eff206cb55bdd4ba1378070630fb01ee784e224e3e";
}
