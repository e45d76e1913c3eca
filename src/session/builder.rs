//! `SessionBuilder`: a session's settings, what any backend understands and the CLI's options
//! (`cli(..)`), checked once in `build()`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::api::ApiOptions;
use crate::backend::cli::CliOptions;
use crate::backend::spec::{AnswerSpec, Effort};
use crate::retry::RetryPolicy;
use crate::throttle::Throttle;
use crate::{Error, Session};

/// How long the other items wait, by default, for the item warming the prompt cache to begin
/// its answer: a process start (about 1 s, several on a busy machine) and the API's time to
/// first token (seconds), with room to spare, yet far below an item's timeout.
const DEFAULT_WARM_CACHE_WAIT: Duration = Duration::from_secs(20);
/// Longer than any subscription window (the weekly ones reset within seven days).
pub(crate) const DEFAULT_MAX_USAGE_LIMIT_WAIT: Duration = Duration::from_secs(8 * 24 * 3600);

/// Settings of a [`Session`], built with [`Session::builder`].
///
/// The builder holds what any way of answering understands: the model, the prompts around
/// every item, its schema and effort, how many items run at once and how long one may take,
/// rate limits, retries (all in [`retry_policy`](Self::retry_policy)), the budget, progress,
/// the prompt cache and the journal. What only the Claude Code CLI understands (its path,
/// arguments, environment and working folder, tools, sealing, recycling) is set through
/// [`cli`](Self::cli), on [`CliOptions`].
///
/// The defaults suit batch work: no tools and an empty system prompt, so a request carries
/// little more than the prompt (about 1.2 KB instead of about 76 KB with the CLI's defaults),
/// and no transcripts are written to `~/.claude`.
///
/// # System prompts and what they cost
///
/// Every item's request carries the system prompt, so its size is billed on every item.
/// - [`system_prompt`](Self::system_prompt) replaces the CLI's own system prompt. The default
///   here is the empty string.
/// - [`append_system_prompt`](Self::append_system_prompt) is added after it: after the empty
///   default, it is in effect your whole system prompt; after
///   [`cli(|c| c.cli_system_prompt())`](CliOptions::cli_system_prompt) (the CLI's own, about
///   6 KB) it extends that.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use claude_rayon::{RetryPolicy, Session};
///
/// let builder = Session::builder()
///     .model("sonnet")
///     .append_system_prompt("Answer in one line.")
///     .concurrency(4)
///     .timeout(Duration::from_secs(120))
///     .retry_policy(RetryPolicy::default().max_retries(5))
///     .cli(|c| c.env("ANTHROPIC_API_KEY", "sk-ant-secret").max_turns(1));
/// // The secret never shows:
/// assert!(!format!("{builder:?}").contains("sk-ant-secret"));
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct SessionBuilder {
    pub(crate) settings: Settings,
    pub(crate) backend: Backend,
    pub(crate) cli: CliOptions,
    pub(crate) api: ApiOptions,
}

/// What answers a session's items.
///
/// - [`Backend::Cli`] (the default): a pool of warm Claude Code CLI processes. It works with
///   whatever login the CLI has, a claude.ai subscription included. Each item in flight holds
///   a process of 200-320 MB that takes most of a CPU-second to start.
/// - [`Backend::MessagesApi`] (cargo feature `api`): plain HTTPS requests to the Messages API
///   with an API key: no process per item, so hundreds of items can be in flight on a small
///   machine, and cost and usage come exactly from the API.
///
/// The adaptors, streams, pipeline, conversations, journal, budget, throttle and statistics
/// work the same on both.
///
/// # Examples
///
/// ```
/// use claude_rayon::{Backend, Session};
///
/// assert_eq!(Backend::default(), Backend::Cli);
/// let builder = Session::builder()
///     .backend(Backend::MessagesApi)
///     .api_key("sk-ant-...")
///     .concurrency(64);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// The Claude Code CLI (`claude`), as warm processes.
    #[default]
    Cli,
    /// The Messages API over HTTPS (needs the `api` feature and an API key).
    MessagesApi,
    /// The Message Batches API (needs the `api` feature and an API key): every token at half
    /// the Messages API's price, answers within 24 hours (most within one). The adaptors
    /// (`claude_map`, `claude_filter`, `claude_group_by`, `.typed()`) and
    /// [`Session::query`] submit their items as batches and give the results back in input
    /// order as usual; streams, the pipeline and conversations, which need each answer as
    /// it comes, refuse a batch session with [`Error::InvalidConfig`]. Give the session a
    /// [`journal`](SessionBuilder::journal): it records each batch before it is created,
    /// so a rerun after a crash or a cancel picks up the batches already paid for instead of
    /// submitting their items again. See [`max_batch_requests`](SessionBuilder::max_batch_requests),
    /// [`batch_poll_interval`](SessionBuilder::batch_poll_interval) and
    /// [`on_cancel_batches`](SessionBuilder::on_cancel_batches).
    Batches,
}

