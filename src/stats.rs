//! What a session did: counters, tokens, cost and a latency histogram of constant size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::Usage;

/// A snapshot of what a session has done so far ([`Session::stats`](crate::Session::stats)).
///
/// # Examples
///
/// ```
/// use claude_rayon::Stats;
/// let stats = Stats::default();
/// assert_eq!(stats.succeeded + stats.failed, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Items taken up by a run or a query (each once, however often it was tried), including
    /// those that failed before any call (cancelled, stopped, refused, a panicking prompt
    /// closure): `started == succeeded + failed` once a run is over.
    pub started: u64,
    /// Items that ended with an answer.
    pub succeeded: u64,
    /// Items that ended with an error (after their retries).
    pub failed: u64,
    /// Retries this crate made (not counting the CLI's own).
    pub retried: u64,
    /// API calls the CLI retried on its own (`api_retry` lines).
    pub cli_api_retries: u64,
    /// Prompts sent to a CLI process (attempts).
    pub requests: u64,
    /// Times a request waited on the throttle.
    pub throttle_waits: u64,
    /// Total time requests spent waiting on the throttle.
    pub throttle_wait: Duration,
    /// Shared back-off pauses (after a 429 or 529).
    pub backoff_pauses: u64,
    /// Pauses of every item because a subscription usage window was used up (one per reset
    /// waited for, however many items hit it).
    pub usage_limit_pauses: u64,
    /// Time items were held by those pauses, up to now (a pause in force counts as far as it
    /// has run; one the session's close or a cancel ended early still holds the throttle).
    pub usage_limit_wait: Duration,
    /// Tokens used, summed over items.
    pub usage: Usage,
    /// What the session has cost, in US dollars.
    pub cost_usd: f64,
    /// What the same calls would have cost on the Messages API, in US dollars: `cost_usd`
    /// itself except on a [`Backend::Batches`](crate::Backend::Batches) session, whose
    /// requests are billed at half price.
    pub cost_usd_at_messages_price: f64,
    /// Batches submitted to the Message Batches API (follow-up batches of retries and
    /// re-prompts included).
    pub batches: u64,
    /// Whether the session's `max_budget_usd` is spent (no further calls are made).
    pub budget_exhausted: bool,
    /// CLI processes started.
    pub processes_started: u64,
    /// CLI processes that exist right now, idle or busy.
    pub processes_live: u64,
    /// Healthy processes retired between items and replaced, by
    /// [`recycle_after_items`](crate::CliOptions::recycle_after_items) or
    /// [`recycle_above_memory`](crate::CliOptions::recycle_above_memory).
    pub processes_recycled: u64,
    /// Time from the session's start to its first answer.
    pub time_to_first_result: Option<Duration>,
    /// Median item latency (prompt sent to result read, successful attempts).
    pub latency_p50: Option<Duration>,
    /// 90th percentile of item latency.
    pub latency_p90: Option<Duration>,
    /// 99th percentile of item latency.
    pub latency_p99: Option<Duration>,
    /// The longest item latency.
    pub latency_max: Option<Duration>,
    /// Why the last retry was needed, or the last call that could not connect: the error,
    /// shortened. The progress bar shows it while retries happen.
    pub last_retry_reason: Option<String>,
    /// Items of this session waiting on the throttle right now (for the rate limit or a
    /// shared back-off pause).
    pub waiting_on_throttle: u64,
    /// Items of this session waiting for a free connection right now (for the CLI, a free
    /// process: every one is busy, or held by a conversation).
    pub waiting_for_connection: u64,
    /// Items answered from a [`Journal`](crate::Journal), without a call (counted in
    /// `succeeded` too; their cost is not in `cost_usd`, which is what was paid now).
    pub replayed: u64,
}

impl Stats {
    /// The share of input tokens read from the prompt cache (billed at a tenth of the input
    /// price): 0 when nothing was read, near 1 when a long shared prefix was read by every
    /// item. Cache writes (billed at 1.25×) are `usage.cache_creation_input_tokens`.
    ///
    /// # Examples
    ///
    /// ```
    /// let stats = claude_rayon::Stats::default();
    /// assert_eq!(stats.cache_read_share(), 0.0);
    /// ```
    pub fn cache_read_share(&self) -> f64 {
        let u = &self.usage;
        let input = u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens;
        if input == 0 {
            0.0
        } else {
            u.cache_read_input_tokens as f64 / input as f64
        }
    }

