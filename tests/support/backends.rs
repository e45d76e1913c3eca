//! One test, two backends: a test body written once against a [`TestBackend`] runs on the
//! fake CLI (the simulator) and on the Messages API backend against the loopback mock API.
//!
//! ```ignore
//! fn results_keep_their_order(b: &TestBackend) {
//!     let session = b.builder().concurrency(4).build().unwrap();
//!     // ... prompts may carry the simulator's directives, `[[sim:delay=20]]` ...
//!     assert_eq!(b.prompts_seen().len(), 60);
//! }
//! on_both_backends!(results_keep_their_order);
//! ```
//!
//! `on_both_backends!(name, ...)` makes a module `name` holding two tests, `name::cli` and
//! `name::api`, each calling `name(&TestBackend)` through [`run_on`]. A macro rather than a
//! `for_each_backend(|b| ...)` loop inside one test, because then each backend is a test of
//! its own: a failure on one does not hide the other's result, one backend can be run alone
//! (`cargo test --test fast claude_map::` or `... ::api`), the harness names the backend
//! that failed, and `#[should_panic]` works per backend. The body stays an ordinary function,
//! which rustfmt formats (it leaves the inside of a macro call alone).
//!
//! On the API side, the mock answers each request by reading the simulator's prompt
//! directives (see [`ApiScript`]); a directive that only means something to a CLI process
//! fails the test rather than being ignored.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claude_rayon::simulator::directive;
use claude_rayon::{Backend, Session, SessionBuilder};
use serde_json::{json, Value};

use super::mock_api::{Fault, MockApi, RecordedRequest, Reply};
use super::{quick_retries, Fake};

/// Which backend a [`TestBackend`] drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The CLI backend, on the fake CLI (the simulator).
    Cli,
    /// The Messages API backend, on the loopback mock API.
    Api,
}

/// The model the API side's sessions ask for (the mock answers any).
pub const API_MODEL: &str = "claude-haiku-4-5";

/// The API side's key: a test key, which the mock accepts.
pub const API_KEY: &str = "sk-ant-test-harness-key-not-a-secret";

/// How long a `[[sim:hang]]` reply waits on the API side: for ever, as far as a test can tell.
/// The mock's wait ends at once when the mock is dropped (it polls its shutdown flag), so a
/// hung reply ends with the test and never holds up the mock's drop.
const HANG: Duration = Duration::from_secs(24 * 3600);

/// A test's backend: the fake CLI with its record, or the mock API with its requests.
pub struct TestBackend {
    side: Side,
}

enum Side {
    Cli(Fake),
    Api {
        api: MockApi,
        script: Arc<ApiScript>,
        dir: tempfile::TempDir,
    },
}

impl TestBackend {
    /// A fresh setup of `kind`: a new fake-CLI folder, or a new mock API scripted by the
    /// prompt directives.
    pub fn new(kind: Kind) -> TestBackend {
        let side = match kind {
            Kind::Cli => Side::Cli(Fake::new()),
            Kind::Api => {
                let api = MockApi::start();
                let script = Arc::new(ApiScript::default());
                let answering = Arc::clone(&script);
                api.set_reply_with(move |request| answering.reply(request));
                Side::Api {
                    api,
                    script,
                    dir: tempfile::tempdir().unwrap(),
                }
            }
        };
        TestBackend { side }
    }

    pub fn kind(&self) -> Kind {
        match self.side {
            Side::Cli(_) => Kind::Cli,
            Side::Api { .. } => Kind::Api,
        }
    }