/// What a run's [`Cancel`](crate::Cancel) (or Ctrl-C) does to the batches it has submitted
/// ([`SessionBuilder::on_cancel_batches`]). Either way the run returns promptly, its items
/// not answered coming back failed with [`Error::Cancelled`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BatchCancel {
    /// Cancel them at the API and keep what they answered before the cancel took hold (the
    /// default): those answers are handed back and journaled; the rest is not billed.
    #[default]
    CancelAndKeepResults,
    /// Leave them running: nothing more is read now, and a rerun with the same journal
    /// reads their results (paid once) instead of submitting those items again.
    LeaveRunning,
}

/// How a batch session submits and waits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BatchSettings {
    /// The most requests one batch holds.
    pub max_requests: usize,
    /// The first wait between two looks at a batch; later ones grow by half up to
    /// `MAX_BATCH_POLL_INTERVAL` (or this, if longer).
    pub poll_interval: Duration,
    pub on_cancel: BatchCancel,
}

/// The longest wait between two looks at a batch, once the waits have grown.
pub(crate) const MAX_BATCH_POLL_INTERVAL: Duration = Duration::from_secs(60);

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_requests: crate::backend::batch::MAX_BATCH_REQUESTS,
            poll_interval: Duration::from_secs(5),
            on_cancel: BatchCancel::default(),
        }
    }
}

/// The checked settings a session runs with, whatever answers its items.
#[derive(Clone)]
pub(crate) struct Settings {
    /// What decides an answer besides the item.
    pub spec: AnswerSpec,
    pub concurrency: usize,
    pub timeout: Duration,
    pub throttle: Option<Arc<Throttle>>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub burst: Option<u32>,
    pub output_token_allowance: u64,
    pub retry: RetryPolicy,
    pub max_budget_usd: Option<f64>,
    /// One cap shared with other programs, besides `max_budget_usd`.
    pub shared_budget: Option<crate::budget::SharedBudget>,
    pub cost_estimate_usd: Option<f64>,
    /// Every run of the session stops starting items once it is set.
    pub cancel: Option<crate::Cancel>,
    /// Why the schema `json_schema_of` derived cannot be used, reported by `build()`.
    pub schema_error: Option<String>,
    pub progress: bool,
    pub on_progress: Option<crate::progress::Callback>,
    /// Whether a cold shared prefix is warmed by one item before the others go.
    pub warm_cache: bool,
    /// The longest the others wait for the warming item's answer to begin.
    pub warm_cache_wait: Duration,
    /// The longest reset of a used-up subscription window a run waits for.
    pub max_usage_limit_wait: Duration,
    /// Where the session's journal is, opened by `build()`.
    pub journal_path: Option<PathBuf>,
    pub journal: Option<crate::Journal>,
    /// How a batch session submits and waits ([`Backend::Batches`]).
    pub batches: BatchSettings,
    #[cfg(feature = "progress")]
    pub progress_draw_target: Option<crate::progress::bar::DrawTargetFactory>,
}

impl Default for SessionBuilder {
    fn default() -> Self {
        SessionBuilder {
            settings: Settings {
                spec: AnswerSpec::default(),
                concurrency: 4,
                timeout: Duration::from_secs(600),
                throttle: None,
                requests_per_minute: None,
                tokens_per_minute: None,
                burst: None,
                output_token_allowance: 1024,
                retry: RetryPolicy::default(),
                max_budget_usd: None,
                shared_budget: None,
                cost_estimate_usd: None,
                cancel: None,
                schema_error: None,
                progress: false,
                on_progress: None,
                warm_cache: true,
                warm_cache_wait: DEFAULT_WARM_CACHE_WAIT,
                max_usage_limit_wait: DEFAULT_MAX_USAGE_LIMIT_WAIT,
                journal_path: None,
                journal: None,
                batches: BatchSettings::default(),
                #[cfg(feature = "progress")]
                progress_draw_target: None,
            },
            backend: Backend::default(),
            cli: CliOptions::default(),
            api: ApiOptions::default(),
        }
    }
}

