//! The session: warm `claude` processes, the threads that drive them, and what items share
//! (throttle, budget, counters). The engine (`crate::engine`) drives items through it.
//!
//! - `builder`: every setting, checked once.
//! - The processes themselves live below, in `crate::backend::cli`.

pub(crate) mod builder;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::backend::api::ApiOptions;
pub use crate::backend::cli::locate::CLI_ENV_VAR;
pub use crate::backend::cli::{CliOptions, PermissionMode};
pub use crate::backend::spec::Effort;
pub use builder::{Backend, BatchCancel, SessionBuilder};

use crate::admission::{Admission, AdmissionSettings, CacheGate, CACHE_MIN_TOKENS};
use crate::backend;
pub(crate) use crate::backend::AnswerSettings;
use crate::budget::Budget;
use crate::stats::Counters;
use crate::throttle::Throttle;
use crate::{Cancel, Error, Stats};
use builder::Settings;

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
    inner: Arc<Inner>,
}

/// What a session holds; the engine (`crate::engine`) drives items through it.
struct Inner {
    id: u64,
    config: Settings,
    /// The CLI the processes run, for the CLI backend.
    cli: Option<PathBuf>,
    /// What answers the turns: the CLI's processes, or connections to the Messages API.
    backend: Box<dyn backend::Backend>,
    threads: rayon::ThreadPool,
    /// Budget, cache gate and throttle: what a turn must hold before it goes out.
    admission: Admission,
    counters: Arc<Counters>,
    closed: AtomicBool,
    /// Set at close, so that every run's waits end at once.
    closing: Cancel,
    /// What besides the prompt decides an answer (the journal's key), computed once; `Err`
    /// when it cannot be known (a journal then refuses every item).
    answer_settings: AnswerSettings,
}

/// A new session's id, unique in this program (it names the session's threads and folder).
pub(crate) fn next_session_id() -> u64 {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
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

    /// Session `id` with these settings on the CLI `started` for it.
    pub(crate) fn start(
        id: u64,
        config: Settings,
        started: backend::Started,
    ) -> Result<Session, Error> {
        let backend::Started {
            program: cli,
            backend,
            answer_settings,
            model,
        } = started;
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
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(config.concurrency)
            .thread_name(move |i| format!("claude-rayon-s{id}-{i}"))
            .build()
            .map_err(|e| {
                Error::io(std::io::Error::other(format!(
                    "cannot start the session's threads: {e}"
                )))
            })?;
        let budget = Budget::new(config.max_budget_usd, config.cost_estimate_usd)
            .with_shared(config.shared_budget.clone());
        let cache_gate = (config.warm_cache
            && config.spec.shared_prefix_tokens() >= CACHE_MIN_TOKENS)
            .then(|| CacheGate::new(config.warm_cache_wait.min(config.timeout)));
        let counters = Arc::new(Counters::default());
        let admission = Admission::new(
            AdmissionSettings {
                model,
                output_token_allowance: config.output_token_allowance,
                request_overhead_tokens: backend.request_overhead_tokens(),
                retry: config.retry.clone(),
                max_usage_limit_wait: config.max_usage_limit_wait,
            },
            budget,
            throttle,
            cache_gate,
            Arc::clone(&counters),
        );
        Ok(Session {
            inner: Arc::new(Inner {
                id,
                config,
                cli,
                backend,
                threads,
                admission,
                counters,
                closed: AtomicBool::new(false),
                closing: Cancel::new(),
                answer_settings,
            }),
        })
    }

    /// A snapshot of what the session has done so far.
    pub fn stats(&self) -> Stats {
        let mut stats = self.inner.counters.snapshot();
        let backend = self.inner.backend.stats();
        stats.processes_started = backend.processes_started;
        stats.processes_live = backend.processes_live;
        stats.processes_recycled = backend.processes_recycled;
        stats.budget_exhausted = self.inner.admission.budget().is_exhausted();
        stats
    }

    /// The shared throttle this session waits on.
    pub fn throttle(&self) -> &Arc<Throttle> {
        self.inner.admission.throttle()
    }

    /// Change the spending cap, in US dollars, as
    /// [`SessionBuilder::max_budget_usd`] sets it. Raising it lets a session whose budget was
    /// spent go on.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let session = claude_rayon::Session::builder().max_budget_usd(1.0).build()?;
    /// // ... the first batch spent it; allow another dollar.
    /// session.set_max_budget_usd(2.0);
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn set_max_budget_usd(&self, budget: f64) {
        self.inner.admission.budget().set_limit(Some(budget));
    }

    /// Remove the spending cap; a session whose budget was spent goes on.
    pub fn remove_max_budget(&self) {
        self.inner.admission.budget().set_limit(None);
    }

    /// The CLI executable this session runs; `None` on the Messages API backend.
    pub fn cli_path(&self) -> Option<&Path> {
        self.inner.cli.as_deref()
    }

    /// How many items may run at once (the number of processes and of threads).
    pub fn concurrency(&self) -> usize {
        self.inner.config.concurrency
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
        // Waits on the throttle and between retries end now.
        self.inner.closing.cancel();
        self.inner.admission.wake();
        // Items in flight are ended and counted before the stats are taken.
        let deadline = Instant::now() + CLOSE_SETTLE;
        self.inner.backend.close(CLOSE_SETTLE);
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
        self.inner.backend.release();
        Ok(self.stats())
    }

    /// The session's settings, as built.
    /// Whether the session answers in batches ([`Backend::Batches`]).
    pub(crate) fn answers_in_batches(&self) -> bool {
        self.backend().batches().is_some()
    }

    pub(crate) fn config(&self) -> &Settings {
        &self.inner.config
    }

    /// What answers the turns.
    pub(crate) fn backend(&self) -> &dyn backend::Backend {
        self.inner.backend.as_ref()
    }

    /// What a turn must hold before it goes out (budget, cache gate, throttle).
    pub(crate) fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// The live counters behind [`stats`](Self::stats).
    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// The cancel every run of the session obeys (`SessionBuilder::with_cancel`).
    pub(crate) fn cancel(&self) -> Option<&Cancel> {
        self.inner.config.cancel.as_ref()
    }

    /// Set at close, so that every run's waits end at once.
    pub(crate) fn closing(&self) -> &Cancel {
        &self.inner.closing
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// What besides the prompt decides an answer (the journal's key).
    pub(crate) fn answer_settings(&self) -> &AnswerSettings {
        &self.inner.answer_settings
    }

    /// The session's own thread pool: `concurrency` named threads.
    pub(crate) fn threads(&self) -> &rayon::ThreadPool {
        &self.inner.threads
    }
}

impl Inner {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("cli", &self.inner.cli)
            .field("config", &self.inner.config)
            .field("backend", &self.inner.backend)
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The backend's drop ends idle connections (the pool kills and reaps its idle
        // processes); whoever holds a connection (an attempt, a conversation) holds the
        // session too, so none is in use here.
        log::debug!("session {} dropped", self.id);
    }
}

/// Why `what` (a stream, a pipeline, a conversation) refuses a batch session.
pub(crate) fn refused_by_batches(what: &str) -> String {
    format!(
        "{what} needs each answer as it comes, and a Backend::Batches session answers within \
         hours: use a Backend::MessagesApi session for it (same key), or the adaptors \
         (claude_map, claude_filter, claude_group_by) and query, which submit batches"
    )
}
