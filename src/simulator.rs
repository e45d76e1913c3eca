//! A stand-in for the `claude` CLI that speaks the same stream-json protocol, for trying the
//! library without an API key and for tests.
//!
//! It answers every prompt at once with an echo (`echo: PROMPT`), or, in demo mode, with a
//! plausible answer that says it is simulated. Prompts may carry directives that script a
//! behaviour for that item:
//!
//! | directive | effect |
//! |---|---|
//! | `[[sim:delay=MS]]` | answer after MS milliseconds |
//! | `[[sim:reply=TEXT]]` | answer exactly TEXT |
//! | `[[sim:replies=KEY,A|B|C]]` | the nth attempt at KEY (across processes) answers the nth text; the last repeats |
//! | `[[sim:error=STATUS]]` | an API error result (`is_error`, `api_error_status`; `none` for a cut stream with no status, `unreachable` for no connection) |
//! | `[[sim:retry=STATUS,N]]` | N `api_retry` lines before the answer |
//! | `[[sim:fail-times=KEY,N,STATUS]]` | the first N attempts at KEY (across processes) are API errors |
//! | `[[sim:crash]]` | exit with code 3 mid-item |
//! | `[[sim:crash-times=KEY,N]]` | the first N attempts at KEY (across processes) crash like `crash` |
//! | `[[sim:stderr-env=NAME]]` | print the variable NAME to stderr, then crash |
//! | `[[sim:garbage]]` | print a line that is not JSON |
//! | `[[sim:garbage-env=NAME]]` | print a long non-JSON line holding the variable NAME |
//! | `[[sim:huge=BYTES]]` | answer with BYTES bytes of text |
//! | `[[sim:hang]]` | never answer |
//! | `[[sim:close-stdout]]` | close stdout and keep running |
//! | `[[sim:control]]` | send a `control_request` and wait for its answer first |
//! | `[[sim:max-turns]]` | an `error_max_turns` result |
//! | `[[sim:no-structured]]` | no structured output even with `--json-schema` |
//! | `[[sim:structured=JSON]]` | this structured output |
//! | `[[sim:context]]` | answer with the prompts currently in context |
//! | `[[sim:continue=A|B]]` | the answer came in parts: model messages A, B (each ended at `max_tokens`), then the answer (as when the CLI continues a cut answer) |
//! | `[[sim:repeat=A]]` | a streamed call with text A cut before its stop reason, then the answer sent again without streaming (2.1.197 after a cut stream) |
//! | `[[sim:resumed=A]]` | a streamed call with text A that ended without a stop reason, the CLI's resume request, then the rest of the answer (2.1.332) |
//! | `[[sim:ends-early]]` | the answer's stream ended without a stop reason and the result holds it as a success with `stop_reason: null` (2.1.197) |
//! | `[[sim:refused-first]]` | a call refused (`stop_reason: refusal`), the CLI's re-ask, then the answer as a success (2.1.332) |
//! | `[[sim:same-ids]]` | every call of the turn has the same message id (a gateway that reuses ids) |
//! | `[[sim:stop=REASON]]` | the answer's call and the result stop with REASON (`refusal` also makes the result an error) |
//! | `[[sim:usage-warning=WINDOW,UTILIZATION]]` | a `rate_limit_event` with status `allowed_warning` for WINDOW (`five_hour`, ...) before the answer |
//! | `[[sim:spend-limit]]` | the subscription's spend cap is reached: a `rejected` overage `rate_limit_event`, the 429 error result "You've hit your monthly spend limit", then exit 1 |
//!
//! With `--include-partial-messages` (the library always passes it) each streamed call shows
//! as the CLI shows it: a `message_start` stream event, the message, then a `message_delta`
//! with the stop reason and a `message_stop` when the stream finished.
//!
//! The environment scripts the process: `CLAUDE_RAYON_SIM_RECORD=FILE` appends a JSON line
//! per start (its arguments) and per prompt (with the context it saw and `t_ms`, when it
//! arrived in milliseconds since the UNIX epoch);
//! `CLAUDE_RAYON_SIM_STATE=DIR` holds the `fail-times` counters; `CLAUDE_RAYON_SIM_STARTUP_MS`
//! delays the start; `CLAUDE_RAYON_SIM_START_ERROR=TEXT` makes it fail to start as a CLI given
//! a flag it does not know does (TEXT on stderr, exit code 1, nothing read or written), on
//! every start or, with `CLAUDE_RAYON_SIM_START_ERROR_TIMES=N`, the first N (across
//! processes); `CLAUDE_RAYON_SIM_LATENCY_MS` delays every answer;
//! `CLAUDE_RAYON_SIM_USAGE_LIMIT_UNTIL=UNIX_S[,WINDOW]` makes every model turn before that
//! time (seconds since the UNIX epoch) refused as a subscription whose usage window
//! (default `five_hour`) is used up: a `rejected` `rate_limit_event` with `resetsAt`
//! UNIX_S, the CLI's error message and a 429 error result, then exit 1 (the 2.1.197 wording
//! when `CLAUDE_RAYON_SIM_VERSION` starts with `2.1.197`, else 2.1.332's);
//! `CLAUDE_RAYON_SIM_DEMO=1` gives demo answers and ignores the directives (a document may
//! happen to contain one), unless `CLAUDE_RAYON_SIM_DIRECTIVES=1` too;
//! `CLAUDE_RAYON_SIM_VERSION` is what
//! `--version` prints; `CLAUDE_RAYON_SIM_CLEAR` breaks `/clear` on purpose (`as-text`: sent
//! to the "model" like any prompt; `same-session`: no new session id). Like the CLI, text that starts with `/` is a command: `/clear` resets the
//! context and starts a new session id, anything else answers `Unknown command` without a
//! model turn.
//!
//! To host it in your own program (as the examples do), call [`serve_if_requested`] first
//! thing in `main` and build the session with
//! [`SessionBuilder::simulated`](crate::SessionBuilder::simulated) (demo answers, directives
//! ignored) or [`SessionBuilder::simulated_scripted`](crate::SessionBuilder::simulated_scripted)
//! (demo answers, directives followed: to see what a program does with a failure, a slow
//! item or an answer it did not expect). `fail-times`, `crash-times` and `replies` count
//! attempts in the folder `CLAUDE_RAYON_SIM_STATE` names, and do nothing without it.

