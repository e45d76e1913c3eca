//! What a turn must hold before it goes out, and the settling of what it really cost after:
//! one owner for budget reservation → cache gate → throttle permit → settle, the same for
//! every backend. The engine asks for a [`Ticket`], hands it the backend's events while the
//! turn runs, and ends it with the answer or the failure.
//!
//! - `gate`: warming the prompt cache before the others read it.
//! - `usage`: subscription usage windows: a warning once, a pause of every item on a limit.

mod gate;
mod usage;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

pub(crate) use gate::{CacheGate, CACHE_MIN_TOKENS};
pub(crate) use usage::UsageWindowsSeen;

use crate::backend::{ServerLimits, TurnEvent, TurnFailure};
pub(crate) use crate::budget::Reservation;

use crate::budget::Budget;
use crate::retry::{Cooldown, RetryPolicy};
use crate::stats::{self, Counters};
use crate::throttle::{estimate_tokens, Permit, Throttle};
use crate::{Error, Response, Usage};
use gate::{GatePass, Warming};

/// How many answered items the expected calls per item is learned from.
const RECENT_CALLS_WINDOW: usize = 32;
/// The most calls an item is charged up front.
const MAX_EXPECTED_CALLS: u64 = 8;

/// Calls in a row that could not connect before the API counts as unreachable.
const UNREACHABLE_AFTER: u32 = 3;

/// What admission is told of the session's settings.
pub(crate) struct AdmissionSettings {
    /// For the budget's estimate of an item (its list price).
    pub model: Option<String>,
    /// Output tokens charged to the throttle up front.
    pub output_token_allowance: u64,
    /// Tokens a request carries besides the prompt (the backend's).
    pub request_overhead_tokens: u64,
    /// Its ceilings bound the pause after throttled results that carry no delay.
    pub retry: RetryPolicy,
    /// The longest a used-up usage window is waited for.
    pub max_usage_limit_wait: Duration,
}

/// A session's admission: what its items share before and after a turn.
pub(crate) struct Admission {
    settings: AdmissionSettings,
    budget: Budget,
    throttle: Arc<Throttle>,
    /// Warming the prompt cache of the shared prefix (`None`: nothing to warm).
    cache_gate: Option<CacheGate>,
    /// The exponential pause after 429/529 results that carry no delay of the API's.
    cooldown: Cooldown,
    /// API calls the last answered items made (the throttle is charged from them).
    recent_calls: Mutex<VecDeque<u32>>,
    /// Calls in a row that could not connect to the API (reset by any success).
    unreachable_streak: AtomicU32,
    counters: Arc<Counters>,
    created: Instant,
    /// What was said about subscription usage windows, so each is said once.
    usage_windows: Mutex<UsageWindowsSeen>,
}

/// Why [`Admission::admit`] let a turn not go.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The budget: `ItemOverBudget` or `BudgetExceeded`.
    Budget(Error),
    /// `should_stop` said so while the turn waited.
    Stopped,
}

/// How a failed turn ended, once settled.
#[derive(Debug)]
pub(crate) enum Settled {
    /// Nothing reached the API.
    Unsent(Error),
    /// It may have reached the API.
    Sent(Error),
    /// A usage window is used up: every item is paused until it resets, then this one is
    /// asked again.
    Paused(Error),
}

impl Admission {
    pub(crate) fn new(
        settings: AdmissionSettings,
        budget: Budget,
        throttle: Arc<Throttle>,
        cache_gate: Option<CacheGate>,
        counters: Arc<Counters>,
    ) -> Admission {
        Admission {
            settings,
            budget,
            throttle,
            cache_gate,
            cooldown: Cooldown::default(),
            recent_calls: Mutex::new(VecDeque::new()),
            unreachable_streak: AtomicU32::new(0),
            counters,
            created: Instant::now(),
            usage_windows: Mutex::default(),
        }
    }

