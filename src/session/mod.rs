//! The session: warm `claude` processes, the threads that drive them, and what items share
//! (throttle, budget, counters). The engine (`crate::engine`) drives items through it.
//!
//! - `builder`: every setting, checked once.
//! - The processes themselves live below, in `crate::backend::cli`.

pub(crate) mod builder;

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use crate::backend::cli::locate::CLI_ENV_VAR;
pub use crate::backend::cli::{CliOptions, PermissionMode};
pub use crate::backend::spec::Effort;
pub use builder::SessionBuilder;

use crate::backend::cli::pool::Pool;
use crate::backend::cli::seal;
pub(crate) use crate::backend::cli::AnswerSettings;
use crate::budget::Budget;
use crate::retry::Cooldown;
use crate::stats::Counters;
use crate::throttle::Throttle;
use crate::{Cancel, Error, Stats, UsageWindow};
use builder::Settings;

/// How long a prompt-cache entry lives after its last use, as the API documents it; a bit
/// less is assumed, so that an entry about to expire counts as cold.
const CACHE_LIFETIME: Duration = Duration::from_secs(270);

/// The smallest prefix the API caches (1,024 tokens for Sonnet and Opus; more for some
/// models, where the warm-up then costs one item's latency for nothing).
pub(crate) const CACHE_MIN_TOKENS: u64 = 1024;

/// Warming the prompt cache: when the session's shared prefix is cold, the first item goes
/// alone until its answer has begun (the API makes an entry readable from then on); the
/// others wait here, before the throttle, and then all read it. They wait at most `max_wait`
/// after the warming item went: an item that never answers (or answers late) must not hold
/// up the batch for its whole timeout, so past it they go without the cache.
pub(crate) struct CacheGate {
    state: Mutex<GateState>,
    changed: parking_lot::Condvar,
    max_wait: Duration,
}

#[derive(Default)]
struct GateState {
    warm_until: Option<Instant>,
    /// The ticket of the item warming now, if one is, and when it went.
    warming: Option<(u64, Instant)>,
    next_ticket: u64,
    /// The warming item the others stopped waiting for (said once in the log).
    gave_up_waiting_for: Option<u64>,
}

/// What an item is at the gate.
pub(crate) enum GatePass {
    /// The prefix is warm (or too small to cache, or its warming took too long): go.
    Open,
    /// This item warms the prefix (its ticket): others wait until its answer begins, it
    /// gives up, or the gate's longest wait is over.
    Warming(u64),
}

impl CacheGate {
    /// A gate at which items wait at most `max_wait` for the warming one.
    pub(crate) fn new(max_wait: Duration) -> CacheGate {
        CacheGate {
            state: Mutex::new(GateState::default()),
            changed: parking_lot::Condvar::new(),
            max_wait,
        }
    }

    /// Wait at the gate; `None` when `stopped()` said so first.
    pub(crate) fn enter(&self, stopped: &dyn Fn() -> bool) -> Option<GatePass> {
        let mut state = self.state.lock();
        loop {
            let now = Instant::now();
            if state.warm_until.is_some_and(|until| until > now) {
                return Some(GatePass::Open);
            }
            let Some((ticket, since)) = state.warming else {
                state.next_ticket += 1;
                let ticket = state.next_ticket;
                state.warming = Some((ticket, now));
                return Some(GatePass::Warming(ticket));
            };
            let give_up_at = crate::clock::saturating_add(since, self.max_wait);
            if now >= give_up_at {
                if state.gave_up_waiting_for != Some(ticket) {
                    state.gave_up_waiting_for = Some(ticket);
                    log::info!(
                        "the item warming the prompt cache has not begun its answer after {:?}; \
                         the others go without waiting (each may write its own cache entry)",
                        self.max_wait
                    );
                }
                return Some(GatePass::Open);
            }
            // Checked under the lock, so a stop's wake-up (`wake`) cannot slip in between.
            if stopped() {
                return None;
            }
            // Woken when the answer begins, the warming item gives up, or the run stops.
            self.changed.wait_until(&mut state, give_up_at);
        }
    }

    /// Wake the items waiting here so that they recheck their stop (a run's stop hook).
    pub(crate) fn wake(&self) {
        let _state = self.state.lock();
        self.changed.notify_all();
    }

    /// An answer began: the prefix is warm for a while (every read refreshes it).
    pub(crate) fn began(&self) {
        let mut state = self.state.lock();
        state.warm_until = Some(Instant::now() + CACHE_LIFETIME);
        if state.warming.take().is_some() {
            self.changed.notify_all();
        }
    }

