//! The session's spending cap: reserve an estimate before an item, settle the real cost after.
//!
//! How far a run can overshoot: every item in flight reserved an estimate (the largest cost
//! seen so far, or the configured first estimate), and the cap is checked against spent plus
//! reserved. When a cost larger than the estimate is seen, the items still in flight are
//! valued at it too, since they probably cost as much. An item can still cost more than the
//! estimate it was admitted on, so the overshoot is at most the sum, over the items in flight,
//! of (real cost − that estimate): at most `concurrency × (largest item cost − estimate)`.
//! With uniform items and a known cost it is zero; a first estimate below the real cost lets
//! the first wave of `concurrency` items overshoot.
//!
//! Once an item is refused the budget stays spent, for every later run on the session, until
//! the cap is changed: a later item that happens to fit (a cheaper estimate, a reservation
//! released by a failed call) must not slip through after the session said it was done.
//!
//! Except when the item itself is the problem: an item whose own estimate (its prompt's size)
//! is larger than the whole budget, or several times the largest item seen, and does not fit
//! while an ordinary item's would, is refused alone
//! ([`Error::ItemOverBudget`]); nothing was spent, so the budget is not marked spent and the
//! other items go on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::Error;

/// What is reserved when no item has finished yet.
pub(crate) const DEFAULT_FIRST_ESTIMATE_USD: f64 = 0.01;

pub(crate) struct Budget {
    state: Mutex<State>,
    /// One cap shared with other programs (`SharedBudget`), checked after this session's own.
    shared: Option<SharedBudget>,
    /// The shared cap could not be reached at the last try (said once, until it answers).
    shared_down: std::sync::atomic::AtomicBool,
}

/// A spending cap held outside this process, for every program on it (src/scale/).
pub(crate) trait SharedSpend: Send + Sync + std::fmt::Debug {
    /// Reserves `amount` USD if spent plus reserved stays within the cap: `Ok(Ok(id))`;
    /// `Ok(Err(refusal))` when it may not; `Err(reason)` when the store cannot be reached.
    fn reserve(&self, amount: f64) -> Result<Result<u64, Refusal>, String>;
    /// Ends reservation `id`: `actual` USD was spent (kept and sent again if unreachable).
    fn settle(&self, id: u64, actual: f64);
    /// The cap, USD.
    fn limit(&self) -> f64;
    /// What all programs have spent so far (settled), if the store answers.
    fn spent(&self) -> Result<f64, String>;
    /// Where the store is, for messages (no password).
    fn address(&self) -> String;
}

/// Why a shared cap refused a reservation.
// Only a store behind a feature (Redis) makes one.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Spent plus reserved would pass the cap: what is spent and reserved in all, USD.
    OverCap(f64),
    /// The store lost the cap's state after this program had seen it: what was spent is
    /// unknown.
    StateLost {
        /// The cap's name.
        name: String,
    },
}

/// One spending cap for every program that names it (feature `redis`:
/// [`SharedBudget::redis`]), given to a session with
/// [`SessionBuilder::shared_budget`](crate::SessionBuilder::shared_budget).
///
/// Each item reserves its estimate from the shared cap before it goes out and settles the
/// real cost after, as with [`max_budget_usd`](crate::SessionBuilder::max_budget_usd),
/// which still applies to the session alone. Clone it to share it between sessions.
#[derive(Debug, Clone)]
pub struct SharedBudget {
    pub(crate) store: Arc<dyn SharedSpend>,
}

impl SharedBudget {
    /// The cap, USD.
    pub fn limit_usd(&self) -> f64 {
        self.store.limit()
    }

    /// What every program on the cap has spent so far (settled items), USD.
    ///
    /// # Errors
    ///
    /// [`Error::SharedStore`] if the store cannot be reached.
    pub fn spent_usd(&self) -> Result<f64, Error> {
        self.store.spent().map_err(|message| Error::SharedStore {
            address: self.store.address(),
            message,
        })
    }
}

