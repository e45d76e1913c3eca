//! The session as an item's [`World`]: one attempt is a budget reservation, a throttle permit
//! and a process, each a guard that gives itself back on drop (an error or a panic on the
//! way included), then the turn, then the settlement of all three with what it really cost.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::life::{AttemptError, Event, World};
use super::progress::RunProgress;
use super::stop::Stop;
use super::usage;
use crate::backend::cli::pool::Lease;
use crate::backend::cli::process::{ApiRetry, CliProcess, TurnEvent};
use crate::journal::format::Key;
use crate::session::{AnswerSettings, CacheGate, GatePass, Inner};
use crate::stats;
use crate::throttle::estimate_tokens;
use crate::{Error, Journal, Response, Usage};

/// Request overhead on top of the prompt with the default flags (system prompt off, no tools):
/// about 1.2 KB, so roughly 300 tokens.
pub(crate) const REQUEST_OVERHEAD_TOKENS: u64 = 300;

/// How many answered items the expected calls per item is learned from.
const RECENT_CALLS_WINDOW: usize = 32;
/// The most calls an item is charged up front.
const MAX_EXPECTED_CALLS: u64 = 8;

/// Calls in a row that could not connect before the API counts as unreachable.
const UNREACHABLE_AFTER: u32 = 3;

/// The item warming the prompt cache; if it ends without an answer, the next one warms.
struct Warming<'a>(&'a CacheGate, u64);

impl Drop for Warming<'_> {
    fn drop(&mut self) {
        self.0.gave_up(self.1);
    }
}

/// Where an attempt's process comes from.
pub(crate) enum Processes<'a> {
    /// The session's pool: a fresh context per attempt.
    Pool,
    /// A conversation's own process (taken from the pool on the first turn and kept).
    Held(&'a RefCell<Option<CliProcess>>),
}

/// One run's items on one session.
pub(crate) struct SessionWorld<'a> {
    pub inner: &'a Inner,
    pub stop: &'a Stop,
    pub progress: Option<&'a RunProgress>,
    pub processes: Processes<'a>,
    /// Whether failed tries are tried again (a conversation's are not: a new process would
    /// not have its context).
    pub retries: bool,
    /// Where answers are kept and replayed from, with what besides the prompt decides them
    /// (`Err`: unknown, and the journal refuses the item).
    pub journal: Option<(&'a Journal, &'a AnswerSettings)>,
}

/// A process taken for one attempt; goes back where it came from on drop.
enum Taken<'a> {
    Lease(Lease<'a>),
    Held {
        slot: &'a RefCell<Option<CliProcess>>,
        process: Option<CliProcess>,
    },
}

impl Taken<'_> {
    fn process(&mut self) -> &mut CliProcess {
        match self {
            Taken::Lease(lease) => lease.process(),
            Taken::Held { process, .. } => process.as_mut().expect("held until dropped"),
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Taken::Held { slot, process } = self {
            *slot.borrow_mut() = process.take();
        }
    }
}

impl SessionWorld<'_> {
    fn take_process(&self) -> Result<Taken<'_>, Error> {
        match self.processes {
            Processes::Pool => self.inner.pool.checkout().map(Taken::Lease),
            Processes::Held(slot) => {
                let held = slot.borrow_mut().take();
                let process = match held {
                    Some(process) => process,
                    None => self.inner.pool.checkout()?.detach(),
                };
                Ok(Taken::Held {
                    slot,
                    process: Some(process),
                })
            }
        }
    }

    /// Why an item that already holds its budget reservation must not be sent: a cancel, a
    /// fatal error or a close, but not a spent budget (the reservation was made before it
    /// ran out).
    fn stop_holding_reservation(&self) -> Option<Error> {
        self.stop_reason()
            .filter(|reason| !matches!(reason, Error::BudgetExceeded { .. }))
    }

    /// Whether a wait of an item that holds its reservation must end: as
    /// [`stop_holding_reservation`](Self::stop_holding_reservation), so a budget spent by
    /// other items does not stop one it already has room for.
    fn should_stop(&self) -> bool {
        (self.stop.is_set() || self.inner.is_closed()) && self.stop_holding_reservation().is_some()
    }
}