    /// The warming item `ticket` ended: if it is still the one warming (no answer began),
    /// the next one warms.
    pub(crate) fn gave_up(&self, ticket: u64) {
        let mut state = self.state.lock();
        if state.warming.is_some_and(|(warming, _)| warming == ticket) {
            state.warming = None;
            self.changed.notify_all();
        }
    }
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

/// What a session holds; the engine (`crate::engine`) drives items through it.
pub(crate) struct Inner {
    id: u64,
    pub(crate) config: Settings,
    cli: PathBuf,
    pub(crate) pool: Pool,
    threads: rayon::ThreadPool,
    pub(crate) throttle: Arc<Throttle>,
    pub(crate) budget: Budget,
    pub(crate) counters: Counters,
    pub(crate) created: Instant,
    closed: AtomicBool,
    /// Set at close, so that every run's waits end at once.
    pub(crate) closing: Cancel,
    /// The exponential pause after 429/529 results that carry no delay of the API's.
    pub(crate) cooldown: Cooldown,
    /// The processes' private working folder when no `cwd` was given; removed at close.
    private_dir: Mutex<Option<seal::PrivateDir>>,
    /// Calls in a row that could not connect to the API (reset by any success).
    pub(crate) unreachable_streak: AtomicU32,
    /// API calls the last answered items made (the engine charges the throttle from them).
    pub(crate) recent_calls: Mutex<VecDeque<u32>>,
    /// Warming the prompt cache of the shared prefix (`None`: nothing to warm).
    pub(crate) cache_gate: Option<CacheGate>,
    /// What besides the prompt decides an answer (the journal's key), computed once; `Err`
    /// when it cannot be known (a journal then refuses every item).
    pub(crate) answer_settings: AnswerSettings,
    /// What the session has said about subscription usage windows, so each is said once.
    pub(crate) usage_windows: Mutex<UsageWindowsSeen>,
}

/// Subscription usage windows the session has logged about.
#[derive(Default)]
pub(crate) struct UsageWindowsSeen {
    /// Windows whose warning was logged.
    pub warned: HashSet<UsageWindow>,
    /// The end of the usage-limit pause in force, if one was ever made.
    pub paused_until: Option<Instant>,
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
        started: crate::backend::cli::Started,
    ) -> Result<Session, Error> {
        let crate::backend::cli::Started {
            program: cli,
            pool,
            private_dir,
            answer_settings,
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
        let budget = Budget::new(config.max_budget_usd, config.cost_estimate_usd);
        let cache_gate = (config.warm_cache
            && config.spec.shared_prefix_tokens() >= CACHE_MIN_TOKENS)
            .then(|| CacheGate::new(config.warm_cache_wait.min(config.timeout)));
        Ok(Session {
            inner: Arc::new(Inner {
                id,
                config,
                cli,
                pool,
                threads,
                throttle,
                budget,
                counters: Counters::default(),
                created: Instant::now(),
                closed: AtomicBool::new(false),
                cooldown: Cooldown::default(),
                closing: Cancel::new(),
                private_dir: Mutex::new(private_dir),
                unreachable_streak: AtomicU32::new(0),
                recent_calls: Mutex::new(VecDeque::new()),
                cache_gate,
                answer_settings,
                usage_windows: Mutex::default(),
            }),
        })
    }

    /// A snapshot of what the session has done so far.
    pub fn stats(&self) -> Stats {
        let mut stats = self.inner.counters.snapshot();
        stats.processes_started = self.inner.pool.started();
        stats.processes_live = self.inner.pool.live() as u64;
        stats.processes_recycled = self.inner.pool.recycled();
        stats.budget_exhausted = self.inner.budget.is_exhausted();
        stats
    }

    /// The shared throttle this session waits on.
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.inner.throttle
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
        self.inner.budget.set_limit(Some(budget));
    }

    /// Remove the spending cap; a session whose budget was spent goes on.
    pub fn remove_max_budget(&self) {
        self.inner.budget.set_limit(None);
    }

    /// The CLI executable this session runs.
    pub fn cli_path(&self) -> &Path {
        &self.inner.cli
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
        self.inner.throttle.wake_all();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_holds_the_others_no_longer_than_its_longest_wait() {
        let gate = CacheGate::new(Duration::ZERO);
        assert!(matches!(gate.enter(&|| false), Some(GatePass::Warming(1))));
        // The warming item has not begun: past the (here empty) wait, the others go.
        assert!(matches!(gate.enter(&|| false), Some(GatePass::Open)));
        assert!(matches!(gate.enter(&|| false), Some(GatePass::Open)));
        // When it gives up, the next item warms.
        gate.gave_up(1);
        assert!(matches!(gate.enter(&|| false), Some(GatePass::Warming(2))));

        let gate = CacheGate::new(Duration::MAX);
        assert!(matches!(gate.enter(&|| false), Some(GatePass::Warming(1))));
        // However long the wait, a stop ends it.
        assert!(gate.enter(&|| true).is_none());
        gate.began();
        assert!(matches!(gate.enter(&|| true), Some(GatePass::Open)));
    }
}