struct State {
    limit: Option<f64>,
    spent: f64,
    /// The sum of the in-flight reservations, as made.
    reserved: f64,
    /// How many reservations are in flight.
    in_flight: u32,
    largest_seen: f64,
    first_estimate: f64,
    /// Once refused, every later item is refused too, until the cap is raised.
    exhausted: bool,
}

/// A reservation taken before an item runs: settle it with the real cost, or drop it to
/// give it back unspent (a call that was never made, or a panic on the way).
#[must_use = "settle the reservation with the real cost"]
pub(crate) struct Reservation<'a> {
    budget: &'a Budget,
    amount: f64,
    settled: bool,
    /// Its reservation on the shared cap.
    shared: Option<u64>,
}

impl Reservation<'_> {
    /// The item cost `actual`.
    pub(crate) fn settle(mut self, actual: f64) {
        self.settled = true;
        self.budget.settle(self.amount, actual);
        self.settle_shared(actual);
    }

    /// The item may have cost what was reserved, and nobody will learn what (a batch left
    /// running, a creation whose answer was lost): count it spent.
    pub(crate) fn keep(self) {
        let amount = self.amount;
        self.settle(amount);
    }

    fn settle_shared(&mut self, actual: f64) {
        if let (Some(id), Some(shared)) = (self.shared.take(), &self.budget.shared) {
            shared.store.settle(id, actual);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.budget.settle(self.amount, 0.0);
            self.settle_shared(0.0);
        }
    }
}

/// How many times the largest item seen an item must be estimated at to be an outlier that
/// is refused alone rather than a sign that the budget is spent.
const OUTLIER: f64 = 4.0;