impl World for SessionWorld<'_> {
    fn stop_reason(&self) -> Option<Error> {
        if self.inner.is_closed() {
            return Some(Error::Closed);
        }
        self.stop.reason()
    }

    fn attempt(&self, prompt: &str) -> Result<Response, AttemptError> {
        let inner = self.inner;
        let prompt_tokens = estimate_tokens(prompt);
        let reservation = inner
            .budget
            .reserve(item_estimate_usd(inner, prompt_tokens))
            .map_err(AttemptError::NotStarted)?;
        let estimate = prompt_tokens
            .saturating_add(REQUEST_OVERHEAD_TOKENS)
            .saturating_add(inner.config.output_token_allowance);
        // A cold shared prefix is warmed by one item before the others ask (they wait here,
        // before the throttle, holding nothing but their budget reservation).
        // Not a conversation's turn: it holds a process, and waiting at the gate for an item
        // that waits for a process would wait forever.
        let gate = match self.processes {
            Processes::Pool => inner.cache_gate.as_ref(),
            Processes::Held(_) => None,
        };
        let _warming = match gate {
            Some(gate) => match gate.enter(&|| self.should_stop()) {
                None => {
                    return Err(AttemptError::NotStarted(
                        self.stop_holding_reservation().unwrap_or(Error::Cancelled),
                    ))
                }
                Some(GatePass::Warming(ticket)) => Some(Warming(gate, ticket)),
                Some(GatePass::Open) => None,
            },
            None => None,
        };
        // An item is charged the API calls items made lately (a re-ask is a second call);
        // what it really made is settled after.
        inner.counters.throttle_waiting.add(1);
        let permit = inner
            .throttle
            .acquire_calls(estimate, expected_calls(inner), &|| self.should_stop());
        inner.counters.throttle_waiting.sub(1);
        let permit = permit.map_err(|_| {
            AttemptError::NotStarted(self.stop_holding_reservation().unwrap_or(Error::Cancelled))
        })?;
        if !permit.waited().is_zero() {
            stats::add(&inner.counters.throttle_waits, 1);
            stats::add(
                &inner.counters.throttle_wait_nanos,
                permit.waited().as_nanos() as u64,
            );
        }
        // Nothing is sent on these two paths: the permit is given back whole (dropped, it
        // would keep the estimate charged, as for a call that may have gone out).
        let mut taken = match self.take_process() {
            Ok(taken) => taken,
            Err(error) => {
                permit.give_back();
                return Err(AttemptError::Failed {
                    error,
                    called: false,
                });
            }
        };
        // Waiting for a process can take long; a stop that came meanwhile still holds.
        if let Some(reason) = self.stop_holding_reservation() {
            drop(taken);
            permit.give_back();
            return Err(AttemptError::NotStarted(reason));
        }
        stats::add(&inner.counters.requests, 1);
        // A hard stop of the run (a pipeline's bounded stop) ends this call by its process.
        let kill_switch = taken.process().kill_switch();
        let call = self
            .stop
            .register_call(Arc::new(move || kill_switch.kill()));
        let sent_at = Instant::now();
        let (outcome, calls) = run_turn(inner, taken.process(), prompt);
        let failed_cost = taken.process().take_failed_turn_cost();
        // A process that wrote nothing never started (the CLI writes nothing before it
        // has read a prompt), so it sent nothing.
        let never_started = taken.process().said_nothing();
        drop(call);
        drop(taken);
        // A call ended by a stop fails as stopped, and one ended by the session's close as
        // closed, not as a crash ("killed by signal 9 from outside").
        let outcome = match outcome {
            Err(_) if self.stop.ended_calls() => Err(Error::Cancelled),
            Err(_) if inner.is_closed() => Err(Error::Closed),
            other => other,
        };
        match outcome {
            Ok(response) => {
                // An answer is in: the prefix is cached, even if no call said when it began.
                if let Some(gate) = &inner.cache_gate {
                    gate.began();
                }
                permit.settle(response.usage.total(), calls);
                note_calls(inner, calls);
                reservation.settle(response.cost_usd);
                inner.cooldown.succeeded(sent_at);
                inner.unreachable_streak.store(0, Ordering::SeqCst);
                record_success(inner, &response);
                Ok(response)
            }
            Err(error) if never_started => {
                inner.counters.requests.fetch_sub(1, Ordering::Relaxed);
                permit.give_back();
                Err(AttemptError::Failed {
                    error,
                    called: false,
                })
            }
            Err(error) => {
                // An error result is billed as the CLI reports it (max turns, a missing
                // structured answer); a crash or timeout reports nothing, so it costs 0 here.
                let (cost, usage) = failed_cost.unwrap_or_default();
                permit.settle(usage.total(), calls);
                reservation.settle(cost);
                record_cost(inner, cost, &usage);
                if let Error::UsageLimitReached {
                    window, resets_at, ..
                } = &error
                {
                    // A conversation's process dies with the refusal (the CLI exits), and
                    // its context with it: its turn fails rather than wait.
                    if self.retries && usage::wait_for_reset(inner, window, *resets_at) {
                        return Err(AttemptError::Paused(error));
                    }
                    return Err(AttemptError::Failed {
                        error,
                        called: true,
                    });
                }
                if matches!(error, Error::SpendLimitReached { .. }) {
                    return Err(AttemptError::Failed {
                        error,
                        called: true,
                    });
                }
                if matches!(error.api_status(), Some(429 | 529)) {
                    let now = Instant::now();
                    let wait = inner.cooldown.throttled(&inner.config.retry, sent_at, now);
                    back_off(inner, now, wait);
                }
                Err(AttemptError::Failed {
                    error: note_unreachable(inner, error),
                    called: true,
                })
            }
        }
    }

    fn retry_after(&self, error: &Error, tries: u32) -> Option<Duration> {
        let policy = &self.inner.config.retry;
        (self.retries && policy.should_retry(error, tries)).then(|| policy.backoff(tries))
    }

    fn wait(&self, wait: Duration) -> bool {
        let deadline = crate::clock::saturating_add(Instant::now(), wait);
        self.stop.wait_until(deadline, &|| self.inner.is_closed())
    }

    fn fail_fatally(&self, error: &Error) {
        self.stop.fail_fatally(error);
    }

    fn note(&self, event: Event, error: Option<&Error>) {
        let counters = &self.inner.counters;
        match event {
            Event::Started => stats::add(&counters.started, 1),
            Event::Finished { succeeded } => {
                let counter = if succeeded {
                    &counters.succeeded
                } else {
                    &counters.failed
                };
                stats::add(counter, 1);
                if let Some(progress) = self.progress {
                    progress.item_done(succeeded);
                }
            }
            Event::WillRetry => {
                if let Some(error) = error {
                    note_retry_reason(self.inner, error);
                }
            }
            Event::Retried => stats::add(&counters.retried, 1),
            Event::Replayed => {
                stats::add(&counters.replayed, 1);
                if let Some(progress) = self.progress {
                    progress.item_replayed();
                }
            }
        }
    }

    fn replay(&self, prompt: &str) -> Result<Option<Response>, Error> {
        let Some((journal, settings)) = self.journal else {
            return Ok(None);
        };
        match settings {
            Ok(settings) => Ok(journal.replay(Key::of(settings, prompt))),
            Err(why) => Err(Error::Journal {
                path: journal.path().to_path_buf(),
                message: why.clone(),
            }),
        }
    }

    fn record(&self, prompt: &str, outcome: Result<&Response, &Error>) {
        if let Some((journal, Ok(settings))) = self.journal {
            journal.record(Key::of(settings, prompt), outcome);
        }
    }
}