use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

/// The line a strict prompt (`claude_filter`, `claude_group_by`) ends with; demo answers pick
/// one of the answers it lists. The library's own copy is in the engine: the simulator knows
/// nothing of the adaptors, and `tests/fast/claude_group_by.rs` fails if the two drift.
const ALLOWED_PREFIX: &str = "Allowed answers: ";

/// Set to `1` in a child's environment to make [`serve_if_requested`] run the simulator.
pub const SIMULATOR_ENV_VAR: &str = "CLAUDE_RAYON_SIMULATOR";

/// Set to `1` by [`SessionBuilder::simulated_scripted`](crate::SessionBuilder::simulated_scripted):
/// demo answers, and the directives in prompts followed.
pub(crate) const DIRECTIVES_ENV_VAR: &str = "CLAUDE_RAYON_SIM_DIRECTIVES";

/// Set by `build()` of a simulated session when it starts the program once to check that it
/// serves: the simulator answers `--version` with [`handshake_answer`] of its value, which a
/// program whose `main` forgot [`serve_if_requested`] cannot print.
pub(crate) const HANDSHAKE_ENV_VAR: &str = "CLAUDE_RAYON_SIM_HANDSHAKE";

/// The line the simulator prints for the handshake `nonce`.
pub(crate) fn handshake_answer(nonce: &str) -> String {
    format!("claude-rayon simulator serving, handshake {nonce}")
}

/// If this process was started as the simulator (by a session built with
/// [`SessionBuilder::simulated`](crate::SessionBuilder::simulated)), run it and exit;
/// otherwise return at once. Call it first thing in `main`.
///
/// # Examples
///
/// ```
/// // First thing in `main`:
/// claude_rayon::simulator::serve_if_requested();
/// // ... the program proper
/// ```
pub fn serve_if_requested() {
    if std::env::var_os(SIMULATOR_ENV_VAR).is_some_and(|v| v == "1") {
        std::process::exit(run());
    }
}

/// Run the simulator on this process's stdin and stdout until stdin ends; returns the exit
/// code.
pub fn run() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        // The newest CLI version the library was checked against; tests may claim another.
        let version = std::env::var("CLAUDE_RAYON_SIM_VERSION")
            .unwrap_or_else(|_| "2.1.332 (Claude Code; claude-rayon simulator)".into());
        println!("{version}");
        // The answer to a session's handshake: only the simulator says it (see
        // `HANDSHAKE_ENV_VAR`).
        if let Ok(nonce) = std::env::var(HANDSHAKE_ENV_VAR) {
            println!("{}", handshake_answer(&nonce));
        }
        return 0;
    }
    let mut sim = Simulator::new(args);
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    // The variables that seal a real CLI, so tests can see what a process was given.
    let env: serde_json::Map<String, Value> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CLAUDE_CODE_") || k.starts_with("CLAUDE_RAYON_OWNER"))
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let t_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    sim.record(
        json!({"event": "start", "pid": std::process::id(), "args": sim.args,
        "cwd": cwd, "env": env, "t_ms": t_ms}),
    );
    if let Some(ms) = env_u64("CLAUDE_RAYON_SIM_STARTUP_MS") {
        std::thread::sleep(Duration::from_millis(ms));
    }
    if let Ok(text) = std::env::var("CLAUDE_RAYON_SIM_START_ERROR") {
        let fails = match env_u64("CLAUDE_RAYON_SIM_START_ERROR_TIMES") {
            Some(times) => next_attempt("start-error").is_some_and(|n| u64::from(n) <= times),
            None => true,
        };
        if fails {
            eprintln!("{text}");
            return 1;
        }
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    while let Some(Ok(line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            // The real CLI exits on a line that is not JSON.
            eprintln!("Error: invalid JSON on stdin");
            return 1;
        };
        if message.get("type").and_then(Value::as_str) != Some("user") {
            continue;
        }
        let prompt = match &message["message"]["content"] {
            Value::String(s) => s.clone(),
            Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        };
        if let Some(code) = sim.handle(&prompt, &mut lines) {
            return code;
        }
    }
    0
}