    /// Input tokens of every kind plus output tokens.
    pub fn total_tokens(&self) -> u64 {
        self.usage.total()
    }
}

/// Live counters behind [`Stats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub cli_api_retries: AtomicU64,
    pub requests: AtomicU64,
    pub throttle_waits: AtomicU64,
    pub throttle_wait_nanos: AtomicU64,
    /// Items inside a throttle wait now.
    pub throttle_waiting: Gauge,
    /// Items inside a wait for a connection now.
    pub connection_waiting: Gauge,
    pub replayed: AtomicU64,
    /// Batches submitted (Message Batches API).
    pub batches: AtomicU64,
    pub backoff_pauses: AtomicU64,
    pub usage_limit_pauses: AtomicU64,
    /// The usage-limit pauses, as time.
    pub usage_limit_clock: Mutex<PauseClock>,
    pub first_result_nanos: AtomicU64,
    pub totals: Mutex<Totals>,
    pub latency: Mutex<Histogram>,
    /// Why the last retry was needed (see `Stats::last_retry_reason`).
    pub last_retry_reason: Mutex<Option<String>>,
}

#[derive(Default)]
pub(crate) struct Totals {
    pub usage: Usage,
    pub cost_usd: f64,
    pub cost_at_messages_price_usd: f64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let totals = self.totals.lock();
        let latency = self.latency.lock();
        let first = load(&self.first_result_nanos);
        Stats {
            started: load(&self.started),
            succeeded: load(&self.succeeded),
            failed: load(&self.failed),
            retried: load(&self.retried),
            cli_api_retries: load(&self.cli_api_retries),
            requests: load(&self.requests),
            throttle_waits: load(&self.throttle_waits),
            throttle_wait: Duration::from_nanos(load(&self.throttle_wait_nanos)),
            backoff_pauses: load(&self.backoff_pauses),
            usage_limit_pauses: load(&self.usage_limit_pauses),
            usage_limit_wait: self.usage_limit_clock.lock().held(Instant::now()),
            usage: totals.usage,
            cost_usd: totals.cost_usd,
            cost_usd_at_messages_price: totals.cost_at_messages_price_usd,
            batches: load(&self.batches),
            budget_exhausted: false,
            // Counted by the pool; `Session::stats` fills it in.
            processes_started: 0,
            processes_live: 0,
            processes_recycled: 0,
            time_to_first_result: (first > 0).then(|| Duration::from_nanos(first)),
            latency_p50: latency.quantile(0.50),
            latency_p90: latency.quantile(0.90),
            latency_p99: latency.quantile(0.99),
            latency_max: latency.max(),
            last_retry_reason: self.last_retry_reason.lock().clone(),
            waiting_on_throttle: self.throttle_waiting.read().0,
            waiting_for_connection: self.connection_waiting.read().0,
            replayed: load(&self.replayed),
        }
    }
}

/// Time held by pauses that follow or extend one another: the ones over, and the one in
/// force as far as it has run.
#[derive(Default)]
pub(crate) struct PauseClock {
    over: Duration,
    current: Option<(Instant, Instant)>,
}

impl PauseClock {
    /// Pause from `now` until `until`; extends the pause in force rather than counting its
    /// overlap twice.
    pub(crate) fn pause(&mut self, now: Instant, until: Instant) {
        match self.current {
            Some((since, end)) if end > now => self.current = Some((since, end.max(until))),
            Some((since, end)) => {
                self.over += end.saturating_duration_since(since);
                self.current = Some((now, until));
            }
            None => self.current = Some((now, until)),
        }
    }

    /// The time held up to `now`.
    pub(crate) fn held(&self, now: Instant) -> Duration {
        self.over
            + self.current.map_or(Duration::ZERO, |(since, end)| {
                end.min(now).saturating_duration_since(since)
            })
    }
}

/// Count `n` more on a counter (of a session's [`Counters`] or a pipeline's).
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A level with its high-water mark.
#[derive(Default)]
pub(crate) struct Gauge {
    now: AtomicU64,
    max: AtomicU64,
}

