//! The session: warm `claude` processes, the threads that drive them, and one item's life
//! (budget, throttle, process, retries).
//!
//! - `builder`: every setting, checked once.
//! - `locate`: finding the CLI.
//! - `protocol`: the stream-json lines.
//! - `process`: one persistent CLI process.
//! - `pool`: up to `concurrency` of them.
//! - `conversation`: one process held for a multi-turn exchange.

pub(crate) mod builder;
mod conversation;
pub(crate) mod locate;
pub(crate) mod pool;
pub(crate) mod process;
pub(crate) mod protocol;
pub(crate) mod seal;
pub(crate) mod spawner;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub use builder::SessionBuilder;
pub use conversation::Conversation;
pub use locate::CLI_ENV_VAR;

use crate::budget::Budget;
use crate::cancel::RunControl;
use crate::retry::Cooldown;
use crate::stats::Counters;
use crate::throttle::{estimate_tokens, Throttle};
use crate::Cancel;
use crate::{Error, Response, Stats};
use builder::Config;
use pool::Pool;
use process::{Launch, TurnEvent};

/// Request overhead on top of the prompt with the default flags (system prompt off, no tools):
/// about 1.2 KB, so roughly 300 tokens.
pub(crate) const REQUEST_OVERHEAD_TOKENS: u64 = 300;

/// Peak memory of one CLI process while it starts and answers (measured: ~300 MB; ~185 MB
/// once idle).
pub(crate) const CLI_PEAK_BYTES: u64 = 300 * 1024 * 1024;

/// Warn when `concurrency` processes at their peak would not fit in the memory available.
fn warn_if_memory_is_short(concurrency: usize) {
    let needed = CLI_PEAK_BYTES.saturating_mul(concurrency as u64);
    if let Some(available) = memory_available_bytes() {
        if needed > available {
            log::warn!(
                "concurrency {concurrency} needs about {} MB for its claude processes (~300 MB \
                 each at peak), more than the {} MB available: expect swapping or the OOM \
                 killer; lower concurrency",
                needed / (1024 * 1024),
                available / (1024 * 1024)
            );
        }
    }
}

/// `MemAvailable` from `/proc/meminfo` (Linux); `None` elsewhere.
fn memory_available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How many answered items the expected calls per item is learned from.
const RECENT_CALLS_WINDOW: usize = 32;
/// The most calls an item is charged up front.
const MAX_EXPECTED_CALLS: u64 = 8;

/// Calls in a row that could not connect before the API counts as unreachable.
const UNREACHABLE_AFTER: u32 = 3;