impl Budget {
    pub(crate) fn new(limit: Option<f64>, first_estimate: Option<f64>) -> Budget {
        Budget {
            state: Mutex::new(State {
                limit,
                spent: 0.0,
                reserved: 0.0,
                in_flight: 0,
                largest_seen: 0.0,
                first_estimate: first_estimate.unwrap_or(DEFAULT_FIRST_ESTIMATE_USD),
                exhausted: false,
            }),
            shared: None,
            shared_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// This budget, checked against `shared` too after its own cap.
    pub(crate) fn with_shared(self, shared: Option<SharedBudget>) -> Budget {
        Budget { shared, ..self }
    }

    /// [`reserve`](Self::reserve), then a reservation on the shared cap, if any. While the
    /// shared cap cannot be reached nothing goes out: this waits (a warning once, a growing
    /// backoff) until it answers or `should_stop` ([`Error::Cancelled`]).
    pub(crate) fn reserve_waiting(
        &self,
        own_estimate: f64,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Reservation<'_>, Error> {
        let mut reservation = self.reserve(own_estimate)?;
        let Some(shared) = &self.shared else {
            return Ok(reservation);
        };
        let amount = {
            let s = self.state.lock();
            let ordinary = if s.largest_seen > 0.0 {
                s.largest_seen
            } else {
                s.first_estimate
            };
            ordinary.max(own_estimate).max(reservation.amount)
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match shared.store.reserve(amount) {
                Ok(Ok(id)) => {
                    if self
                        .shared_down
                        .swap(false, std::sync::atomic::Ordering::SeqCst)
                    {
                        log::warn!("shared budget at {} answers again", shared.store.address());
                    }
                    reservation.shared = Some(id);
                    return Ok(reservation);
                }
                Ok(Err(Refusal::StateLost { name })) => {
                    return Err(Error::SharedBudgetLost {
                        name,
                        address: shared.store.address(),
                    });
                }
                Ok(Err(Refusal::OverCap(committed))) => {
                    let limit = shared.store.limit();
                    let mut s = self.state.lock();
                    if !s.exhausted {
                        log::warn!(
                            "shared budget spent: {committed:.4} USD spent or reserved of \
                             {limit:.4} USD by every program on it; no further calls"
                        );
                    }
                    s.exhausted = true;
                    return Err(Error::BudgetExceeded {
                        budget_usd: limit,
                        spent_usd: committed,
                    });
                }
                Err(reason) => {
                    if !self
                        .shared_down
                        .swap(true, std::sync::atomic::Ordering::SeqCst)
                    {
                        log::warn!(
                            "shared budget at {} cannot be reached ({reason}); no call goes \
                             out until it answers",
                            shared.store.address()
                        );
                    }
                    let until = Instant::now() + backoff;
                    while Instant::now() < until {
                        if should_stop() {
                            return Err(Error::Cancelled);
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Reserve for an item whose own estimate (from its size, see [`item_estimate_usd`]) is
    /// `own_estimate`: the larger of that and the largest cost seen so far.
    pub(crate) fn reserve(&self, own_estimate: f64) -> Result<Reservation<'_>, Error> {
        self.reserve_with(own_estimate, false)
    }

    /// Reserve `estimate` for an item whose whole cost it bounds (a batch request: its
    /// prompt and the most output it is allowed), without raising it to the largest cost
    /// seen: a batch reserves all its items at once, before any cost is known, and the
    /// first estimate would refuse most of them.
    pub(crate) fn reserve_bounded(&self, estimate: f64) -> Result<Reservation<'_>, Error> {
        self.reserve_with(estimate, true)
    }

    fn reserve_with(&self, own_estimate: f64, bounded: bool) -> Result<Reservation<'_>, Error> {
        let mut s = self.state.lock();
        let Some(limit) = s.limit else {
            // Counted all the same: the cap may be set while this item is in flight.
            s.in_flight += 1;
            return Ok(self.reservation(0.0));
        };
        let ordinary = if bounded {
            own_estimate
        } else if s.largest_seen > 0.0 {
            s.largest_seen
        } else {
            s.first_estimate
        };
        let estimate = ordinary.max(own_estimate);
        // In-flight items valued at the current estimate if that has grown past what they
        // reserved: they are likely to cost what the others did.
        let committed = s.spent + s.reserved.max(f64::from(s.in_flight) * s.largest_seen);
        // The item itself is the problem only when it is unlike the others: larger than the
        // whole budget, or several times the largest item seen. An item just above an
        // estimate not yet learned is the budget running out, not an outlier.
        let outlier =
            own_estimate > limit || (s.largest_seen > 0.0 && own_estimate > OUTLIER * ordinary);
        if !s.exhausted && outlier && committed + ordinary <= limit && committed + estimate > limit
        {
            // Only this item is too big: refusing it spends nothing.
            log::warn!(
                "an item estimated at {own_estimate:.4} USD does not fit the {:.4} USD left of \
                 the budget; it is not sent, the others go on",
                limit - committed
            );
            return Err(Error::ItemOverBudget {
                estimate_usd: own_estimate,
                left_usd: (limit - committed).max(0.0),
                budget_usd: limit,
            });
        }
        if s.exhausted || committed + estimate > limit {
            if !s.exhausted {
                log::warn!(
                    "budget spent: {:.4} USD spent and {:.4} USD in flight of {limit:.4} USD; no further calls",
                    s.spent,
                    committed - s.spent
                );
            }
            s.exhausted = true;
            return Err(Error::BudgetExceeded {
                budget_usd: limit,
                spent_usd: committed,
            });
        }
        s.reserved += estimate;
        s.in_flight += 1;
        Ok(self.reservation(estimate))
    }

    fn reservation(&self, amount: f64) -> Reservation<'_> {
        Reservation {
            budget: self,
            amount,
            settled: false,
            shared: None,
        }
    }

    fn settle(&self, reserved: f64, actual: f64) {
        let mut s = self.state.lock();
        s.reserved = (s.reserved - reserved).max(0.0);
        s.in_flight = s.in_flight.saturating_sub(1);
        s.spent += actual;
        s.largest_seen = s.largest_seen.max(actual);
    }

    /// Raise (or lower) the cap; a raised cap lets a spent session go on.
    pub(crate) fn set_limit(&self, limit: Option<f64>) {
        let mut s = self.state.lock();
        s.limit = limit;
        s.exhausted = false;
    }

    #[cfg(test)]
    pub(crate) fn spent(&self) -> f64 {
        self.state.lock().spent
    }

    pub(crate) fn is_exhausted(&self) -> bool {
        self.state.lock().exhausted
    }
}

/// List prices in US dollars per million tokens (input, output) for a model name or alias.
/// A model this crate does not know is priced as the dearest, so a cap is never overrun on a
/// guess.
pub(crate) fn list_price(model: Option<&str>) -> (f64, f64) {
    // Without a model the CLI picks its default, the current Opus.
    let m = model.unwrap_or("opus").to_ascii_lowercase();
    const DEAREST: (f64, f64) = (15.0, 75.0);
    if m.contains("haiku") {
        if m.contains("3-5") || m.contains("3.5") {
            (0.8, 4.0)
        } else if m.contains("-3-") {
            (0.25, 1.25)
        } else {
            (1.0, 5.0)
        }
    } else if m.contains("sonnet") {
        (3.0, 15.0)
    } else if m.contains("opus") {
        // Opus 4.5 and later are priced lower than the Opus models before them.
        let older = [
            "opus-4-0",
            "opus-4-1",
            "opus-4-2",
            "opus-4-20",
            "3-opus",
            "opus-3",
        ];
        if m == "opus" || !older.iter().any(|o| m.contains(o)) {
            (5.0, 25.0)
        } else {
            DEAREST
        }
    } else {
        DEAREST
    }
}

/// What `usage` costs at `model`'s list price: cache writes at 1.25 times the input price
/// (five-minute entries), cache reads at 0.1 times.
#[cfg_attr(not(feature = "api"), allow(dead_code))]
pub(crate) fn usage_cost_usd(model: Option<&str>, usage: &crate::Usage) -> f64 {
    let (input, output) = list_price(model);
    (usage.input_tokens as f64 * input
        + usage.cache_creation_input_tokens as f64 * input * 1.25
        + usage.cache_read_input_tokens as f64 * input * 0.1
        + usage.output_tokens as f64 * output)
        / 1_000_000.0
}

/// How long a prompt-cache entry a request writes lives (its `cache_control.ttl`), which
/// sets what writing it costs: 1.25 times the input price for five minutes, 2 times for an
/// hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(not(feature = "api"), allow(dead_code))]
pub(crate) enum CacheTtl {
    #[default]
    FiveMinutes,
    OneHour,
}

/// What a call is billed at: the list price, or the Message Batches API's, half of it on
/// every token (the cache multipliers apply on top, as the API bills them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "api"), allow(dead_code))]
pub(crate) enum Rate {
    List,
    Batch,
}

/// What `usage` costs at `model`'s price and `rate`, `one_hour_writes` of its cache writes
/// being one-hour entries (2 times the input price, not 1.25; more than it wrote counts as
/// all of them).
#[cfg_attr(not(feature = "api"), allow(dead_code))]
pub(crate) fn call_cost_usd(
    model: Option<&str>,
    usage: &crate::Usage,
    one_hour_writes: u64,
    rate: Rate,
) -> f64 {
    let one_hour = one_hour_writes.min(usage.cache_creation_input_tokens);
    let surcharge = one_hour as f64 * list_price(model).0 * (2.0 - 1.25) / 1_000_000.0;
    let list = usage_cost_usd(model, usage) + surcharge;
    match rate {
        Rate::List => list,
        Rate::Batch => list * 0.5,
    }
}

/// What one item's prompt will cost for certain: `input_tokens` at the model's input price.
pub(crate) fn prompt_cost_usd(model: Option<&str>, input_tokens: u64) -> f64 {
    input_tokens as f64 * list_price(model).0 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_priced_by_size_and_model() {
        // 2.6 million input tokens (a 10 MB item) on Sonnet: 7.8 USD.
        let huge = prompt_cost_usd(Some("sonnet"), 2_600_000);
        assert!((huge - 7.8).abs() < 1e-9, "{huge}");
        assert_eq!(list_price(Some("claude-haiku-4-5")), (1.0, 5.0));
        assert_eq!(list_price(Some("claude-3-5-haiku-latest")), (0.8, 4.0));
        assert_eq!(list_price(Some("claude-opus-4-1")), (15.0, 75.0));
        assert_eq!(list_price(Some("claude-opus-4-8")), (5.0, 25.0));
        assert_eq!(list_price(Some("some-new-model")), (15.0, 75.0));
        assert_eq!(list_price(None), (5.0, 25.0));
        let usage = crate::Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            cache_creation_input_tokens: 1_000_000,
            cache_read_input_tokens: 1_000_000,
        };
        // Sonnet: 3 + 15 + 3.75 + 0.30.
        let cost = usage_cost_usd(Some("claude-sonnet-4-5"), &usage);
        assert!((cost - 22.05).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn batches_bill_half_and_one_hour_cache_writes_bill_double_input() {
        let usage = crate::Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            cache_creation_input_tokens: 1_000_000,
            cache_read_input_tokens: 1_000_000,
        };
        let sonnet = Some("claude-sonnet-4-5");
        let list = call_cost_usd(sonnet, &usage, 0, Rate::List);
        assert!(
            (list - usage_cost_usd(sonnet, &usage)).abs() < 1e-12,
            "{list}"
        );
        // Sonnet, every write an hour's: 3 + 15 + 6 + 0.30.
        let one_hour = call_cost_usd(sonnet, &usage, 1_000_000, Rate::List);
        assert!((one_hour - 24.30).abs() < 1e-9, "{one_hour}");
        // Half of either in a batch; a count above the writes is all of them.
        let batch = call_cost_usd(sonnet, &usage, 5_000_000, Rate::Batch);
        assert!((batch - 12.15).abs() < 1e-9, "{batch}");
        let half = call_cost_usd(sonnet, &usage, 0, Rate::Batch);
        assert!((half - 22.05 / 2.0).abs() < 1e-9, "{half}");
    }

    #[test]
    fn an_item_too_big_for_what_is_left_is_refused_alone() {
        let b = Budget::new(Some(1.0), Some(0.01));
        assert!(matches!(
            b.reserve(7.8),
            Err(Error::ItemOverBudget { estimate_usd, left_usd, budget_usd })
                if estimate_usd == 7.8 && left_usd == 1.0 && budget_usd == 1.0
        ));
        // Refused is not spent: ordinary items still fit.
        assert!(!b.is_exhausted());
        let r = b.reserve(0.002).unwrap();
        r.settle(0.002);
        assert_eq!(b.spent(), 0.002);
        // An item a little above an estimate not yet learned is not an outlier: the budget
        // is spent (what the property test `the_budget_overshoot_stays_within_its_bound` found).
        let b = Budget::new(Some(0.000265), Some(1e-6));
        let first = b.reserve(0.0001).unwrap();
        let second = b.reserve(0.0001).unwrap();
        assert!(matches!(
            b.reserve(0.0001),
            Err(Error::BudgetExceeded { .. })
        ));
        first.settle(0.0001);
        second.settle(0.0001);
        // An outlier against what items have cost is refused alone.
        let b = Budget::new(Some(1.0), Some(0.01));
        b.reserve(0.1).unwrap().settle(0.1);
        assert!(matches!(b.reserve(0.95), Err(Error::ItemOverBudget { .. })));
        assert!(!b.is_exhausted());
        // Once an ordinary item no longer fits, the budget is spent, for big items too.
        let b = Budget::new(Some(0.015), Some(0.01));
        let held = b.reserve(0.0).unwrap();
        assert!(matches!(b.reserve(0.0), Err(Error::BudgetExceeded { .. })));
        assert!(matches!(b.reserve(7.8), Err(Error::BudgetExceeded { .. })));
        held.settle(0.0);
    }

    #[test]
    fn unlimited_never_refuses() {
        let b = Budget::new(None, None);
        for _ in 0..1000 {
            let r = b.reserve(0.0).unwrap();
            r.settle(1.0);
        }
        assert_eq!(b.spent(), 1000.0);
    }

    #[test]
    fn refuses_when_the_next_estimate_does_not_fit_and_stays_spent() {
        let b = Budget::new(Some(0.05), Some(0.01));
        let mut ok = 0;
        while let Ok(r) = b.reserve(0.0) {
            r.settle(0.02);
            ok += 1;
        }
        // 0.01 reserved first, then the largest seen (0.02): 0.02 + 0.02 fit, the third does not.
        assert_eq!(ok, 2);
        assert!(b.is_exhausted());
        assert!(b.reserve(0.0).is_err());
        b.set_limit(Some(1.0));
        assert!(b.reserve(0.0).is_ok());
    }

    #[test]
    fn a_larger_cost_seen_revalues_the_items_still_in_flight() {
        // Room for 2.5 items at 0.10; the first estimate says 0.01.
        let b = Budget::new(Some(0.25), Some(0.01));
        let mut held: Vec<_> = (0..4).map(|_| b.reserve(0.0).unwrap()).collect();
        held.remove(0).settle(0.10);
        // 0.10 spent and three in flight that will likely cost 0.10 each: nothing more fits,
        // although their reservations (0.03) would leave room.
        assert!(b.reserve(0.0).is_err());
        for r in held {
            r.settle(0.10);
        }
        assert!((b.spent() - 0.40).abs() < 1e-9);
        assert!(b.reserve(0.0).is_err(), "stays spent");
    }

    #[test]
    fn a_conservative_first_estimate_is_kept_for_the_items_in_flight() {
        let b = Budget::new(Some(0.10), Some(0.04));
        let first = b.reserve(0.0).unwrap();
        let second = b.reserve(0.0).unwrap();
        first.settle(0.001);
        // 0.04 still reserved for the second: 0.001 + 0.04 + 0.001 fits.
        let third = b.reserve(0.0).unwrap();
        second.settle(0.001);
        third.settle(0.001);
        assert!(!b.is_exhausted());
    }

    #[test]
    fn refused_once_stays_refused_even_where_an_item_would_now_fit() {
        let b = Budget::new(Some(0.025), Some(0.01));
        let held: Vec<_> = (0..2).map(|_| b.reserve(0.0).unwrap()).collect();
        assert!(b.reserve(0.0).is_err());
        for r in held {
            r.settle(0.0001);
        }
        // 0.0002 spent and 0.0001 to reserve would fit; the session said it was done.
        assert!(b.reserve(0.0).is_err());
        b.set_limit(Some(0.025));
        assert!(b.reserve(0.0).is_ok());
    }

    #[test]
    fn in_flight_reservations_count() {
        let b = Budget::new(Some(0.03), Some(0.01));
        let held: Vec<_> = (0..3).map(|_| b.reserve(0.0).unwrap()).collect();
        assert!(matches!(b.reserve(0.0), Err(Error::BudgetExceeded { .. })));
        for r in held {
            r.settle(0.0);
        }
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    #[test]
    fn a_dropped_reservation_is_given_back_unspent() {
        let b = Budget::new(Some(0.02), Some(0.01));
        let first = b.reserve(0.0).unwrap();
        let second = b.reserve(0.0).unwrap();
        // Full: a third does not fit while both are held. (Not refused here: that would
        // mark the budget spent.)
        drop(first);
        drop(second);
        assert_eq!(b.spent(), 0.0);
        // Both given back: two more fit.
        let _a = b.reserve(0.0).unwrap();
        let _b = b.reserve(0.0).unwrap();
    }

    #[test]
    fn a_panic_while_holding_a_reservation_gives_it_back() {
        let b = Budget::new(Some(0.01), Some(0.01));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = b.reserve(0.0).unwrap();
            panic!("a turn panicked");
        }));
        assert!(result.is_err());
        assert!(b.reserve(0.0).is_ok(), "the reservation did not leak");
    }
}