impl SessionBuilder {
    /// The model (`--model`): an alias such as `"sonnet"` or a full model name.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.settings.spec.model = Some(model.into());
        self
    }

    /// The system prompt (`--system-prompt`). The default is empty (see
    /// [`CliOptions::cli_system_prompt`] for the CLI's own, which cannot go with this one).
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = claude_rayon::Session::builder().system_prompt("You are a terse reviewer.");
    /// ```
    pub fn system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.settings.spec.system_prompt = Some(prompt.into());
        self
    }

    /// Text added after the system prompt (`--append-system-prompt`): **the place for
    /// instructions every item shares** (a rubric, category definitions, the output format,
    /// examples), so that each request varies only by its item.
    ///
    /// The CLI marks the system blocks for the prompt cache, so from the second item on the
    /// API bills this text at a tenth of the input price (the first item writes it, at 1.25×),
    /// once it is at least 1,024 tokens (about 4 KB; more for some models). The session makes
    /// sure the entry exists before the others ask: see [`warm_cache`](Self::warm_cache).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use claude_rayon::prelude::*;
    /// use claude_rayon::Session;
    /// use rayon::prelude::*;
    ///
    /// let rubric = std::fs::read_to_string("review-rubric.md")?; // long, the same for every item
    /// let session = Session::builder().append_system_prompt(rubric).build()?;
    /// let files = ["a.rs", "b.rs"];
    /// let reviews: Vec<_> = files
    ///     .par_iter()
    ///     .claude_map(&session, |f| std::fs::read_to_string(f).unwrap_or_default())
    ///     .collect();
    /// println!("{:.0}% of the input was read from the cache", session.stats().cache_read_share() * 100.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.settings.spec.append_system_prompt = Some(prompt.into());
        self
    }

    /// A JSON Schema every answer must follow (`--json-schema`); answers then carry
    /// [`Response::structured`](crate::Response::structured). An answer without one is
    /// [`Error::StructuredOutputMissing`].
    pub fn json_schema(mut self, schema: serde_json::Value) -> Self {
        self.settings.spec.json_schema = Some(schema);
        self.settings.schema_error = None;
        self
    }

    /// The JSON Schema of `T` as every answer's schema (feature `schema`): derived from the
    /// type the answers are parsed into, so the two cannot drift. Take the answers as `T`
    /// with [`ClaudeMap::typed`](crate::iter::ClaudeMap::typed) or
    /// [`Session::query_typed`], which check each answer against the schema and parse it.
    ///
    /// The schema is made to suit both backends: every subschema inlined (only a recursive
    /// type keeps a reference, into the schema itself), no `$schema` line, and an object at
    /// its root, which both the CLI's `--json-schema` and the Messages API's tool input
    /// need. `T` must therefore be a struct, a map, or an enum whose variants are objects
    /// (internally tagged, or externally tagged with fields); any other `T` makes `build()`
    /// fail with [`Error::InvalidConfig`]: wrap it in a struct. Doc comments on fields become
    /// their descriptions, which the model reads.
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::prelude::*;
    /// use claude_rayon::Session;
    /// use rayon::prelude::*;
    /// use schemars::JsonSchema;
    /// use serde::Deserialize;
    ///
    /// #[derive(Deserialize, JsonSchema)]
    /// enum Priority { Low, Normal, Urgent }
    ///
    /// #[derive(Deserialize, JsonSchema)]
    /// struct Triage {
    ///     /// How soon a person must look at the ticket.
    ///     priority: Priority,
    ///     /// Who should take it, if the ticket says.
    ///     team: Option<String>,
    ///     tags: Vec<String>,
    /// }
    ///
    /// # claude_rayon::simulator::serve_if_requested();
    /// let session = Session::builder().simulated()?.json_schema_of::<Triage>().build()?;
    /// let tickets = vec![
    ///     "The checkout page times out for every customer since this morning's deploy.",
    ///     "Could the monthly invoice PDF show the VAT number of the buyer as well?",
    /// ];
    /// let triaged: Vec<_> = tickets
    ///     .par_iter()
    ///     .claude_map(&session, |t| format!("Triage this support ticket:\n{t}"))
    ///     .typed::<Triage>()
    ///     .collect();
    /// for result in triaged {
    ///     let (ticket, triage) = result.map_err(|failed| failed.error)?;
    ///     println!("{:?} ({} tags): {ticket}", triage.team, triage.tags.len());
    /// }
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    #[cfg(feature = "schema")]
    pub fn json_schema_of<T: schemars::JsonSchema + ?Sized>(mut self) -> Self {
        let schema = crate::schema::schema_of::<T>();
        self.settings.schema_error = (!crate::schema::is_object_schema(&schema)).then(|| {
            format!(
                "json_schema_of::<{}>(): its schema is not an object ({}), and both the CLI \
                 and the Messages API take only an object schema; wrap it in a struct",
                std::any::type_name::<T>(),
                crate::error::shorten(&schema.to_string(), 120)
            )
        });
        self.settings.spec.json_schema = Some(schema);
        self
    }

    /// The effort level (`--effort`).
    pub fn effort(mut self, effort: Effort) -> Self {
        self.settings.spec.effort = Some(effort);
        self
    }

    /// How many items run at once (default 4): for the CLI, how many processes the session
    /// keeps. Each process holds about 185 MB once warm and peaks near 300 MB while it
    /// starts and answers, and grows to 380-470 MiB over a long run before it is recycled;
    /// `build()` logs a warning when `concurrency` × 480 MB is more than
    /// the memory available. Past the number of cores, more processes only help when the API
    /// is slow (they wait on the network, not on the CPU).
    pub fn concurrency(mut self, processes: usize) -> Self {
        self.settings.concurrency = processes;
        self
    }

    /// The longest one item may take (default 10 minutes). A process that runs past it is
    /// killed and replaced, and the item fails with [`Error::Timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// Run on the built-in [`simulator`](crate::simulator) instead of the real CLI: this
    /// program re-runs itself as the simulator, so its `main` must call
    /// [`simulator::serve_if_requested`](crate::simulator::serve_if_requested) first. Answers
    /// are labelled as simulated; no API is called and nothing is billed.
    ///
    /// `build()` checks that the program serves (it starts it once and asks), and refuses
    /// with [`CliError::SimulatorNotServed`](crate::CliError::SimulatorNotServed) when it does not; a copy started as the simulator
    /// never builds a session of its own, so a forgotten call cannot make the program start
    /// itself again and again.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the path of the running program cannot be found.
    #[cfg(feature = "simulator")]
    pub fn simulated(self) -> Result<Self, Error> {
        let exe = std::env::current_exe().map_err(Error::io)?;
        Ok(self.cli(|c| {
            c.cli_path(exe)
                .env(crate::simulator::SIMULATOR_ENV_VAR, "1")
                .env("CLAUDE_RAYON_SIM_DEMO", "1")
        }))
    }

    /// As [`simulated`](Self::simulated), and the simulator follows the directives an item's
    /// text carries (`[[sim:reply=TEXT]]`, `[[sim:delay=MS]]`, `[[sim:error=STATUS]]`, ...;
    /// the list is in the [`simulator`](crate::simulator) module): to see what a program does
    /// with a failed item, a slow one or an answer it did not expect, without a CLI. The
    /// directive language is for trying and testing, not a stable API, and a directive in a
    /// document you did not write scripts its item too: keep this for your own test items.
    ///
    /// # Examples
    ///
    /// ```
    /// claude_rayon::simulator::serve_if_requested();
    /// use claude_rayon::{Error, Session};
    ///
    /// let ticket = "[[sim:error=400]] Summarise this ticket: the export drops rows.";
    /// let scripted = Session::builder().simulated_scripted()?.build()?;
    /// let failed = scripted.query(ticket).unwrap_err();
    /// assert!(matches!(failed, Error::Api { status: Some(400), .. }));
    /// // `simulated()` answers any text, directives and all.
    /// let plain = Session::builder().simulated()?.build()?;
    /// assert!(plain.query(ticket)?.text.starts_with("[simulated]"));
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`simulated`](Self::simulated).
    #[cfg(feature = "simulator")]
    pub fn simulated_scripted(self) -> Result<Self, Error> {
        Ok(self
            .simulated()?
            .cli(|c| c.env(crate::simulator::DIRECTIVES_ENV_VAR, "1")))
    }

    /// Settings only the Claude Code CLI understands (the CLI is what answers items): its
    /// path, arguments, environment and working folder, tools, sealing and recycling; see
    /// [`CliOptions`]. Calls compose: each closure gets the options as the ones before left
    /// them (a [`simulated`](Self::simulated) session's included).
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::Session;
    ///
    /// let key = "sk-ant-secret"; // read from your own secret store
    /// let builder = Session::builder()
    ///     .model("sonnet")
    ///     .cli(|c| c.env("ANTHROPIC_API_KEY", key).env_remove("ANTHROPIC_AUTH_TOKEN"))
    ///     .cli(|c| c.cli_max_retries(Some(0)));
    /// ```
    pub fn cli(mut self, configure: impl FnOnce(CliOptions) -> CliOptions) -> Self {
        self.cli = configure(std::mem::take(&mut self.cli));
        self
    }

    /// What answers the items: the Claude Code CLI (the default) or the Messages API. See
    /// [`Backend`] for when to choose which.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use claude_rayon::{Backend, Session};
    ///
    /// // ANTHROPIC_API_KEY holds the key.
    /// let session = Session::builder()
    ///     .backend(Backend::MessagesApi)
    ///     .model("claude-haiku-4-5")
    ///     .concurrency(64)
    ///     .requests_per_minute(1000)
    ///     .build()?;
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Settings only the Messages API backend understands ([`ApiOptions`]): the most output
    /// tokens a call writes, how often a cut answer is continued.
    pub fn api(mut self, configure: impl FnOnce(ApiOptions) -> ApiOptions) -> Self {
        self.api = configure(self.api);
        self
    }

    /// The Messages API backend's key (else `ANTHROPIC_API_KEY`): sent in the `x-api-key`
    /// header only, never in logs, errors, `Debug` output or the journal.
    pub fn api_key(self, key: impl Into<String>) -> Self {
        self.api(|a| a.api_key(key))
    }

    /// Where the Messages API backend sends its requests (else `ANTHROPIC_BASE_URL`, else
    /// `https://api.anthropic.com`).
    pub fn base_url(self, url: impl Into<String>) -> Self {
        self.api(|a| a.base_url(url))
    }

    /// Limit requests per minute on a throttle of this session's own.
    pub fn requests_per_minute(mut self, limit: u32) -> Self {
        self.settings.requests_per_minute = Some(limit);
        self
    }

    /// Limit tokens (input plus output, of every kind) per minute on this session's throttle.
    pub fn tokens_per_minute(mut self, limit: u64) -> Self {
        self.settings.tokens_per_minute = Some(limit);
        self
    }

    /// How many requests may go at once after an idle spell (default: one minute's worth).
    pub fn burst(mut self, requests: u32) -> Self {
        self.settings.burst = Some(requests);
        self
    }

    /// Output tokens reserved per item on the tokens-per-minute bucket before the real usage
    /// is known (default 1024).
    pub fn output_token_allowance(mut self, tokens: u64) -> Self {
        self.settings.output_token_allowance = tokens;
        self
    }

    /// Share one throttle between sessions that use one API key. Overrides
    /// `requests_per_minute`, `tokens_per_minute` and `burst`.
    pub fn throttle(mut self, throttle: Arc<Throttle>) -> Self {
        self.settings.throttle = Some(throttle);
        self
    }

    /// The whole retry policy: how often an item is tried again after a retryable error
    /// (default 3), the delays, and which errors are retried. The one place retries are set.
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::{RetryPolicy, Session};
    ///
    /// let patient = Session::builder().retry_policy(RetryPolicy::default().max_retries(6));
    /// let once = Session::builder().retry_policy(RetryPolicy::none());
    /// ```
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.settings.retry = policy;
        self
    }

    /// A spending cap for the whole session, in US dollars. Once the next item's estimated
    /// cost no longer fits, no further call is made and items fail with
    /// [`Error::BudgetExceeded`]. An item whose own prompt would cost more than is left
    /// (a huge document) fails alone with [`Error::ItemOverBudget`], without spending the
    /// budget: the other items go on.
    pub fn max_budget_usd(mut self, budget: f64) -> Self {
        self.settings.max_budget_usd = Some(budget);
        self
    }

    /// A spending cap shared with every program that names it ([`SharedBudget::redis`](crate::SharedBudget::redis),
    /// feature `redis`), checked after this session's own [`max_budget_usd`](Self::max_budget_usd):
    /// once the programs together have spent or reserved it, items fail with
    /// [`Error::BudgetExceeded`].
    pub fn shared_budget(mut self, budget: crate::budget::SharedBudget) -> Self {
        self.settings.shared_budget = Some(budget);
        self
    }

    /// The cost reserved for an item before it runs, when no item has finished yet to learn
    /// from (default: 0.01 USD). After that, the largest cost seen is reserved.
    pub fn cost_estimate_usd(mut self, estimate: f64) -> Self {
        self.settings.cost_estimate_usd = Some(estimate);
        self
    }

    /// Call `callback` with a [`Progress`](crate::Progress) snapshot as a run's items finish,
    /// at most about ten times a second, and once at the end of each run (with
    /// `finished: true`). The progress bar of the `progress` feature is built on the same
    /// snapshots.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = claude_rayon::Session::builder().on_progress(|p| {
    ///     eprintln!("{}/{:?} done, ${:.4}", p.done, p.total, p.cost_usd);
    /// });
    /// ```
    pub fn on_progress(
        mut self,
        callback: impl Fn(&crate::Progress) + Send + Sync + 'static,
    ) -> Self {
        self.settings.on_progress = Some(Arc::new(callback));
        self
    }

    /// Stop every run of this session from starting new items once `cancel` is set, as if
    /// each had been given it: the adaptors' and streams' `with_cancel`, a pipeline's
    /// `request_stop`, a query's or a conversation's turn (which is ended at once). Items in
    /// flight finish; the rest come back as failed with [`Error::Cancelled`]. With
    /// [`Cancel::on_ctrl_c`](crate::Cancel::on_ctrl_c) (feature `ctrlc`) this is Ctrl-C for
    /// the whole program in one line.
    ///
    /// # Examples
    ///
    /// ```
    /// # claude_rayon::simulator::serve_if_requested();
    /// use claude_rayon::{Cancel, Error, Session};
    ///
    /// let cancel = Cancel::new();
    /// let session = Session::builder().simulated()?.with_cancel(&cancel).build()?;
    /// session.query("Is 7 a prime number?")?;
    /// cancel.cancel();
    /// assert!(matches!(session.query("Is 9 a prime number?"), Err(Error::Cancelled)));
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn with_cancel(mut self, cancel: &crate::Cancel) -> Self {
        self.settings.cancel = Some(cancel.clone());
        self
    }

    /// Draw a progress bar on stderr for this session's runs: items done and total, failures,
    /// retries, throttle waits and pauses, tokens, cost, rate and ETA. Needs the `progress`
    /// feature (without it nothing is drawn and `build()` logs a warning saying so). No bar is drawn when stderr is not a terminal,
    /// unless a target is given with `progress_draw_target`.
    pub fn progress(mut self, show: bool) -> Self {
        self.settings.progress = show;
        self
    }

    /// Draw the progress bar somewhere else than stderr (a new target per run), even when
    /// stderr is not a terminal. Implies `progress(true)`.
    #[cfg(feature = "progress")]
    pub fn progress_draw_target(
        mut self,
        target: impl Fn() -> indicatif::ProgressDrawTarget + Send + Sync + 'static,
    ) -> Self {
        self.settings.progress = true;
        self.settings.progress_draw_target = Some(Arc::new(target));
        self
    }

    /// Warm the prompt cache before fanning out (default on): when the shared prefix (the
    /// system prompt and [`append_system_prompt`](Self::append_system_prompt)) is large
    /// enough to be cached and no answer has begun in the last minutes, the first item goes
    /// alone until its answer has begun, then the rest go in parallel and read the entry it
    /// wrote. It costs at most one item's time to first answer at the start of a run (never
    /// more than [`warm_cache_wait`](Self::warm_cache_wait)); without
    /// it, the first `concurrency` items each write their own entry at 1.25× the input price.
    pub fn warm_cache(mut self, warm: bool) -> Self {
        self.settings.warm_cache = warm;
        self
    }

    /// The longest the other items wait at the start of a run for the item warming the prompt
    /// cache (see [`warm_cache`](Self::warm_cache)) to begin its answer (default 20 s, and
    /// never longer than [`timeout`](Self::timeout)). Past it they go without the cache
    /// (each may write its own entry), so one item that hangs or is slow never holds up the
    /// batch; a cancel or a close ends the wait at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = claude_rayon::Session::builder().warm_cache_wait(Duration::from_secs(5));
    /// ```
    pub fn warm_cache_wait(mut self, wait: Duration) -> Self {
        self.settings.warm_cache_wait = wait;
        self
    }

    /// The longest a run waits for a used-up subscription usage window to reset (claude.ai
    /// logins only: an API key has no such windows). When the CLI reports a window used up
    /// (the five-hour one, a weekly one), every item of the session pauses on its throttle
    /// until the reset, then the item that hit it is asked again: no item fails and no retry
    /// is spent. A reset further away than `wait` fails the run at once with
    /// [`Error::UsageLimitReached`] instead (`Duration::ZERO`: never wait). The default, 8
    /// days, waits for any window. A cancel or the session's close ends the wait at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// // Wait out the five-hour window, but not a weekly one.
    /// let builder = claude_rayon::Session::builder()
    ///     .max_usage_limit_wait(Duration::from_secs(5 * 3600));
    /// ```
    pub fn max_usage_limit_wait(mut self, wait: Duration) -> Self {
        self.settings.max_usage_limit_wait = wait;
        self
    }

    /// Keep a [`Journal`](crate::Journal) of this session's answers at `path` (opened, or
    /// created, by `build()`): a rerun over the same inputs takes every answer already in it
    /// without a call. A run given its own journal (`with_journal`) uses that one instead.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let session = claude_rayon::Session::builder().journal("out/answers.jsonl").build()?;
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn journal(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.journal_path = Some(path.into());
        self
    }

    /// The most requests one batch holds on a [`Backend::Batches`] session (default and
    /// most: 100,000, the API's limit; a batch is also cut before its body reaches 256 MB).
    /// Smaller batches end sooner and a cancel loses less; the API's rate limits count
    /// requests waiting in batches, so a large run may need several.
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::{Backend, Session};
    /// let builder = Session::builder().backend(Backend::Batches).max_batch_requests(10_000);
    /// ```
    pub fn max_batch_requests(mut self, requests: usize) -> Self {
        self.settings.batches.max_requests = requests;
        self
    }

    /// The first wait between two looks at a submitted batch (default 5 s); the waits then
    /// grow by half each time up to a minute (or up to `interval`, if longer). A cancel
    /// ends a wait at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use claude_rayon::{Backend, Session};
    /// let builder = Session::builder()
    ///     .backend(Backend::Batches)
    ///     .batch_poll_interval(Duration::from_secs(30));
    /// ```
    pub fn batch_poll_interval(mut self, interval: Duration) -> Self {
        self.settings.batches.poll_interval = interval;
        self
    }

    /// What a cancel does to the batches a run has submitted: cancel them and keep their
    /// partial results (the default), or leave them running for a rerun to read. See
    /// [`BatchCancel`].
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::{Backend, BatchCancel, Session};
    /// let builder = Session::builder()
    ///     .backend(Backend::Batches)
    ///     .journal("answers.jsonl")
    ///     .on_cancel_batches(BatchCancel::LeaveRunning);
    /// ```
    pub fn on_cancel_batches(mut self, on_cancel: BatchCancel) -> Self {
        self.settings.batches.on_cancel = on_cancel;
        self
    }

    /// Check the settings and create the session. No process starts until the first item.
    ///
    /// # Errors
    ///
    /// [`CliError::NotFound`](crate::CliError::NotFound) when no CLI is found, [`CliError::Unsupported`](crate::CliError::Unsupported) when it is too
    /// old to be sealed (or does not say its version), [`CliError::SimulatorNotServed`](crate::CliError::SimulatorNotServed) for a
    /// [`simulated`](Self::simulated) session whose program does not serve the simulator, [`Error::InvalidConfig`] for invalid
    /// or contradictory settings, [`Error::JournalLocked`] or [`Error::Journal`] when the
    /// journal cannot be opened, or cannot tell which model answers (a settings file the CLI
    /// would read cannot be read).
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::{Error, Session};
    ///
    /// let err = Session::builder()
    ///     .concurrency(0)
    ///     .cli(|c| c.cli_path("/bin/sh"))
    ///     .build()
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::InvalidConfig(_)));
    /// ```
    pub fn build(self) -> Result<Session, Error> {
        let SessionBuilder {
            mut settings,
            backend,
            cli: options,
            api,
        } = self;
        settings.validate()?;
        #[cfg(not(feature = "progress"))]
        if settings.progress {
            log::warn!(
                "progress(true) draws nothing: the progress bar needs the `progress` feature \
                 (claude-rayon = {{ version = \"...\", features = [\"progress\"] }}); \
                 on_progress(..) works without it"
            );
        }
        let id = super::next_session_id();
        let started = match backend {
            Backend::Cli => {
                options.validate(&settings.spec)?;
                crate::backend::cli::start(
                    id,
                    &settings.spec,
                    settings.concurrency,
                    settings.timeout,
                    &options,
                )?
            }
            Backend::MessagesApi => {
                api.validate()?;
                start_api(&settings, &api, false)?
            }
            Backend::Batches => {
                api.validate()?;
                if settings.journal_path.is_none() && settings.journal.is_none() {
                    log::warn!(
                        "a batch session without a journal: if this program stops (a crash,                          kill -9) while its batches run, their answers are paid for but                          cannot be found by a rerun, which submits those items again; give                          it SessionBuilder::journal(..)"
                    );
                }
                start_api(&settings, &api, true)?
            }
        };
        if let Some(path) = &settings.journal_path {
            if let Err(why) = &started.answer_settings {
                return Err(Error::Journal {
                    path: path.clone(),
                    message: why.clone(),
                });
            }
            settings.journal = Some(crate::Journal::open(path)?);
        }
        Session::start(id, settings, started)
    }
}