/// What the CLI says when a call could not connect at all (not a stream cut midway).
fn is_connection_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    if m.contains("was lost") || m.contains("econnreset") {
        return false;
    }
    [
        "unable to connect",
        "connection error",
        "connectionrefused",
        "econnrefused",
        "enotfound",
        "eai_again",
        "etimedout",
        "ehostunreach",
        "enetunreach",
        "failed to fetch",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// How long `close` waits for the items whose processes it killed to be counted.
const CLOSE_SETTLE: Duration = Duration::from_secs(5);

/// A pool of warm `claude` processes and the threads that drive them.
///
/// A `Session` is a cheap handle: clone it freely and share it between threads. The CLI
/// processes end when the last handle is dropped (or at [`close`](Session::close)); none
/// outlives the session, and on Linux none outlives the program even if it is killed.
///
/// Each item gets fresh context: the process's conversation is cleared between items, so no
/// item sees another. For a multi-turn exchange use [`conversation`](Session::conversation).
///
/// # Examples
///
/// ```no_run
/// use claude_rayon::Session;
///
/// let session = Session::builder().model("sonnet").concurrency(2).build()?;
/// let response = session.query("Name one prime number. Answer with the number only.")?;
/// println!("{} ({} tokens, ${:.4})", response.text, response.usage.total(), response.cost_usd);
/// # Ok::<(), claude_rayon::Error>(())
/// ```
#[derive(Clone)]
pub struct Session {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    id: u64,
    pub(crate) config: Config,
    cli: PathBuf,
    pool: Pool,
    threads: OnceLock<rayon::ThreadPool>,
    pub(crate) throttle: Arc<Throttle>,
    budget: Budget,
    pub(crate) counters: Counters,
    created: Instant,
    closed: AtomicBool,
    /// The exponential pause after 429/529 results that carry no delay of the API's.
    cooldown: Cooldown,
    /// The processes' private working folder when no `cwd` was given; removed at close.
    private_dir: parking_lot::Mutex<Option<seal::PrivateDir>>,
    /// Calls in a row that could not connect to the API (reset by any success).
    unreachable_streak: std::sync::atomic::AtomicU32,
    /// API calls the last answered items made (see `expected_calls`).
    recent_calls: parking_lot::Mutex<std::collections::VecDeque<u32>>,
}

impl Session {
    /// Start configuring a session.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = claude_rayon::Session::builder().model("haiku").concurrency(2);
    /// ```
    pub fn builder() -> SessionBuilder {
        SessionBuilder::default()
    }

    pub(crate) fn from_config(config: Config, cli: PathBuf) -> Result<Session, Error> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let private_dir = match &config.cwd {
            Some(_) => None,
            None => Some(seal::PrivateDir::create(id).map_err(Error::io)?),
        };
        let throttle = match &config.throttle {
            Some(shared) => Arc::clone(shared),
            None => {
                let mut throttle =
                    Throttle::new(config.requests_per_minute, config.tokens_per_minute)?;
                if let Some(burst) = config.burst {
                    // The token burst scales with the request burst: burst/rpm of a minute.
                    let tokens = match (config.tokens_per_minute, config.requests_per_minute) {
                        (Some(tpm), Some(rpm)) => Some(
                            (u128::from(tpm) * u128::from(burst) / u128::from(rpm))
                                .clamp(1, u128::from(u64::MAX)) as u64,
                        ),
                        _ => None,
                    };
                    throttle = throttle.with_burst(Some(burst), tokens)?;
                }
                Arc::new(throttle)
            }
        };
        let launch = Launch {
            program: cli.clone(),
            args: config.cli_args(),
            env: config.cli_env(),
            env_remove: config.env_remove.clone(),
            cwd: config
                .cwd
                .clone()
                .or_else(|| private_dir.as_ref().map(|d| d.path().to_path_buf())),
            secrets: Arc::new(config.secrets()),
            interpret_item_text: config.interpret_item_text,
            clear_timeout: config.timeout.min(Duration::from_secs(30)),
            max_line_bytes: config.max_line_bytes,
        };
        let pool = Pool::new(
            launch,
            config.concurrency,
            config.max_starting_processes,
            config.fresh_process_per_item,
        );
        warn_if_memory_is_short(config.concurrency);
        let budget = Budget::new(config.max_budget_usd, config.cost_estimate_usd);
        Ok(Session {
            inner: Arc::new(Inner {
                id,
                config,
                cli,
                pool,
                threads: OnceLock::new(),
                throttle,
                budget,
                counters: Counters::default(),
                created: Instant::now(),
                closed: AtomicBool::new(false),
                cooldown: Cooldown::default(),
                private_dir: parking_lot::Mutex::new(private_dir),
                unreachable_streak: std::sync::atomic::AtomicU32::new(0),
                recent_calls: parking_lot::Mutex::new(std::collections::VecDeque::new()),
            }),
        })
    }

    /// Run one prompt with fresh context and wait for its answer. Several threads may call
    /// this at once: each gets its own process, up to `concurrency`, then waits for one.
    /// Retries, throttling and the budget apply as configured.
    ///
    /// # Errors
    ///
    /// Whatever the last attempt failed with; see [`Error`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let session = claude_rayon::Session::builder().build()?;
    /// let answer = session.query("Say hi")?;
    /// assert!(!answer.text.is_empty());
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn query(&self, prompt: impl AsRef<str>) -> Result<Response, Error> {
        let control = RunControl::new(None);
        self.inner
            .execute(prompt.as_ref(), &control)
            .map(|(response, _)| response)
            .map_err(|(error, _)| error)
    }

    /// Hold one process for a multi-turn exchange that keeps its context. The process counts
    /// against `concurrency` until the conversation is dropped. Each turn re-sends the whole
    /// exchange so far, so turns grow in tokens and cost.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let session = claude_rayon::Session::builder().build()?;
    /// let mut chat = session.conversation();
    /// chat.send("My name is Ada.")?;
    /// let answer = chat.send("What is my name?")?;
    /// assert!(answer.text.contains("Ada"));
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn conversation(&self) -> Conversation {
        Conversation::new(self.clone())
    }

    /// A snapshot of what the session has done so far.
    pub fn stats(&self) -> Stats {
        let mut stats = self.inner.counters.snapshot();
        stats.processes_started = self.inner.pool.started();
        stats.budget_exhausted = self.inner.budget.is_exhausted();
        stats
    }

    /// The shared throttle this session waits on.
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.inner.throttle
    }

    /// Change the spending cap. Raising it lets a session whose budget was spent go on.
    pub fn set_max_budget_usd(&self, budget: Option<f64>) {
        self.inner.budget.set_limit(budget);
    }

    /// The CLI executable this session runs.
    pub fn cli_path(&self) -> &Path {
        &self.inner.cli
    }

    /// How many items may run at once (the number of processes and of threads).
    pub fn concurrency(&self) -> usize {
        self.inner.config.concurrency
    }

    /// The operating system ids of the CLI processes this session has started (the most
    /// recent 10,000), for monitoring (and for tests that check none is left behind).
    pub fn process_ids(&self) -> Vec<u32> {
        self.inner.pool.started_pids()
    }

    /// How many CLI processes exist right now (idle or busy).
    pub fn live_processes(&self) -> usize {
        self.inner.pool.live()
    }

    /// End the processes and return what the session did: idle ones cleanly (stdin closed,
    /// then a kill for any that lingers), busy ones at once (an item in flight fails, and is
    /// counted before this returns; a conversation's next turn gets [`Error::Closed`]).
    /// Other handles to the session then get [`Error::Closed`].
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the session was already closed through another handle.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let session = claude_rayon::Session::builder().build()?;
    /// session.query("hello")?;
    /// let stats = session.close()?;
    /// println!("{} items, {:.4} USD", stats.succeeded, stats.cost_usd);
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn close(self) -> Result<Stats, Error> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        // Items in flight are ended and counted before the stats are taken.
        let deadline = Instant::now() + CLOSE_SETTLE;
        self.inner.pool.close(CLOSE_SETTLE);
        let counters = &self.inner.counters;
        let in_flight = || {
            let load = |c: &AtomicU64| c.load(Ordering::SeqCst);
            load(&counters.started) > load(&counters.succeeded) + load(&counters.failed)
        };
        // Every item left ends within moments (its process is gone, its waits see the close).
        while in_flight() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        // The processes are gone; their private folder goes too.
        drop(self.inner.private_dir.lock().take());
        Ok(self.stats())
    }

    /// The session's own thread pool, built on first use: `concurrency` named threads.
    pub(crate) fn threads(&self) -> &rayon::ThreadPool {
        self.inner.threads.get_or_init(|| {
            let id = self.inner.id;
            rayon::ThreadPoolBuilder::new()
                .num_threads(self.inner.config.concurrency)
                .thread_name(move |i| format!("claude-rayon-s{id}-{i}"))
                .build()
                .expect("cannot start the session's threads")
        })
    }

    /// The prefix of this session's thread names.
    pub fn thread_name_prefix(&self) -> String {
        format!("claude-rayon-s{}-", self.inner.id)
    }
}