impl Gauge {
    pub(crate) fn add(&self, n: u64) {
        let now = self.now.fetch_add(n, Ordering::Relaxed) + n;
        self.max.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, n: u64) {
        self.now.fetch_sub(n, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> (u64, u64) {
        (
            self.now.load(Ordering::Relaxed),
            self.max.load(Ordering::Relaxed),
        )
    }
}

/// Sub-buckets per power of two: quantiles are within 1/8 (12.5%) of the truth.
const SUB_BUCKETS: usize = 8;
/// Powers of two covered, in microseconds: up to 2^36 µs, about 19 hours.
const OCTAVES: usize = 36;

/// A log-linear latency histogram in microseconds: fixed memory however long the run.
pub(crate) struct Histogram {
    counts: Box<[u64; SUB_BUCKETS * OCTAVES]>,
    total: u64,
    max_micros: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; SUB_BUCKETS * OCTAVES]),
            total: 0,
            max_micros: 0,
        }
    }
}

impl Histogram {
    pub(crate) fn record(&mut self, latency: Duration) {
        let micros = latency.as_micros().min(u64::MAX as u128) as u64;
        self.counts[Self::bucket(micros)] += 1;
        self.total += 1;
        self.max_micros = self.max_micros.max(micros);
    }

    fn bucket(micros: u64) -> usize {
        if micros < SUB_BUCKETS as u64 {
            return micros as usize;
        }
        let octave = 63 - micros.leading_zeros() as usize; // >= 3
        let shift = octave - 3; // keep 3 bits below the leading one
        let sub = ((micros >> shift) as usize) & (SUB_BUCKETS - 1);
        ((octave - 2) * SUB_BUCKETS + sub).min(SUB_BUCKETS * OCTAVES - 1)
    }

    /// The upper edge of a bucket, in microseconds.
    fn upper_edge(index: usize) -> u64 {
        if index < SUB_BUCKETS {
            return index as u64;
        }
        let octave = index / SUB_BUCKETS + 2;
        let sub = (index % SUB_BUCKETS) as u64;
        let shift = octave - 3;
        ((SUB_BUCKETS as u64 + sub + 1) << shift) - 1
    }

    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let edge = Self::upper_edge(index).min(self.max_micros);
                return Some(Duration::from_micros(edge));
            }
        }
        self.max()
    }

    pub(crate) fn max(&self) -> Option<Duration> {
        (self.total > 0).then(|| Duration::from_micros(self.max_micros))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_clock_counts_overlaps_once() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut clock = PauseClock::default();
        assert_eq!(clock.held(at(5)), Duration::ZERO);
        clock.pause(at(0), at(10));
        assert_eq!(clock.held(at(4)), Duration::from_secs(4));
        // A second item hits the same limit: the pause extends, not doubles.
        clock.pause(at(2), at(12));
        assert_eq!(clock.held(at(20)), Duration::from_secs(12));
        // A later pause adds its own time.
        clock.pause(at(30), at(33));
        assert_eq!(clock.held(at(40)), Duration::from_secs(15));
    }

    #[test]
    fn quantiles_are_within_an_eighth() {
        let mut h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let check = |q: f64, want_ms: f64| {
            let got = h.quantile(q).unwrap().as_secs_f64() * 1000.0;
            assert!(
                (got - want_ms).abs() <= want_ms / 8.0 + 0.01,
                "q{q}: got {got} want {want_ms}"
            );
        };
        check(0.5, 500.0);
        check(0.9, 900.0);
        check(0.99, 990.0);
        assert_eq!(h.max(), Some(Duration::from_millis(1000)));
    }

    #[test]
    fn empty_and_extreme_values() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(1_000_000));
        assert_eq!(h.quantile(0.0), Some(Duration::ZERO));
        assert!(h.quantile(1.0).unwrap() >= Duration::from_secs(60 * 60));
    }

    #[test]
    fn buckets_are_monotonic() {
        let mut last = 0;
        for micros in (0..5_000_000u64).step_by(997) {
            let b = Histogram::bucket(micros);
            assert!(b >= last);
            assert!(Histogram::upper_edge(b) >= micros, "{micros}");
            last = b;
        }
    }
}