    /// The backend's name, for messages.
    pub fn name(&self) -> &'static str {
        match self.kind() {
            Kind::Cli => "CLI",
            Kind::Api => "Messages API",
        }
    }

    /// A builder for this backend with the tests' defaults: tiny retry backoffs (3 retries)
    /// and a 30 s timeout. The CLI side's is exactly [`Fake::builder`]'s; the API side's
    /// talks to the mock with a test key and model [`API_MODEL`].
    pub fn builder(&self) -> SessionBuilder {
        match &self.side {
            Side::Cli(fake) => fake.builder(),
            Side::Api { api, .. } => Session::builder()
                .backend(Backend::MessagesApi)
                .api_key(API_KEY)
                .base_url(api.url())
                .model(API_MODEL)
                .retry_policy(quick_retries(3))
                .timeout(Duration::from_secs(30)),
        }
    }

    /// Every prompt that reached the model, in arrival order: the prompts the fake CLI
    /// processes saw, or the prompts of the requests the mock API got (one per call, a
    /// failed call's too).
    pub fn prompts_seen(&self) -> Vec<String> {
        self.prompts_with_context()
            .into_iter()
            .map(|(prompt, _)| prompt)
            .collect()
    }

    /// As [`prompts_seen`](Self::prompts_seen), each with how many user turns its context
    /// held then (1 for a fresh context, 2 for a conversation's second turn).
    pub fn prompts_with_context(&self) -> Vec<(String, u64)> {
        match &self.side {
            Side::Cli(fake) => fake.prompts(),
            Side::Api { api, .. } => api
                .requests()
                .into_iter()
                .map(|r| (r.prompt, r.user_turns as u64))
                .collect(),
        }
    }

    /// The fake CLI's setup, on the CLI side.
    pub fn fake(&self) -> Option<&Fake> {
        match &self.side {
            Side::Cli(fake) => Some(fake),
            Side::Api { .. } => None,
        }
    }

    /// The mock API, on the API side.
    pub fn api(&self) -> Option<&MockApi> {
        match &self.side {
            Side::Cli(_) => None,
            Side::Api { api, .. } => Some(api),
        }
    }

    /// A temporary folder of this test's own (journals and the like).
    pub fn dir(&self) -> &Path {
        match &self.side {
            Side::Cli(fake) => fake.dir.path(),
            Side::Api { dir, .. } => dir.path(),
        }
    }

    /// Directives the API side was given that have no HTTP equivalent.
    fn unsupported(&self) -> Vec<String> {
        match &self.side {
            Side::Cli(_) => Vec::new(),
            Side::Api { script, .. } => script.unsupported.lock().unwrap().clone(),
        }
    }
}

/// Run `body` on a fresh [`TestBackend`] of `kind`, failing with the backend's name in the
/// message; on the API side, also fail if a prompt used a directive only the CLI has.
pub fn run_on(kind: Kind, body: impl FnOnce(&TestBackend)) {
    let backend = TestBackend::new(kind);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&backend)));
    let unsupported = backend.unsupported();
    let note = if unsupported.is_empty() {
        String::new()
    } else {
        format!(
            " (CLI-only directives reached the mock API, which answered them with a 400: \
             {unsupported:?}; keep such a test on the CLI backend)"
        )
    };
    if let Err(payload) = outcome {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("(a panic without a message)");
        panic!("on the {} backend: {message}{note}", backend.name());
    }
    assert!(note.is_empty(), "on the {} backend:{note}", backend.name());
}