/// The API calls an item is expected to make: the most any of the last items made (the CLI
/// re-asks the model for some answers). Over-charges are refunded at settle.
fn expected_calls(inner: &Inner) -> u64 {
    inner
        .recent_calls
        .lock()
        .iter()
        .copied()
        .max()
        .map_or(1, u64::from)
        .clamp(1, MAX_EXPECTED_CALLS)
}

/// Remember how many API calls an answered item made.
fn note_calls(inner: &Inner, calls: u64) {
    let mut recent = inner.recent_calls.lock();
    if recent.len() == RECENT_CALLS_WINDOW {
        recent.pop_front();
    }
    recent.push_back(u32::try_from(calls).unwrap_or(u32::MAX));
}

/// What an item's prompt of `input_tokens` will cost at least (see `budget`).
fn item_estimate_usd(inner: &Inner, input_tokens: u64) -> f64 {
    crate::budget::prompt_cost_usd(inner.config.spec.model.as_deref(), input_tokens)
}

/// Remember why items are being retried, for `Stats` and the progress bar.
fn note_retry_reason(inner: &Inner, error: &Error) {
    let reason = crate::error::shorten(&error.to_string(), 120);
    *inner.counters.last_retry_reason.lock() = Some(reason);
}

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

/// Count calls in a row, across the session, that could not connect to the API; after a
/// few, every item would fail the same way, so the error becomes a fatal one that says what
/// to check (and stops the run) instead of minutes of retries.
fn note_unreachable(inner: &Inner, error: Error) -> Error {
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
    let failures = inner.unreachable_streak.fetch_add(1, Ordering::SeqCst) + 1;
    note_retry_reason(inner, &error);
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
fn record_cost(inner: &Inner, cost: f64, usage: &Usage) {
    if cost > 0.0 || usage.total() > 0 {
        let mut totals = inner.counters.totals.lock();
        totals.usage.add(usage);
        totals.cost_usd += cost;
    }
}

fn record_success(inner: &Inner, response: &Response) {
    let mut totals = inner.counters.totals.lock();
    totals.usage.add(&response.usage);
    totals.cost_usd += response.cost_usd;
    drop(totals);
    inner.counters.latency.lock().record(response.duration);
    let since_start = inner.created.elapsed().as_nanos().max(1) as u64;
    let _ = inner.counters.first_result_nanos.compare_exchange(
        0,
        since_start,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
}

/// Run one turn on `process` with the session's settings, reporting what the CLI did on the
/// way; returns the outcome and the API calls the turn made.
fn run_turn(
    inner: &Inner,
    process: &mut CliProcess,
    prompt: &str,
) -> (Result<Response, Error>, u64) {
    let mut calls = 1u64;
    let mut on_event = |event: TurnEvent| match event {
        TurnEvent::Retry(retry) => on_cli_retry(inner, retry),
        TurnEvent::UsageWindow(info) => usage::note_window(inner, &info),
        // One more request the API counts; the throttle is charged for it when the item's
        // permit is settled with the calls really made.
        TurnEvent::ExtraCall => {
            calls += 1;
            stats::add(&inner.counters.requests, 1);
        }
        TurnEvent::Began => {
            if let Some(gate) = &inner.cache_gate {
                gate.began();
            }
        }
    };
    let outcome = process.run_turn(
        prompt,
        inner.config.timeout,
        inner.config.spec.json_schema.is_some(),
        &mut on_event,
    );
    (outcome, calls)
}

/// The CLI is retrying on its own: each retry is one more API request, and a 429 or 529 tells
/// every worker on the throttle to hold off for as long as the CLI waits.
fn on_cli_retry(inner: &Inner, retry: ApiRetry) {
    stats::add(&inner.counters.cli_api_retries, 1);
    inner.throttle.note_extra_requests(1);
    if matches!(retry.status, Some(429 | 529)) {
        // The CLI's delay is max(retry-after, its own backoff): the API's word on when.
        back_off(inner, Instant::now(), retry.delay);
    }
}

/// Pause new requests on the shared throttle (every session using it) for `wait` from `now`;
/// a pause already in force that ends later is kept.
fn back_off(inner: &Inner, now: Instant, wait: Duration) {
    if wait.is_zero() {
        return;
    }
    let until = crate::clock::saturating_add(now, wait);
    if inner.throttle.paused_until().is_none_or(|p| p < until) {
        stats::add(&inner.counters.backoff_pauses, 1);
        log::info!("the API is throttling: pausing new requests for {wait:?}");
        inner.throttle.pause_until(until);
    }
}