struct Simulator {
    args: Vec<String>,
    session_id: String,
    context: Vec<String>,
    total_cost: f64,
    started: bool,
    json_schema: Option<Value>,
    model: String,
    demo: bool,
    /// Whether the directives in a prompt are followed: always outside demo mode, and in demo
    /// mode when the program asked for it (`SessionBuilder::simulated_scripted`).
    directives: bool,
    latency: Option<u64>,
    /// `--include-partial-messages`: each streamed call shows its start and its stop reason.
    partial_messages: bool,
}

impl Simulator {
    fn new(args: Vec<String>) -> Self {
        let flag = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1).cloned())
        };
        let json_schema = flag("--json-schema").and_then(|s| serde_json::from_str(&s).ok());
        let model = flag("--model").unwrap_or_else(|| "claude-simulated".into());
        let partial_messages = args.iter().any(|a| a == "--include-partial-messages");
        let demo = std::env::var("CLAUDE_RAYON_SIM_DEMO").is_ok_and(|v| v == "1");
        Simulator {
            partial_messages,
            session_id: new_session_id(),
            args,
            context: Vec::new(),
            total_cost: 0.0,
            started: false,
            json_schema,
            model,
            demo,
            directives: !demo || std::env::var(DIRECTIVES_ENV_VAR).is_ok_and(|v| v == "1"),
            latency: env_u64("CLAUDE_RAYON_SIM_LATENCY_MS"),
        }
    }

    fn emit(&self, value: Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }

    fn record(&self, value: Value) {
        if let Ok(path) = std::env::var("CLAUDE_RAYON_SIM_RECORD") {
            if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
                // One write per line keeps lines whole when processes append at once.
                let _ = f.write_all(format!("{value}\n").as_bytes());
            }
        }
    }

    /// Handle one prompt; `Some(code)` ends the process.
    fn handle(
        &mut self,
        prompt: &str,
        lines: &mut impl Iterator<Item = std::io::Result<String>>,
    ) -> Option<i32> {
        if !self.started {
            self.started = true;
            self.emit(
                json!({"type": "system", "subtype": "init", "session_id": self.session_id,
                "tools": [], "model": self.model, "claude_code_version": "simulated"}),
            );
        }
        // As the CLI: text that starts with `/` (nothing before it) is a command.
        if let Some(command) = prompt.strip_prefix('/') {
            let name = command.split_whitespace().next().unwrap_or("");
            let clear_mode = std::env::var("CLAUDE_RAYON_SIM_CLEAR").unwrap_or_default();
            if name == "clear" && clear_mode != "as-text" {
                self.record(json!({"event": "clear", "pid": std::process::id()}));
                self.context.clear();
                if clear_mode != "same-session" {
                    self.session_id = new_session_id();
                }
                self.emit(self.result_line(0, "", 0, 0, false, None, None));
                return None;
            }
            if name != "clear" {
                self.record(
                    json!({"event": "command", "pid": std::process::id(), "command": name}),
                );
                let text = format!("Unknown command: /{name}");
                self.emit(self.result_line(0, &text, 0, 0, false, None, None));
                return None;
            }
        }
        self.context.push(prompt.to_string());
        // `t_ms` (milliseconds since the UNIX epoch) is when the prompt arrived, for tests and
        // benches that check how requests were spaced.
        let t_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.record(
            json!({"event": "prompt", "pid": std::process::id(), "prompt": prompt,
            "context_turns": self.context.len(), "t_ms": t_ms}),
        );
        // Demo mode answers any text, including text that happens to contain directives
        // (the simulator's own source, say), unless the program asked for them.
        let demo = self.demo;
        let scripted = self.directives;
        let d = |name: &str| {
            if scripted {
                directive(prompt, name)
            } else {
                None
            }
        };
        // Unexpected chatter that a client must skip.
        self.emit(json!({"type": "rate_limit_event", "note": "simulated"}));
        if let Some(ms) = d("delay")
            .and_then(|v| v.parse::<u64>().ok())
            .or(self.latency)
        {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if let Some(code) = self.usage_limit(d("spend-limit").is_some()) {
            return Some(code);
        }
        if let Some(spec) = d("usage-warning") {
            let (window, utilization) = spec.split_once(',').unwrap_or((spec.as_str(), "0.95"));
            let utilization = utilization.parse::<f64>().unwrap_or(0.95);
            let resets_at = unix_seconds() + 3 * 3600;
            self.emit(json!({"type": "rate_limit_event", "rate_limit_info": {
                "status": "allowed_warning", "resetsAt": resets_at, "rateLimitType": window,
                "utilization": utilization, "overageStatus": "rejected",
                "overageDisabledReason": "org_level_disabled", "isUsingOverage": false,
                "surpassedThreshold": 0.9, "unifiedWindows": {window: {"utilization": utilization,
                    "resetsAt": resets_at, "status": "allowed_warning", "surpassedThreshold": 0.9}}},
                "uuid": "sim-rate-limit", "session_id": self.session_id}));
        }
        if let Some(spec) = d("retry") {
            let (status, n) = spec.split_once(',').unwrap_or((spec.as_str(), "1"));
            for attempt in 1..=n.parse::<u32>().unwrap_or(1) {
                self.emit(json!({"type": "system", "subtype": "api_retry", "attempt": attempt,
                    "max_retries": 10, "retry_delay_ms": 1.5, "error_status": status.parse::<u16>().ok(),
                    "error": "simulated"}));
            }
        }
        if d("close-stdout").is_some() {
            // Stop talking without exiting.
            // SAFETY: closes this process's own stdout; nothing writes to it afterwards.
            unsafe {
                libc::close(1);
            }
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        if d("hang").is_some() {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        if d("crash").is_some() || (scripted && self.scheduled_crash(prompt)) {
            eprintln!("simulated crash");
            return Some(3);
        }
        if let Some(name) = d("stderr-env") {
            eprintln!("{name}={}", std::env::var(&name).unwrap_or_default());
            return Some(3);
        }
        if let Some(name) = d("garbage-env") {
            // A long non-JSON line with a secret where a 200-byte cut would split it.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{}{}={} trailing text",
                "x".repeat(180),
                name,
                std::env::var(&name).unwrap_or_default()
            );
            let _ = out.flush();
            std::thread::sleep(Duration::from_secs(3600));
        }
        if d("garbage").is_some() {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "this is not json {{");
            let _ = out.flush();
            std::thread::sleep(Duration::from_secs(3600));
        }
        if d("control").is_some() {
            self.emit(json!({"type": "control_request", "request_id": "sim-1",
                "request": {"subtype": "can_use_tool", "tool_name": "Bash"}}));
            // Wait for the answer before going on, as the real CLI does.
            loop {
                match lines.next() {
                    Some(Ok(line)) if line.contains("control_response") => {
                        self.record(json!({"event": "control_response", "line": line}));
                        break;
                    }
                    Some(Ok(_)) => continue,
                    _ => return Some(0),
                }
            }
        }
        if d("max-turns").is_some() {
            // Turns that ran out are billed like any other.
            self.total_cost += 0.01;
            self.emit(json!({"type": "result", "subtype": "error_max_turns", "is_error": true,
                "num_turns": 2, "errors": ["Reached maximum number of turns (1)"], "session_id": self.session_id,
                "total_cost_usd": self.total_cost, "usage": {"input_tokens": 0, "output_tokens": 0}}));
            return None;
        }
        let error = d("error").or_else(|| {
            if scripted {
                self.scheduled_failure(prompt)
            } else {
                None
            }
        });
        if let Some(status) = error {
            let status_text = status.clone();
            let status = status.parse::<u16>().ok();
            let text = match status {
                Some(401) => "API Error: 401 {\"type\":\"error\",\"error\":{\"type\":\"authentication_error\",\"message\":\"invalid x-api-key\"}} · Please run /login".to_string(),
                Some(s) => format!("API Error: {s} simulated failure"),
                // `none`: the stream was cut (no status); `unreachable`: no connection at all.
                None if status_text == "unreachable" => {
                    "API Error: Unable to connect to API (ConnectionRefused)".to_string()
                }
                None => "API Error: Connection to the API was lost (ECONNRESET)".to_string(),
            };
            self.emit(self.result_line(1, &text, 0, 0, true, status, None));
            return None;
        }
        let text = if let Some(bytes) = d("huge").and_then(|v| v.parse::<usize>().ok()) {
            "z".repeat(bytes)
        } else if let Some(reply) = d("replies").and_then(|spec| self.nth_reply(&spec)) {
            reply
        } else if let Some(reply) = d("reply") {
            reply
        } else if d("context").is_some() {
            format!("context: {}", self.context.join(" | "))
        } else if self.demo {
            demo_answer(prompt)
        } else {
            format!("echo: {prompt}")
        };
        let structured = match &self.json_schema {
            Some(schema) if d("no-structured").is_none() => Some(
                d("structured")
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or_else(|| instance_of(schema, demo.then(|| fnv_hash(prompt)))),
            ),
            _ => None,
        };
        let input_tokens = (self.context.iter().map(String::len).sum::<usize>() / 4 + 1) as u64;
        let output_tokens = (text.len() / 4 + 1) as u64;
        // Priced like a mid-size model: $3 per million input tokens, $15 per million output.
        self.total_cost += input_tokens as f64 * 3e-6 + output_tokens as f64 * 15e-6;
        // One message id for every call of the turn: a gateway that reuses ids.
        let same_id = d("same-ids").map(|_| self.next_message_id());
        let id = || same_id.clone().unwrap_or_else(|| self.next_message_id());
        // Earlier parts of an answer the CLI asked the model to continue, one call each.
        if let Some(spec) = d("continue") {
            for part in spec.split('|') {
                self.emit_call(&id(), part, Some("max_tokens"), true);
            }
        }
        // A call whose stream was cut after its text, sent again without streaming (2.1.197
        // after a cut connection).
        let resent = d("repeat");
        if let Some(part) = &resent {
            self.emit_call(&id(), part, None, true);
        }
        // A call whose stream ended without a stop reason, resumed by the CLI (2.1.332): its
        // own `message_stop`, the resume request as a user line, then the answer's call.
        if let Some(part) = d("resumed") {
            let cut = id();
            self.emit_call(&cut, &part, None, true);
            self.emit_stream_event(&cut, json!({"type": "message_stop"}));
            self.emit_cli_note(
                "Your response above was cut off mid-stream. Resume directly from where it stops.",
            );
        }
        // A refused call the CLI asks again by itself (2.1.332), then the answer's call.
        if d("refused-first").is_some() {
            self.emit_call(&id(), "I can't help with that.", Some("refusal"), true);
            self.emit_cli_note("Your response above was stopped by a safety classifier.");
        }
        let stop = d("stop");
        // `ends-early`: the answer's stream ended without a stop reason and the CLI took
        // what came as the answer (2.1.197).
        let answer_stop = match (&stop, d("ends-early")) {
            (_, Some(_)) => None,
            (Some(reason), None) => Some(reason.as_str()),
            (None, None) => Some("end_turn"),
        };
        let shown = if text.len() > 200 {
            "…"
        } else {
            text.as_str()
        };
        self.emit_call(&id(), shown, answer_stop, resent.is_none());
        if let Some(reason) = stop {
            let refused = reason == "refusal";
            let text = if refused {
                "API Error: Claude Code is unable to respond to this request, which appears to violate our Usage Policy."
            } else {
                text.as_str()
            };
            let mut line =
                self.result_line(1, text, input_tokens, output_tokens, refused, None, None);
            line["stop_reason"] = json!(reason);
            self.emit(line);
            return None;
        }
        let mut line = self.result_line(
            1,
            &text,
            input_tokens,
            output_tokens,
            false,
            None,
            structured,
        );
        if answer_stop.is_none() {
            line["stop_reason"] = Value::Null;
        }
        self.emit(line);
        None
    }

    /// A subscription limit reached, as the CLI reports it (no retries of its own): a
    /// `rejected` window, its error text as a synthetic message and a 429 error result; then
    /// it exits 1. `spend_cap`: the monthly spend limit; else the usage window of
    /// `CLAUDE_RAYON_SIM_USAGE_LIMIT_UNTIL`, while it lasts. `None` when neither applies.
    fn usage_limit(&self, spend_cap: bool) -> Option<i32> {
        let old = std::env::var("CLAUDE_RAYON_SIM_VERSION").is_ok_and(|v| v.starts_with("2.1.197"));
        let (info, text) = if spend_cap {
            (
                json!({"status": "rejected", "resetsAt": unix_seconds() + 20 * 86_400,
                    "rateLimitType": "overage", "overageStatus": "rejected",
                    "overageDisabledReason": "org_level_disabled_until", "isUsingOverage": true}),
                "You've hit your monthly spend limit · raise it at claude.ai/settings/usage"
                    .to_string(),
            )
        } else {
            let spec = std::env::var("CLAUDE_RAYON_SIM_USAGE_LIMIT_UNTIL").ok()?;
            let (until, window) = spec.split_once(',').unwrap_or((spec.as_str(), "five_hour"));
            let until = until.trim().parse::<u64>().ok()?;
            if unix_seconds() >= until {
                return None;
            }
            let name = match (window, old) {
                ("five_hour", true) => "session limit",
                ("five_hour", false) => "5-hour limit",
                ("seven_day", _) => "weekly limit",
                ("seven_day_opus", _) => "Opus limit",
                ("seven_day_sonnet", _) => "Sonnet limit",
                _ => "usage limit",
            };
            (
                json!({"status": "rejected", "resetsAt": until, "rateLimitType": window,
                    "overageStatus": "rejected", "overageDisabledReason": "org_level_disabled",
                    "isUsingOverage": false}),
                format!("You've hit your {name} · resets 3pm (UTC)"),
            )
        };
        self.emit(json!({"type": "rate_limit_event", "rate_limit_info": info,
            "uuid": "sim-rate-limit", "session_id": self.session_id}));
        let mut message = json!({"type": "assistant", "session_id": self.session_id,
            "message": {"id": self.next_message_id(), "role": "assistant", "model": "<synthetic>",
                "content": [{"type": "text", "text": text}], "stop_reason": "stop_sequence"},
            "error": "rate_limit"});
        let mut result = self.result_line(0, &text, 0, 0, true, Some(429), None);
        if !old {
            for line in [&mut message, &mut result] {
                line["api_error"] = json!("usage_limit_reached");
                line["api_error_type"] = json!("rate_limit_error");
            }
            message["api_error_params"] = json!({"rate_limit_info": info});
            result["terminal_reason"] = json!("api_error");
        }
        self.emit(message);
        self.emit(result);
        Some(1)
    }

    /// A message id of its own.
    fn next_message_id(&self) -> String {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("msg_sim_{}_{id}", std::process::id())
    }

    /// One API call as the CLI prints it. Streamed, with `--include-partial-messages`: the
    /// stream's `message_start`, the message, and, when the stream said why it stopped, a
    /// `message_delta` with the reason and a `message_stop`. Otherwise the message alone,
    /// carrying its stop reason (a call made without streaming, or a CLI not asked for the
    /// stream).
    fn emit_call(&self, id: &str, text: &str, stop_reason: Option<&str>, streamed: bool) {
        let streamed = streamed && self.partial_messages;
        if streamed {
            self.emit_stream_event(
                id,
                json!({"type": "message_start", "message": {"id": id, "type": "message",
                    "role": "assistant", "model": self.model, "content": [], "stop_reason": null}}),
            );
        }
        let mut line = json!({"type": "assistant", "session_id": self.session_id,
            "message": {"id": id, "role": "assistant", "model": self.model,
                "content": [{"type": "text", "text": text}], "stop_reason": null}});
        if !streamed {
            line["message"]["stop_reason"] = json!(stop_reason);
        }
        self.emit(line);
        if let (true, Some(reason)) = (streamed, stop_reason) {
            self.emit_stream_event(
                id,
                json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": null}}),
            );
            self.emit_stream_event(id, json!({"type": "message_stop"}));
        }
    }

    fn emit_stream_event(&self, id: &str, event: Value) {
        self.emit(json!({"type": "stream_event", "event": event,
            "session_id": self.session_id, "api_message_id": id}));
    }

    /// A message the CLI adds to the conversation by itself within a turn (a resume or
    /// re-ask request), as 2.1.332 prints it.
    fn emit_cli_note(&self, text: &str) {
        self.emit(
            json!({"type": "user", "session_id": self.session_id, "isSynthetic": true,
            "message": {"role": "user", "content": [{"type": "text", "text": text}]}}),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn result_line(
        &self,
        turns: u32,
        text: &str,
        input_tokens: u64,
        output_tokens: u64,
        is_error: bool,
        status: Option<u16>,
        structured: Option<Value>,
    ) -> Value {
        let mut line = json!({"type": "result", "subtype": "success", "is_error": is_error,
            "duration_ms": 1, "num_turns": turns, "result": text, "session_id": self.session_id,
            "total_cost_usd": self.total_cost, "api_error_status": status, "stop_reason": "end_turn",
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}});
        if let Some(value) = structured {
            line["structured_output"] = value;
        }
        line
    }

    /// `fail-times=KEY,N[,STATUS]`: fail the first N attempts at KEY.
    fn scheduled_failure(&self, prompt: &str) -> Option<String> {
        let spec = directive(prompt, "fail-times")?;
        let mut parts = spec.split(',');
        let key = parts.next()?.to_string();
        let times: u32 = parts.next()?.parse().ok()?;
        let status = parts.next().unwrap_or("529").to_string();
        (next_attempt(&key)? <= times).then_some(status)
    }

    /// `crash-times=KEY,N`: crash on the first N attempts at KEY.
    fn scheduled_crash(&self, prompt: &str) -> bool {
        let Some(spec) = directive(prompt, "crash-times") else {
            return false;
        };
        let Some((key, times)) = spec.split_once(',') else {
            return false;
        };
        let Ok(times) = times.parse::<u32>() else {
            return false;
        };
        // Its own counter, so a prompt may also carry `fail-times` for the same key.
        next_attempt(&format!("crash-{key}")).is_some_and(|n| n <= times)
    }

    /// `replies=KEY,A|B|C`: the nth attempt at KEY answers the nth text (the last repeats).
    fn nth_reply(&self, spec: &str) -> Option<String> {
        let (key, replies) = spec.split_once(',')?;
        let replies: Vec<&str> = replies.split('|').collect();
        let n = next_attempt(&format!("replies-{key}"))? as usize;
        Some(replies[(n - 1).min(replies.len() - 1)].to_string())
    }
}

/// Count one more attempt at `key` in the state folder, shared by all processes; 1-based.
fn next_attempt(key: &str) -> Option<u32> {
    let dir = PathBuf::from(std::env::var("CLAUDE_RAYON_SIM_STATE").ok()?);
    let mut attempt = 1;
    // create_new is atomic, so concurrent processes never count the same attempt twice.
    while OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(format!("{key}.{attempt}")))
        .is_err()
    {
        attempt += 1;
        if attempt > 100_000 {
            return None;
        }
    }
    Some(attempt)
}