/// The Messages API backend, when this build has it.
fn start_api(
    settings: &Settings,
    api: &ApiOptions,
    batches: bool,
) -> Result<crate::backend::Started, Error> {
    #[cfg(feature = "api")]
    {
        let lane = if batches {
            crate::backend::api::Lane::Batches
        } else {
            crate::backend::api::Lane::Messages
        };
        crate::backend::api::start_lane(&settings.spec, settings.concurrency, api, lane)
    }
    #[cfg(not(feature = "api"))]
    {
        let _ = (settings, api);
        let backend = if batches {
            "Backend::Batches"
        } else {
            "Backend::MessagesApi"
        };
        Err(Error::InvalidConfig(format!(
            "{backend} needs the `api` feature: \
             claude-rayon = {{ version = \"...\", features = [\"api\"] }}"
        )))
    }
}

impl Settings {
    /// The checks of the settings any backend understands; `CliOptions::validate` has the
    /// CLI's.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |msg: String| Err(Error::InvalidConfig(msg));
        if self.concurrency == 0 {
            return invalid("concurrency must be at least 1".into());
        }
        if self.concurrency > 256 {
            return invalid(format!(
                "concurrency {} is more processes than is sensible (each holds ~185 MB); use at most 256",
                self.concurrency
            ));
        }
        if self.timeout.is_zero() {
            return invalid("timeout must be longer than zero".into());
        }
        if let Some(why) = &self.schema_error {
            return invalid(why.clone());
        }
        if let Some(schema) = &self.spec.json_schema {
            if !schema.is_object() {
                return invalid("json_schema must be a JSON object (a JSON Schema)".into());
            }
        }
        if self.requests_per_minute == Some(0) || self.tokens_per_minute == Some(0) {
            return invalid("a rate limit of 0 per minute would never admit a request".into());
        }
        if !(1..=crate::backend::batch::MAX_BATCH_REQUESTS).contains(&self.batches.max_requests) {
            return invalid(format!(
                "max_batch_requests must be from 1 to {} (the API's limit), not {}",
                crate::backend::batch::MAX_BATCH_REQUESTS,
                self.batches.max_requests
            ));
        }
        if self.batches.poll_interval.is_zero() {
            return invalid("batch_poll_interval must be longer than zero".into());
        }
        if self.burst == Some(0) {
            return invalid("burst must be at least 1".into());
        }
        if self.throttle.is_some()
            && (self.requests_per_minute.is_some()
                || self.tokens_per_minute.is_some()
                || self.burst.is_some())
        {
            return invalid(
                "throttle(...) and requests_per_minute/tokens_per_minute/burst both given; set the limits on the shared Throttle".into(),
            );
        }
        if let Some(budget) = self.max_budget_usd {
            if !(budget.is_finite() && budget >= 0.0) {
                return invalid(format!(
                    "max_budget_usd must be a finite, non-negative amount, not {budget}"
                ));
            }
        }
        if let Some(estimate) = self.cost_estimate_usd {
            if !(estimate.is_finite() && estimate >= 0.0) {
                return invalid(format!(
                    "cost_estimate_usd must be non-negative, not {estimate}"
                ));
            }
        }
        self.retry.validate()
    }
}