/// `on_both_backends!(name, ...)`: for each test body `fn name(&TestBackend)` in this
/// module, the tests `name::cli` and `name::api`. Attributes before a name (such as
/// `#[should_panic(expected = "...")]`) go on both tests.
#[macro_export]
macro_rules! on_both_backends {
    ($($(#[$attr:meta])* $name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                $(#[$attr])*
                fn cli() {
                    $crate::support::backends::run_on(
                        $crate::support::backends::Kind::Cli,
                        super::$name,
                    );
                }

                #[test]
                $(#[$attr])*
                fn api() {
                    $crate::support::backends::run_on(
                        $crate::support::backends::Kind::Api,
                        super::$name,
                    );
                }
            }
        )+
    };
}

/// `on_the_cli_backend!(name, ...)`: as [`on_both_backends!`], the test `name::cli` alone, for
/// a test body written for both backends that cannot run on the API yet (say why beside it,
/// with a `TODO(api)`); moving the name to `on_both_backends!` adds `name::api`.
#[macro_export]
macro_rules! on_the_cli_backend {
    ($($(#[$attr:meta])* $name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                $(#[$attr])*
                fn cli() {
                    $crate::support::backends::run_on(
                        $crate::support::backends::Kind::Cli,
                        super::$name,
                    );
                }
            }
        )+
    };
}

/// The mock API's answers to the simulator's prompt directives (src/simulator.rs), as far
/// as they mean something to an HTTP API, in the simulator's order:
///
/// | directive | the mock's reply |
/// |---|---|
/// | `delay=MS` | the reply below, after MS ms (`Reply::After`) |
/// | `hang` | the echo after a day (`Reply::After`); the mock's wait ends when it is dropped |
/// | `error=STATUS` | 429, 529, 500, 400, 401, 404, ...: `Reply::status(STATUS, None)`; `none`: a cut stream (`Fault::CutStream`) |
/// | `fail-times=KEY,N,STATUS` | the first N requests whose prompt has it for KEY (counted per test) fail as `error=STATUS` (default 529) |
/// | `huge=BYTES` | BYTES bytes of text |
/// | `replies=KEY,A\|B\|C` | the nth request for KEY (counted per test) answers the nth text; the last repeats |
/// | `reply=TEXT` | TEXT |
/// | (none of the three above) | `echo: PROMPT`, the mock's default and the simulator's |
/// | `structured=JSON` | with a schema (the request offers a tool): `Reply::StructuredOutput(JSON)` |
/// | (no `structured`) | with a schema: `Reply::StructuredOutput` of a value of the schema's shape, as the simulator makes one |
/// | `no-structured` | with a schema: the text, no tool call |
/// | `stop=REASON` | the text, stopped with REASON (`Reply::Stop`) |
///
/// The rest are about a CLI process or one CLI version's transcript and have no HTTP
/// equivalent: `unreachable` (as an `error` status), `crash`, `crash-times`, `garbage`,
/// `garbage-env`, `stderr-env`, `close-stdout`, `control`, `max-turns`, `retry`,
/// `usage-warning`, `spend-limit`, `context`, `continue`, `repeat`, `resumed`, `ends-early`,
/// `refused-first`, `same-ids`. The mock answers a prompt holding one with a 400 and the test
/// fails ([`run_on`]): such a test stays on the CLI backend.
#[derive(Default)]
pub struct ApiScript {
    /// Attempts per `fail-times` / `replies` key, as the simulator's state folder counts them.
    attempts: Mutex<HashMap<String, u32>>,
    unsupported: Mutex<Vec<String>>,
}

/// Directives of the simulator that have no HTTP equivalent.
const CLI_ONLY: &[&str] = &[
    "crash",
    "crash-times",
    "garbage",
    "garbage-env",
    "stderr-env",
    "close-stdout",
    "control",
    "max-turns",
    "retry",
    "usage-warning",
    "spend-limit",
    "context",
    "continue",
    "repeat",
    "resumed",
    "ends-early",
    "refused-first",
    "same-ids",
];

impl ApiScript {
    /// The 1-based attempt at `key`.
    fn next_attempt(&self, key: &str) -> u32 {
        let mut attempts = self.attempts.lock().unwrap();
        let n = attempts.entry(key.to_string()).or_default();
        *n += 1;
        *n
    }

    /// The reply to one request.
    pub fn reply(&self, request: &RecordedRequest) -> Reply {
        let prompt = request.prompt.as_str();
        let reply = self.undelayed(request);
        match directive(prompt, "delay").and_then(|ms| ms.parse::<u64>().ok()) {
            Some(ms) => Reply::After(Duration::from_millis(ms), Box::new(reply)),
            None => reply,
        }
    }

    fn undelayed(&self, request: &RecordedRequest) -> Reply {
        let prompt = request.prompt.as_str();
        let d = |name: &str| directive(prompt, name);
        if let Some(name) = CLI_ONLY.iter().find(|name| d(name).is_some()) {
            return self.refuse(name);
        }
        if d("hang").is_some() {
            return Reply::After(HANG, Box::new(echo(prompt)));
        }
        let error = d("error").or_else(|| self.scheduled_failure(prompt));
        if let Some(status) = error {
            return match status.as_str() {
                "none" => Reply::Fault(Fault::CutStream),
                code => match code.parse::<u16>() {
                    Ok(code) => Reply::status(code, None),
                    Err(_) => self.refuse(&format!("error={code}")),
                },
            };
        }
        let text = if let Some(bytes) = d("huge").and_then(|v| v.parse::<usize>().ok()) {
            "z".repeat(bytes)
        } else if let Some(reply) = d("replies").and_then(|spec| self.nth_reply(&spec)) {
            reply
        } else if let Some(reply) = d("reply") {
            reply
        } else {
            format!("echo: {prompt}")
        };
        if let Some(reason) = d("stop") {
            return Reply::Stop {
                text,
                stop_reason: reason,
            };
        }
        match schema_of(request) {
            Some(schema) if d("no-structured").is_none() => Reply::StructuredOutput(
                d("structured")
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or_else(|| instance_of(schema)),
            ),
            _ => Reply::Text(text),
        }
    }

    /// A directive with no HTTP equivalent: noted for [`run_on`], and a 400 (not retried).
    fn refuse(&self, name: &str) -> Reply {
        self.unsupported.lock().unwrap().push(name.to_string());
        Reply::status(400, None)
    }

    /// `fail-times=KEY,N[,STATUS]`: the status for the first N attempts at KEY.
    fn scheduled_failure(&self, prompt: &str) -> Option<String> {
        let spec = directive(prompt, "fail-times")?;
        let mut parts = spec.split(',');
        let key = parts.next()?.to_string();
        let times: u32 = parts.next()?.parse().ok()?;
        let status = parts.next().unwrap_or("529").to_string();
        (self.next_attempt(&key) <= times).then_some(status)
    }

    /// `replies=KEY,A|B|C`: the nth attempt at KEY answers the nth text (the last repeats).
    fn nth_reply(&self, spec: &str) -> Option<String> {
        let (key, replies) = spec.split_once(',')?;
        let replies: Vec<&str> = replies.split('|').collect();
        let n = self.next_attempt(&format!("replies-{key}")) as usize;
        Some(replies[(n - 1).min(replies.len() - 1)].to_string())
    }
}

fn echo(prompt: &str) -> Reply {
    Reply::Text(format!("echo: {prompt}"))
}

/// The schema of a request that asks for structured output: its one tool's input schema.
fn schema_of(request: &RecordedRequest) -> Option<&Value> {
    request.body.get("tools")?.get(0)?.get("input_schema")
}

/// A small value of a JSON Schema's shape, as the simulator makes one (not in demo mode):
/// the first of an enum, every property of an object, one item of an array, `"simulated"`,
/// 1, 1.0, true.
pub fn instance_of(schema: &Value) -> Value {
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|o| o.first())
    {
        return first.clone();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") | None if schema.get("properties").is_some() => Value::Object(
            schema["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, sub)| (name.clone(), instance_of(sub)))
                .collect(),
        ),
        Some("object") => json!({}),
        Some("array") => match schema.get("items") {
            Some(items) => json!([instance_of(items)]),
            None => json!([]),
        },
        Some("string") => json!("simulated"),
        Some("integer") => json!(1),
        Some("number") => json!(1.0),
        Some("boolean") => json!(true),
        _ => Value::Null,
    }
}