    /// Reserve the item's budget, pass the cache gate (when `gated`: a conversation's turn
    /// holds its connection, and waiting at the gate for an item that waits for a
    /// connection would wait forever), then take a throttle permit. Every wait ends when
    /// `should_stop()`.
    pub(crate) fn admit(
        &self,
        prompt: &str,
        gated: bool,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Ticket<'_>, Refused> {
        let prompt_tokens = estimate_tokens(prompt);
        let estimate_usd =
            crate::budget::prompt_cost_usd(self.settings.model.as_deref(), prompt_tokens);
        let reservation = self
            .budget
            .reserve_waiting(estimate_usd, should_stop)
            .map_err(|e| match e {
                Error::Cancelled => Refused::Stopped,
                e => Refused::Budget(e),
            })?;
        let estimate = prompt_tokens
            .saturating_add(self.settings.request_overhead_tokens)
            .saturating_add(self.settings.output_token_allowance);
        // A cold shared prefix is warmed by one item before the others ask (they wait here,
        // before the throttle, holding nothing but their budget reservation).
        let gate = self.cache_gate.as_ref().filter(|_| gated);
        let warming = match gate.map(|gate| (gate, gate.enter(should_stop))) {
            Some((_, None)) => return Err(Refused::Stopped),
            Some((gate, Some(GatePass::Warming(ticket)))) => Some(Warming::new(gate, ticket)),
            Some((_, Some(GatePass::Open))) | None => None,
        };
        // An item is charged the API calls items made lately (a re-ask is a second call);
        // what it really made is settled after.
        self.counters.throttle_waiting.add(1);
        let permit = self
            .throttle
            .acquire_calls(estimate, self.expected_calls(), should_stop);
        self.counters.throttle_waiting.sub(1);
        let permit = permit.map_err(|_| Refused::Stopped)?;
        if !permit.waited().is_zero() {
            stats::add(&self.counters.throttle_waits, 1);
            stats::add(
                &self.counters.throttle_wait_nanos,
                permit.waited().as_nanos() as u64,
            );
        }
        Ok(Ticket {
            admission: self,
            reservation,
            permit,
            _warming: warming,
            calls: 1,
            sent_at: Instant::now(),
        })
    }