/// The value of the test directive `[[sim:NAME=VALUE]]` (or `Some("")` for `[[sim:NAME]]`)
/// in a prompt, as the simulator reads it; public so that a stand-in for another backend (the
/// tests' mock API) reads the same language the same way. Not part of the stable API.
///
/// ```
/// use claude_rayon::simulator::directive;
///
/// assert_eq!(directive("[[sim:delay=40]] a ticket", "delay").as_deref(), Some("40"));
/// assert_eq!(directive("[[sim:hang]] a ticket", "hang").as_deref(), Some(""));
/// assert_eq!(directive("a ticket", "delay"), None);
/// ```
#[doc(hidden)]
pub fn directive(prompt: &str, name: &str) -> Option<String> {
    let open = format!("[[sim:{name}");
    let start = prompt.find(&open)? + open.len();
    let rest = &prompt[start..];
    let end = rest.find("]]")?;
    let body = &rest[..end];
    match body.strip_prefix('=') {
        Some(value) => Some(value.to_string()),
        None if body.is_empty() => Some(String::new()),
        None => None,
    }
}

fn new_session_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "sim-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// A small value that satisfies a JSON Schema's types, required fields, enums and bounds,
/// as schemars writes them too (`const`, `anyOf` / `oneOf`, a list of types, local `$ref`s).
/// With a `seed` (demo mode), enums, alternatives and array lengths vary with it, so demo
/// output is not uniform.
fn instance_of(schema: &Value, seed: Option<u64>) -> Value {
    instance_named(schema, schema, seed, "value", 0)
}