impl fmt::Debug for SessionBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionBuilder")
            .field("settings", &self.settings)
            .field("backend", &self.backend)
            .field("cli", &self.cli)
            .field("api", &self.api)
            .finish()
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("model", &self.spec.model)
            .field("system_prompt", &self.spec.system_prompt)
            .field("append_system_prompt", &self.spec.append_system_prompt)
            .field("json_schema", &self.spec.json_schema)
            .field("effort", &self.spec.effort)
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("throttle", &self.throttle)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .field("retry", &self.retry)
            .field("max_budget_usd", &self.max_budget_usd)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contradictions_are_rejected() {
        // The CLI's own checks are in `CliOptions::validate`'s tests.
        let check = |b: SessionBuilder| b.settings.validate().unwrap_err().to_string();
        assert!(
            check(SessionBuilder::default().json_schema(serde_json::json!("x"))).contains("object")
        );
        assert!(check(SessionBuilder::default().timeout(Duration::ZERO)).contains("timeout"));
        assert!(check(SessionBuilder::default().max_budget_usd(f64::NAN)).contains("budget"));
        assert!(check(
            SessionBuilder::default()
                .requests_per_minute(10)
                .throttle(Arc::new(Throttle::unlimited()))
        )
        .contains("throttle"));
    }

    #[test]
    fn cli_calls_compose() {
        let b = SessionBuilder::default()
            .cli(|c| c.env("FIRST", "1").max_turns(2))
            .model("sonnet")
            .cli(|c| c.env("SECOND", "2"));
        let env: Vec<&str> = b.cli.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(env, ["FIRST", "SECOND"]);
        assert_eq!(b.cli.max_turns, Some(2));
        assert_eq!(b.settings.spec.model.as_deref(), Some("sonnet"));
    }

    #[cfg(feature = "simulator")]
    #[test]
    fn a_simulated_session_keeps_its_simulator_under_later_cli_calls() {
        let b = SessionBuilder::default()
            .simulated()
            .unwrap()
            .cli(|c| c.env("MORE", "1"));
        assert_eq!(b.cli.cli_path, Some(std::env::current_exe().unwrap()));
        assert!(b
            .cli
            .env
            .iter()
            .any(|(k, v)| k == crate::simulator::SIMULATOR_ENV_VAR && v == "1"));
    }

    #[test]
    fn secrets_are_hidden_from_debug() {
        let b = SessionBuilder::default()
            .cli(|c| c.env("ANTHROPIC_API_KEY", "sk-ant-very-secret"))
            .model("sonnet");
        let shown = format!("{b:?}");
        assert!(!shown.contains("sk-ant-very-secret"), "{shown}");
        assert!(
            shown.contains("ANTHROPIC_API_KEY") && shown.contains("sonnet"),
            "{shown}"
        );
    }
}