impl Inner {
    /// One item, with its budget reservation, throttle permit, retries and statistics.
    /// Returns the number of attempts made with either outcome.
    pub(crate) fn execute(
        &self,
        prompt: &str,
        control: &RunControl,
    ) -> Result<(Response, u32), (Error, u32)> {
        self.count_started();
        let outcome = self.execute_attempts(prompt, control);
        self.count_finished(outcome.is_ok());
        outcome
    }

    /// Count an item as started; for runners that make several calls per item.
    pub(crate) fn count_started(&self) {
        Counters::add(&self.counters.started, 1);
    }

    /// Count an item as finished, once, however many calls it took.
    pub(crate) fn count_finished(&self, succeeded: bool) {
        if succeeded {
            Counters::add(&self.counters.succeeded, 1);
        } else {
            Counters::add(&self.counters.failed, 1);
        }
    }

    /// One call with its retries, without counting an item (see `count_started`). The count
    /// returned with either outcome is the number of calls made (prompts sent to a process).
    ///
    /// An item stopped between its tries (cancel, or a fatal error elsewhere in the run) keeps
    /// the error of its last call: that is what went wrong with it, the stop only ended the
    /// retries. A spent budget is the exception: it is reported as itself, since it is why the
    /// item was not tried again and it stays until the cap is raised.
    pub(crate) fn execute_attempts(
        &self,
        prompt: &str,
        control: &RunControl,
    ) -> Result<(Response, u32), (Error, u32)> {
        // The CLI drops a blank prompt and the model would answer something else.
        if seal::is_blank(prompt) {
            return Err((Error::EmptyPrompt, 0));
        }
        // Tries count towards `max_retries` even when no call could be made (a process that
        // failed to start), so that a persistent failure still ends.
        let mut tries = 0;
        let mut calls = 0;
        let mut last: Option<Error> = None;
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err((Error::Closed, calls));
            }
            if let Some(reason) = self.stop_reason(control) {
                return Err((last.unwrap_or(reason), calls));
            }
            tries += 1;
            let error = match self.attempt_once(prompt, control) {
                Ok(response) => return Ok((response, calls + 1)),
                Err(AttemptError::NotStarted(error)) => {
                    if error.is_fatal() {
                        control.fail_fatally(&error);
                    }
                    let error = match (last, &error) {
                        (Some(previous), Error::Cancelled | Error::Stopped(_)) => previous,
                        _ => error,
                    };
                    return Err((error, calls));
                }
                Err(AttemptError::Failed { error, called }) => {
                    calls += u32::from(called);
                    error
                }
            };
            if error.is_fatal() {
                control.fail_fatally(&error);
                return Err((error, calls));
            }
            if !self.config.retry.should_retry(&error, tries) {
                return Err((error, calls));
            }
            let wait = self.config.retry.backoff(tries);
            log::debug!("retrying an item in {wait:?} (try {tries} failed: {error})");
            self.note_retry_reason(&error);
            let stopped = !sleep_unless_stopped(wait, &|| self.should_stop(control));
            last = Some(error);
            if stopped {
                return Err((last.expect("just set"), calls));
            }
            // Counted only once it is going to be sent: a stop during the wait is no retry.
            Counters::add(&self.counters.retried, 1);
        }
    }

    fn attempt_once(&self, prompt: &str, control: &RunControl) -> Result<Response, AttemptError> {
        let prompt_tokens = estimate_tokens(prompt);
        let reservation = self
            .budget
            .reserve(self.item_estimate_usd(prompt_tokens))
            .map_err(AttemptError::NotStarted)?;
        let estimate = prompt_tokens + REQUEST_OVERHEAD_TOKENS + self.config.output_token_allowance;
        // An item is charged the API calls items made lately (a re-ask is a second call);
        // what it really made is settled after.
        let expected_calls = self.expected_calls();
        let permit = match self
            .throttle
            .acquire_calls(estimate, expected_calls, &|| self.should_stop(control))
        {
            Ok(permit) => permit,
            Err(_) => {
                self.budget.settle(reservation, 0.0);
                let reason = self
                    .stop_holding_reservation(control)
                    .unwrap_or(Error::Cancelled);
                return Err(AttemptError::NotStarted(reason));
            }
        };
        if !permit.waited().is_zero() {
            Counters::add(&self.counters.throttle_waits, 1);
            Counters::add(
                &self.counters.throttle_wait_nanos,
                permit.waited().as_nanos() as u64,
            );
        }
        let mut lease = match self.pool.checkout() {
            Ok(lease) => lease,
            Err(error) => {
                self.throttle.settle_calls(permit, 0, 0);
                self.budget.settle(reservation, 0.0);
                return Err(AttemptError::Failed {
                    error,
                    called: false,
                });
            }
        };
        // Waiting for a process can take long; a stop that came meanwhile still holds.
        if let Some(reason) = self.stop_holding_reservation(control) {
            drop(lease);
            self.throttle.settle_calls(permit, 0, 0);
            self.budget.settle(reservation, 0.0);
            return Err(AttemptError::NotStarted(reason));
        }
        Counters::add(&self.counters.requests, 1);
        // A hard stop of the run (a pipeline's bounded stop) ends this call by its process.
        let kill_switch = lease.process().kill_switch();
        let call = control.register_call(Arc::new(move || kill_switch.kill()));
        let sent_at = Instant::now();
        let (outcome, calls) = self.run_turn(lease.process(), prompt);
        let failed_cost = lease.process().take_failed_turn_cost();
        drop(call);
        drop(lease);
        // A call ended by a hard stop fails as stopped, not as a crash.
        let outcome = match outcome {
            Err(_) if control.is_aborted() => Err(Error::Cancelled),
            other => other,
        };
        match outcome {
            Ok(response) => {
                self.throttle
                    .settle_calls(permit, response.usage.total(), calls);
                self.note_calls(calls);
                self.budget.settle(reservation, response.cost_usd);
                self.cooldown.succeeded(sent_at);
                self.unreachable_streak.store(0, Ordering::SeqCst);
                self.record_success(&response);
                Ok(response)
            }
            Err(error) => {
                // An error result is billed as the CLI reports it (max turns, a missing
                // structured answer); a crash or timeout reports nothing, so it costs 0 here.
                let (cost, usage) = failed_cost.unwrap_or_default();
                self.throttle.settle_calls(permit, usage.total(), calls);
                self.budget.settle(reservation, cost);
                self.record_cost(cost, &usage);
                if matches!(error.api_status(), Some(429 | 529)) {
                    let now = Instant::now();
                    let wait = self.cooldown.throttled(&self.config.retry, sent_at, now);
                    self.back_off(now, wait);
                }
                let error = self.note_unreachable(error);
                Err(AttemptError::Failed {
                    error,
                    called: true,
                })
            }
        }
    }

    /// The API calls an item is expected to make: the most any of the last items made
    /// (the CLI re-asks the model for some answers). Over-charges are refunded at settle.
    pub(crate) fn expected_calls(&self) -> u64 {
        self.recent_calls
            .lock()
            .iter()
            .copied()
            .max()
            .map_or(1, u64::from)
            .clamp(1, MAX_EXPECTED_CALLS)
    }

    /// Remember how many API calls an answered item made.
    pub(crate) fn note_calls(&self, calls: u64) {
        let mut recent = self.recent_calls.lock();
        if recent.len() == RECENT_CALLS_WINDOW {
            recent.pop_front();
        }
        recent.push_back(u32::try_from(calls).unwrap_or(u32::MAX));
    }

    /// What an item's prompt of `input_tokens` will cost at least (see `budget`).
    pub(crate) fn item_estimate_usd(&self, input_tokens: u64) -> f64 {
        crate::budget::prompt_cost_usd(self.config.model.as_deref(), input_tokens)
    }

    /// Remember why items are being retried, for `Stats` and the progress bar.
    fn note_retry_reason(&self, error: &Error) {
        let reason = crate::error::shorten(&error.to_string(), 120);
        *self.counters.last_retry_reason.lock() = Some(reason);
    }

    /// Count calls in a row, across the session, that could not connect to the API; after
    /// a few, every item would fail the same way, so the error becomes a fatal one that says
    /// what to check (and stops the run) instead of minutes of retries.
    fn note_unreachable(&self, error: Error) -> Error {
        let Error::Api {
            status: None,
            message,
        } = &error
        else {
            return error;
        };
        if !is_connection_failure(message) {
            return error;
        }
        let failures = self.unreachable_streak.fetch_add(1, Ordering::SeqCst) + 1;
        self.note_retry_reason(&error);
        log::warn!("cannot reach the API ({message}); {failures} calls in a row could not connect");
        if failures < UNREACHABLE_AFTER {
            return error;
        }
        Error::ApiUnreachable {
            message: message.clone(),
            failures,
        }
    }

    /// Add what a failed call cost to the totals.
    pub(crate) fn record_cost(&self, cost: f64, usage: &crate::Usage) {
        if cost > 0.0 || usage.total() > 0 {
            let mut totals = self.counters.totals.lock();
            totals.usage.add(usage);
            totals.cost_usd += cost;
        }
    }

    pub(crate) fn record_success(&self, response: &Response) {
        let mut totals = self.counters.totals.lock();
        totals.usage.add(&response.usage);
        totals.cost_usd += response.cost_usd;
        drop(totals);
        self.counters.latency.lock().record(response.duration);
        let since_start = self.created.elapsed().as_nanos().max(1) as u64;
        let _ = self.counters.first_result_nanos.compare_exchange(
            0,
            since_start,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Run one turn on `process` with the session's settings, reporting what the CLI did on
    /// the way; returns the outcome and the API calls the turn made.
    pub(crate) fn run_turn(
        &self,
        process: &mut process::CliProcess,
        prompt: &str,
    ) -> (Result<Response, Error>, u64) {
        let mut calls = 1u64;
        let mut on_event = |event: TurnEvent| {
            if event == TurnEvent::ExtraCall {
                calls += 1;
            }
            self.on_turn_event(event)
        };
        let outcome = process.run_turn(
            prompt,
            self.config.timeout,
            self.config.json_schema.is_some(),
            &mut on_event,
        );
        (outcome, calls)
    }

    /// What the CLI did inside a turn: a retry, or one more call to re-ask the model.
    pub(crate) fn on_turn_event(&self, event: TurnEvent) {
        match event {
            TurnEvent::Retry(retry) => self.on_cli_retry(retry),
            // One more request the API counts; the throttle is charged for it when the
            // item's permit is settled with the calls really made.
            TurnEvent::ExtraCall => Counters::add(&self.counters.requests, 1),
        }
    }

    /// The CLI is retrying on its own: each retry is one more API request, and a 429 or 529
    /// tells every worker on the throttle to hold off for as long as the CLI waits.
    fn on_cli_retry(&self, retry: process::ApiRetry) {
        Counters::add(&self.counters.cli_api_retries, 1);
        self.throttle.note_extra_requests(1);
        if matches!(retry.status, Some(429 | 529)) {
            // The CLI's delay is max(retry-after, its own backoff): the API's word on when.
            self.back_off(Instant::now(), retry.delay);
        }
    }

    /// Pause new requests on the shared throttle (every session using it) for `wait` from
    /// `now`; a pause already in force that ends later is kept.
    fn back_off(&self, now: Instant, wait: Duration) {
        if wait.is_zero() {
            return;
        }
        let until = crate::retry::saturating_add(now, wait);
        if self.throttle.paused_until().is_none_or(|p| p < until) {
            Counters::add(&self.counters.backoff_pauses, 1);
            log::info!("the API is throttling: pausing new requests for {wait:?}");
            self.throttle.pause_until(until);
        }
    }

    /// Why an item of this run must not start: the run's own stop, or the session's cancel.
    fn stop_reason(&self, control: &RunControl) -> Option<Error> {
        control.stop_reason().or_else(|| {
            self.config
                .cancel
                .as_ref()
                .is_some_and(Cancel::is_cancelled)
                .then_some(Error::Cancelled)
        })
    }

    /// Why an item that already holds its budget reservation must not be sent: a cancel or a
    /// fatal error, but not a spent budget (the reservation was made before it ran out).
    fn stop_holding_reservation(&self, control: &RunControl) -> Option<Error> {
        self.stop_reason(control)
            .filter(|reason| !matches!(reason, Error::BudgetExceeded { .. }))
    }

    fn should_stop(&self, control: &RunControl) -> bool {
        control.should_stop()
            || self.closed.load(Ordering::SeqCst)
            || self
                .config
                .cancel
                .as_ref()
                .is_some_and(Cancel::is_cancelled)
    }

    pub(crate) fn count_request(&self) {
        Counters::add(&self.counters.requests, 1);
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(crate) fn budget(&self) -> &Budget {
        &self.budget
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

enum AttemptError {
    /// Refused before any call (budget, stop): not a try.
    NotStarted(Error),
    /// The try failed: in the call (`called`), or before it in starting a process.
    Failed { error: Error, called: bool },
}

/// Sleep for `wait` in short slices, returning false as soon as the run is told to stop.
fn sleep_unless_stopped(wait: Duration, should_stop: &dyn Fn() -> bool) -> bool {
    let deadline = crate::retry::saturating_add(Instant::now(), wait);
    loop {
        if should_stop() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("cli", &self.inner.cli)
            .field("config", &self.inner.config)
            .field("live_processes", &self.inner.pool.live())
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The pool's drop kills and reaps idle processes; leased ones cannot exist here
        // because a lease borrows the session.
        log::debug!("session {} dropped", self.id);
    }
}