/// As [`instance_of`], for a value named `name` (a property's name): a demo string says what
/// it stands for, once, rather than repeating that it is simulated (the caller labels it).
/// `root` holds what `$ref`s point at; `depth` ends a recursive schema.
fn instance_named(
    root: &Value,
    schema: &Value,
    seed: Option<u64>,
    name: &str,
    depth: u32,
) -> Value {
    let pick = |len: usize| seed.map_or(0, |s| (s % len as u64) as usize);
    let next = seed.map(|s| s.rotate_left(17) ^ 0x9E37_79B9_7F4A_7C15);
    if let Some(target) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|pointer| root.pointer(pointer))
    {
        return instance_named(root, target, seed, name, depth + 1);
    }
    if let Some(value) = schema.get("const") {
        return value.clone();
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.is_empty() {
            return options[pick(options.len())].clone();
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alternatives) = schema.get(key).and_then(Value::as_array) {
            // `null` only when nothing else is allowed, or once a recursive schema is deep.
            let null = |a: &&Value| a.get("type").and_then(Value::as_str) == Some("null");
            let real: Vec<&Value> = alternatives.iter().filter(|a| !null(a)).collect();
            if real.is_empty() || (depth > 3 && alternatives.iter().any(|a| null(&a))) {
                return Value::Null;
            }
            return instance_named(root, real[pick(real.len())], next, name, depth + 1);
        }
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => Some(kind.as_str()),
        // A list of types (an `Option`: `["string", "null"]`): the first that is not null.
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|k| *k != "null")
            .or(Some("null")),
        _ => None,
    };
    let number = |key: &str| schema.get(key).and_then(Value::as_f64);
    match kind {
        Some("object") | None if schema.get("properties").is_some() => {
            let mut object = serde_json::Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, sub) in props {
                    object.insert(
                        name.clone(),
                        instance_named(root, sub, next, name, depth + 1),
                    );
                }
            }
            Value::Object(object)
        }
        Some("object") => json!({}),
        Some("array") => {
            let min = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0);
            let max = schema
                .get("maxItems")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX);
            // A recursive schema ends in empty lists.
            let len = if depth > 3 {
                0
            } else {
                seed.map_or(1, |s| s % 3)
            }
            .clamp(min, max);
            match schema.get("items") {
                Some(Value::Array(positions)) => Value::Array(
                    positions
                        .iter()
                        .map(|p| instance_named(root, p, next, name, depth + 1))
                        .collect(),
                ),
                Some(items) => Value::Array(
                    (0..len)
                        .map(|i| {
                            let seed = next.map(|n| n.wrapping_add(i * 7919));
                            instance_named(root, items, seed, name, depth + 1)
                        })
                        .collect(),
                ),
                None => json!([]),
            }
        }
        Some("string") => {
            let text = if seed.is_some() {
                format!("stand-in {name}")
            } else {
                "simulated".to_string()
            };
            let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
            let max = schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .map_or(usize::MAX, |m| m as usize);
            let mut text: String = text.chars().take(max).collect();
            while text.chars().count() < min {
                text.push('x');
            }
            json!(text)
        }
        Some("integer") => {
            // From 1 (or the least allowed above it), up to 40 more with a seed.
            let min = number("minimum").map_or(i64::MIN, |m| m.ceil() as i64);
            let max = number("maximum").map_or(i64::MAX, |m| m.floor() as i64);
            let low = 1.clamp(min, max.max(min));
            let span = max.saturating_sub(low).max(0) as u64;
            json!(low + seed.map_or(0, |s| s % span.saturating_add(1).min(40)) as i64)
        }
        Some("number") => {
            let low = number("minimum").unwrap_or(1.0);
            json!(number("maximum").map_or(low, |high| low.min(high)))
        }
        Some("boolean") => json!(true),
        _ => Value::Null,
    }
}