    /// Reserve the budget for a request that goes out in a batch, at the batch price: its
    /// prompt and the output the session expects of an answer (`output_token_allowance`;
    /// the most it may write, `max_tokens`, would reserve several times what most answers
    /// cost, and a batch reserves all its items at once). Nothing else: a batch is not
    /// throttled per request (the Message Batches API has limits of its own) and the engine
    /// warms the prompt cache before it submits.
    pub(crate) fn reserve_batched(&self, prompt: &str) -> Result<Reservation<'_>, Error> {
        let (input_price, output_price) = crate::budget::list_price(self.model());
        let input = estimate_tokens(prompt).saturating_add(self.settings.request_overhead_tokens);
        let output = self.settings.output_token_allowance;
        let estimate = (input as f64 * input_price + output as f64 * output_price) / 1_000_000.0
            * crate::backend::batch::BATCH_PRICE_FACTOR;
        self.budget.reserve_bounded(estimate)
    }

    /// Whether a cold shared prefix is warmed by one request before the others go (the
    /// session's prompt is long enough to cache, and warming is on).
    pub(crate) fn warms_cache(&self) -> bool {
        self.cache_gate.is_some()
    }

    /// A batch's request went out: one request.
    pub(crate) fn count_batched_request(&self) {
        stats::add(&self.counters.requests, 1);
    }

    /// A batch request ended with what it `billed` (an answer's usage and cost at the batch
    /// price, or nothing): its reservation is settled with it, and the totals, the Messages
    /// API's price of the same usage beside them, learn it.
    pub(crate) fn settle_batched(
        &self,
        reservation: Option<Reservation<'_>>,
        billed: &crate::backend::Billed,
        answer: Option<&Response>,
    ) {
        if let Some(reservation) = reservation {
            reservation.settle(billed.cost_usd);
        }
        let at_messages_price = crate::budget::usage_cost_usd(self.model(), &billed.usage);
        self.record_cost_priced(billed.cost_usd, &billed.usage, at_messages_price);
        if let Some(response) = answer {
            self.counters.latency.lock().record(response.duration);
            self.note_first_result();
        }
    }

    /// Make every wait here ask its `should_stop` again (a run's stop changed).
    pub(crate) fn wake(&self) {
        self.throttle.wake_all();
        if let Some(gate) = &self.cache_gate {
            gate.wake();
        }
    }

    /// The model items are priced by, when known.
    pub(crate) fn model(&self) -> Option<&str> {
        self.settings.model.as_deref()
    }

    /// The shared throttle.
    pub(crate) fn throttle(&self) -> &Arc<Throttle> {
        &self.throttle
    }

    /// The spending cap.
    pub(crate) fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Remember why items are being retried, for `Stats` and the progress bar.
    pub(crate) fn note_retry_reason(&self, error: &Error) {
        let reason = crate::error::shorten(&error.to_string(), 120);
        *self.counters.last_retry_reason.lock() = Some(reason);
    }

    /// The API calls an item is expected to make: the most any of the last items made (the
    /// CLI re-asks the model for some answers). Over-charges are refunded at settle.
    fn expected_calls(&self) -> u64 {
        self.recent_calls
            .lock()
            .iter()
            .copied()
            .max()
            .map_or(1, u64::from)
            .clamp(1, MAX_EXPECTED_CALLS)
    }

    /// Remember how many API calls an answered item made.
    fn note_calls(&self, calls: u64) {
        let mut recent = self.recent_calls.lock();
        if recent.len() == RECENT_CALLS_WINDOW {
            recent.pop_front();
        }
        recent.push_back(u32::try_from(calls).unwrap_or(u32::MAX));
    }

    /// Add what a call cost to the totals.
    fn record_cost(&self, cost: f64, usage: &Usage) {
        self.record_cost_priced(cost, usage, cost);
    }

    /// Add a call's cost, and what the same call costs on the Messages API.
    fn record_cost_priced(&self, cost: f64, usage: &Usage, at_messages_price: f64) {
        if cost > 0.0 || usage.total() > 0 {
            let mut totals = self.counters.totals.lock();
            totals.usage.add(usage);
            totals.cost_usd += cost;
            totals.cost_at_messages_price_usd += at_messages_price;
        }
    }

    fn record_success(&self, response: &Response) {
        self.record_cost(response.cost_usd, &response.usage);
        self.counters.latency.lock().record(response.duration);
        self.note_first_result();
    }

    fn note_first_result(&self) {
        let since_start = self.created.elapsed().as_nanos().max(1) as u64;
        let _ = self.counters.first_result_nanos.compare_exchange(
            0,
            since_start,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Count calls in a row, across the session, that could not connect to the API; after
    /// a few, every item would fail the same way, so the error becomes a fatal one that
    /// says what to check (and stops the run) instead of minutes of retries.
    fn note_unreachable(&self, error: Error) -> Error {
        let Error::Api { message, .. } = &error else {
            return error;
        };
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

    /// The backend is retrying on its own: each retry is one more API request, and a 429
    /// or 529 tells every worker on the throttle to hold off for as long as it waits.
    fn on_backend_retry(&self, status: Option<u16>, delay: Duration) {
        stats::add(&self.counters.cli_api_retries, 1);
        self.throttle.note_extra_requests(1);
        if matches!(status, Some(429 | 529)) {
            // The CLI's delay is max(retry-after, its own backoff): the API's word on when.
            self.back_off(Instant::now(), delay);
        }
    }

    /// The API's rate-limit headers: the throttle comes down to the room the API says is
    /// left, and a limit with nothing left pauses every request until it has room for one.
    fn take_servers_word(&self, limits: &ServerLimits) {
        let tokens = limits.tokens.or(limits.input_tokens);
        self.throttle.at_most(
            limits.requests.map(|l| l.remaining),
            tokens.map(|l| l.remaining),
        );
        let now = Instant::now();
        let used_up_for = [
            limits.requests,
            limits.tokens,
            limits.input_tokens,
            limits.output_tokens,
        ]
        .into_iter()
        .flatten()
        .filter(|l| l.remaining == 0)
        .filter_map(|l| {
            // The reset is when the limit is whole again; it refills continuously, so one
            // more request's worth comes after that time over the limit.
            let whole = l.resets_at?.duration_since(SystemTime::now()).ok()?;
            Some(whole / u32::try_from(l.limit.unwrap_or(1).max(1)).unwrap_or(u32::MAX))
        })
        // A clock far off must not stop the run: at most a limit's whole window.
        .map(|wait| wait.min(Duration::from_secs(60)))
        .max();
        if let Some(wait) = used_up_for {
            self.back_off(now, wait);
        }
    }

    /// Pause new requests on the shared throttle (every session using it) for `wait` from
    /// `now`; a pause already in force that ends later is kept.
    fn back_off(&self, now: Instant, wait: Duration) {
        if wait.is_zero() {
            return;
        }
        let until = crate::clock::saturating_add(now, wait);
        if self.throttle.paused_until().is_none_or(|p| p < until) {
            stats::add(&self.counters.backoff_pauses, 1);
            log::info!("the API is throttling: pausing new requests for {wait:?}");
            self.throttle.pause_until(until);
        }
    }
}

/// What one turn holds from admission: its budget reservation, its throttle permit and,
/// for the item warming the prompt cache, its place at the gate. Dropped without being
/// ended (a panic on the way), each gives itself back as a guard.
pub(crate) struct Ticket<'a> {
    admission: &'a Admission,
    reservation: Reservation<'a>,
    permit: Permit,
    /// Held until the turn ends: if no answer began, the next item warms.
    _warming: Option<Warming<'a>>,
    /// API calls the turn made so far.
    calls: u64,
    sent_at: Instant,
}

impl Ticket<'_> {
    /// Nothing was sent: the permit is given back whole (dropped, it would keep the
    /// estimate charged, as for a call that may have gone out), and the reservation too.
    pub(crate) fn give_back(self) {
        self.permit.give_back();
    }

    /// The turn goes out now: one request.
    pub(crate) fn send(&mut self) {
        stats::add(&self.admission.counters.requests, 1);
        self.sent_at = Instant::now();
    }

    /// What the backend reported while the turn ran.
    pub(crate) fn on_event(&mut self, event: TurnEvent) {
        let admission = self.admission;
        match event {
            TurnEvent::Retry { status, delay } => admission.on_backend_retry(status, delay),
            TurnEvent::UsageWindow(info) => admission.note_window(&info),
            // One more request the API counts; the throttle is charged for it when the
            // permit is settled with the calls really made.
            TurnEvent::ExtraCall => {
                self.calls += 1;
                stats::add(&admission.counters.requests, 1);
            }
            TurnEvent::Began => {
                if let Some(gate) = &admission.cache_gate {
                    gate.began();
                }
            }
            TurnEvent::Limits(limits) => admission.take_servers_word(&limits),
            // The API's own word on when to send again: every worker holds off that long.
            TurnEvent::RetryAfter(wait) => admission.back_off(Instant::now(), wait),
        }
    }

    /// The turn answered: settle everything with what it really cost.
    pub(crate) fn answered(self, response: &Response) {
        let admission = self.admission;
        // An answer is in: the prefix is cached, even if no call said when it began.
        if let Some(gate) = &admission.cache_gate {
            gate.began();
        }
        self.permit
            .settle(response.usage.rate_limited_tokens(), self.calls);
        admission.note_calls(self.calls);
        self.reservation.settle(response.cost_usd);
        admission.cooldown.succeeded(self.sent_at);
        admission.unreachable_streak.store(0, Ordering::SeqCst);
        admission.record_success(response);
    }

    /// The turn did not answer: settle what it billed, and learn from why (a throttled
    /// result pauses the throttle, a used-up usage window pauses every item when
    /// `may_pause` and the reset is near, calls that cannot connect add up to
    /// `ApiUnreachable`).
    pub(crate) fn failed(self, failure: TurnFailure, may_pause: bool) -> Settled {
        let admission = self.admission;
        let TurnFailure {
            error,
            billed,
            sent,
            unreachable,
        } = failure;
        if !sent {
            admission.counters.requests.fetch_sub(1, Ordering::Relaxed);
            self.permit.give_back();
            // A call that could not connect went nowhere, yet a few in a row say the API
            // cannot be reached.
            if unreachable {
                return Settled::Unsent(admission.note_unreachable(error));
            }
            return Settled::Unsent(error);
        }
        self.permit
            .settle(billed.usage.rate_limited_tokens(), self.calls);
        self.reservation.settle(billed.cost_usd);
        admission.record_cost(billed.cost_usd, &billed.usage);
        if let Error::UsageLimitReached {
            window, resets_at, ..
        } = &error
        {
            if may_pause && admission.wait_for_reset(window, *resets_at) {
                return Settled::Paused(error);
            }
            return Settled::Sent(error);
        }
        if matches!(error, Error::SpendLimitReached { .. }) {
            return Settled::Sent(error);
        }
        if matches!(error.api_status(), Some(429 | 529)) {
            let now = Instant::now();
            let wait = admission
                .cooldown
                .throttled(&admission.settings.retry, self.sent_at, now);
            admission.back_off(now, wait);
        }
        if unreachable {
            return Settled::Sent(admission.note_unreachable(error));
        }
        Settled::Sent(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Billed;

    /// Admission on a throttle of one request a minute, so whether a request was given
    /// back shows at once: the next ticket is granted without a wait, or not at all.
    fn one_request_a_minute() -> Admission {
        Admission::new(
            AdmissionSettings {
                model: Some("sonnet".into()),
                output_token_allowance: 0,
                request_overhead_tokens: 300,
                retry: RetryPolicy::default(),
                max_usage_limit_wait: Duration::ZERO,
            },
            Budget::new(Some(10.0), None),
            Arc::new(Throttle::new(Some(1), None).unwrap()),
            None,
            Arc::new(Counters::default()),
        )
    }

    const PROMPT: &str = "Summarise this support ticket in one sentence: the customer says the \
        export to CSV drops every row after the ten-thousandth, and that the drop began with \
        last week's release; they attached two files that show it.";

    /// Whether a ticket is granted now, without waiting for the throttle to refill.
    fn granted_at_once(admission: &Admission) -> bool {
        match admission.admit(PROMPT, true, &|| true) {
            Ok(ticket) => {
                ticket.give_back();
                true
            }
            Err(Refused::Stopped) => false,
            Err(other) => panic!("refused for another reason: {other:?}"),
        }
    }

    fn failure(error: Error, cost_usd: f64, sent: bool, unreachable: bool) -> TurnFailure {
        TurnFailure {
            error,
            billed: Billed {
                cost_usd,
                usage: Usage {
                    input_tokens: 120,
                    output_tokens: 30,
                    ..Usage::default()
                },
            },
            sent,
            unreachable,
        }
    }

    fn server_error() -> Error {
        Error::Api {
            status: Some(500),
            message: "Internal server error".into(),
        }
    }

    fn requests(admission: &Admission) -> u64 {
        admission.counters.requests.load(Ordering::Relaxed)
    }

    #[test]
    fn a_failure_that_went_out_is_charged_what_it_billed() {
        let admission = one_request_a_minute();
        let mut ticket = admission.admit(PROMPT, true, &|| false).unwrap();
        ticket.send();
        let settled = ticket.failed(failure(server_error(), 0.25, true, false), true);
        assert!(
            matches!(settled, Settled::Sent(Error::Api { .. })),
            "{settled:?}"
        );
        assert_eq!(admission.budget.spent(), 0.25);
        assert_eq!(admission.counters.totals.lock().cost_usd, 0.25);
        assert_eq!(admission.counters.totals.lock().usage.total(), 150);
        assert_eq!(requests(&admission), 1);
        // The request is spent: the minute's one request is gone.
        assert!(!granted_at_once(&admission));
    }

    #[test]
    fn a_failure_that_never_went_out_gives_everything_back() {
        let admission = one_request_a_minute();
        let mut ticket = admission.admit(PROMPT, true, &|| false).unwrap();
        ticket.send();
        let settled = ticket.failed(failure(server_error(), 0.0, false, false), true);
        assert!(matches!(settled, Settled::Unsent(_)), "{settled:?}");
        assert_eq!(admission.budget.spent(), 0.0);
        assert_eq!(requests(&admission), 0);
        assert!(granted_at_once(&admission), "the request was given back");
    }

    #[test]
    fn calls_that_cannot_connect_add_up_to_unreachable_and_an_answer_resets_them() {
        let admission = Admission {
            throttle: Arc::new(Throttle::unlimited()),
            ..one_request_a_minute()
        };
        let cannot_connect = || Error::Api {
            status: None,
            message: "API Error: Unable to connect to API (ConnectionRefused)".into(),
        };
        let fail = |unreachable| {
            let mut ticket = admission.admit(PROMPT, true, &|| false).unwrap();
            ticket.send();
            match ticket.failed(failure(cannot_connect(), 0.0, true, unreachable), true) {
                Settled::Sent(error) => error,
                other => panic!("{other:?}"),
            }
        };
        assert!(matches!(fail(true), Error::Api { .. }));
        // A failure the backend does not call unreachable does not count.
        assert!(matches!(fail(false), Error::Api { .. }));
        assert!(matches!(fail(true), Error::Api { .. }));
        let ticket = admission.admit(PROMPT, true, &|| false).unwrap();
        ticket.answered(&Response::default());
        assert!(matches!(fail(true), Error::Api { .. }));
        assert!(matches!(fail(true), Error::Api { .. }));
        assert!(matches!(
            fail(true),
            Error::ApiUnreachable { failures: 3, .. }
        ));
    }

    #[test]
    fn a_throttled_result_pauses_every_item_and_an_event_counts_a_request() {
        let admission = Admission {
            throttle: Arc::new(Throttle::unlimited()),
            ..one_request_a_minute()
        };
        let mut ticket = admission.admit(PROMPT, true, &|| false).unwrap();
        ticket.send();
        ticket.on_event(TurnEvent::ExtraCall);
        let overloaded = Error::Api {
            status: Some(529),
            message: "Overloaded".into(),
        };
        ticket.failed(failure(overloaded, 0.0, true, false), true);
        assert_eq!(requests(&admission), 2);
        assert!(admission.throttle.paused_until().is_some());
        assert_eq!(admission.counters.backoff_pauses.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn cache_reads_do_not_count_against_tokens_per_minute() {
        // 2,000 tokens a minute: an answer that read 100,000 tokens from the cache used 150.
        let admission = Admission {
            throttle: Arc::new(Throttle::new(None, Some(2_000)).unwrap()),
            ..one_request_a_minute()
        };
        let mut ticket = admission.admit(PROMPT, true, &|| false).unwrap();
        ticket.send();
        let response = Response {
            usage: Usage {
                input_tokens: 100,
                output_tokens: 50,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 100_000,
            },
            ..Response::default()
        };
        ticket.answered(&response);
        assert!(granted_at_once(&admission), "the cache read was charged");
    }

    #[test]
    fn the_apis_word_on_its_limits_pauses_a_limit_with_nothing_left() {
        let admission = Admission {
            throttle: Arc::new(Throttle::unlimited()),
            ..one_request_a_minute()
        };
        let mut ticket = admission.admit(PROMPT, true, &|| false).unwrap();
        ticket.send();
        let left = |remaining| crate::backend::LimitLeft {
            limit: Some(60),
            remaining,
            resets_at: Some(SystemTime::now() + Duration::from_secs(30)),
        };
        ticket.on_event(TurnEvent::Limits(ServerLimits {
            requests: Some(left(5)),
            ..ServerLimits::default()
        }));
        assert!(admission.throttle.paused_until().is_none(), "room is left");
        ticket.on_event(TurnEvent::Limits(ServerLimits {
            requests: Some(left(0)),
            ..ServerLimits::default()
        }));
        // Nothing left: a pause until one request's worth is back (30 s / 60), not the reset.
        let paused = admission.throttle.paused_until().expect("paused");
        let wait = paused.saturating_duration_since(Instant::now());
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        ticket.give_back();
    }
}