fn fnv_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Demo answers: an allowed-answer question gets one of its allowed answers (picked by a hash
/// of the prompt, so runs repeat), anything else a short labelled note.
fn demo_answer(prompt: &str) -> String {
    let hash = prompt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    if let Some(line) = prompt
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(ALLOWED_PREFIX))
    {
        let options: Vec<&str> = line
            .split('|')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if !options.is_empty() {
            return options[(hash % options.len() as u64) as usize].to_string();
        }
    }
    let severities = ["LOW", "MEDIUM", "HIGH"];
    format!(
        "[simulated] {}: no real analysis was made; this answer stands in for a model's ({} prompt bytes)",
        severities[(hash % 3) as usize],
        prompt.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_found() {
        assert_eq!(
            directive("x [[sim:delay=50]] y", "delay").as_deref(),
            Some("50")
        );
        assert_eq!(directive("[[sim:crash]]", "crash").as_deref(), Some(""));
        assert_eq!(directive("[[sim:crashed]]", "crash"), None);
        assert_eq!(directive("nothing", "crash"), None);
        assert_eq!(
            directive("[[sim:reply=Yes.]]", "reply").as_deref(),
            Some("Yes.")
        );
    }

    #[test]
    fn schema_instances_follow_the_schema() {
        let schema = json!({"type": "object", "properties": {
            "n": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}},
            "level": {"enum": ["low", "high"]}}});
        assert_eq!(
            instance_of(&schema, None),
            json!({"n": 1, "tags": ["simulated"], "level": "low"})
        );
    }

    /// The schemas schemars derives (an enum field, an `Option`, a `Vec`, bounds, a tagged
    /// enum, a recursive type) get instances that fit them, in demo mode too.
    #[cfg(feature = "schema")]
    #[test]
    fn instances_of_derived_schemas_fit_them() {
        #[allow(dead_code)]
        #[derive(schemars::JsonSchema)]
        enum Priority {
            Low,
            /// Someone looks today.
            Urgent,
        }
        #[allow(dead_code)]
        #[derive(schemars::JsonSchema)]
        #[serde(tag = "kind")]
        enum Action {
            Reply { text: String },
            Escalate { team: String, within_hours: u16 },
        }
        #[allow(dead_code)]
        #[derive(schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        struct Ticket {
            priority: Priority,
            assignee: Option<String>,
            tags: Vec<String>,
            #[schemars(range(min = 2, max = 4), length(min = 1))]
            severity: Vec<u8>,
            #[schemars(range(min = 3, max = 5))]
            stars: i32,
            action: Action,
            pair: (bool, f64),
            parent: Option<Box<Ticket>>,
            children: Vec<Ticket>,
        }
        let schema = crate::schema::schema_of::<Ticket>();
        for seed in [None, Some(1), Some(2), Some(3), Some(0xdead_beef)] {
            let value = instance_of(&schema, seed);
            assert_eq!(
                crate::schema::validate(&schema, &value),
                Ok(()),
                "{value:#} against {schema:#}"
            );
        }
    }
}
