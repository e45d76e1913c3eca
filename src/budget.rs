//! The session's spending cap: reserve an estimate before an item, settle the real cost after.
//!
//! How far a run can overshoot: every item in flight reserved an estimate (the largest cost
//! seen so far, or the configured first estimate), and the cap is checked against spent plus
//! reserved. An item can still cost more than its reservation, so the overshoot is at most
//! `concurrency × (largest single-item cost − its estimate)`; with uniform items it is close
//! to zero, and it is never more than the in-flight items' own costs.

use parking_lot::Mutex;

use crate::Error;

/// What is reserved when no item has finished yet.
pub(crate) const DEFAULT_FIRST_ESTIMATE_USD: f64 = 0.01;

pub(crate) struct Budget {
    state: Mutex<State>,
}

struct State {
    limit: Option<f64>,
    spent: f64,
    reserved: f64,
    largest_seen: f64,
    first_estimate: f64,
    /// Once refused, every later item is refused too, until the cap is raised.
    exhausted: bool,
}

/// A reservation taken before an item runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reservation(f64);

impl Budget {
    pub(crate) fn new(limit: Option<f64>, first_estimate: Option<f64>) -> Budget {
        Budget {
            state: Mutex::new(State {
                limit,
                spent: 0.0,
                reserved: 0.0,
                largest_seen: 0.0,
                first_estimate: first_estimate.unwrap_or(DEFAULT_FIRST_ESTIMATE_USD),
                exhausted: false,
            }),
        }
    }

    pub(crate) fn reserve(&self) -> Result<Reservation, Error> {
        let mut s = self.state.lock();
        let Some(limit) = s.limit else {
            return Ok(Reservation(0.0));
        };
        let estimate = if s.largest_seen > 0.0 {
            s.largest_seen
        } else {
            s.first_estimate
        };
        if s.exhausted || s.spent + s.reserved + estimate > limit {
            if !s.exhausted {
                log::warn!(
                    "budget spent: {:.4} USD spent and {:.4} USD reserved of {limit:.4} USD; no further calls",
                    s.spent,
                    s.reserved
                );
            }
            s.exhausted = true;
            return Err(Error::BudgetExceeded {
                budget_usd: limit,
                spent_usd: s.spent + s.reserved,
            });
        }
        s.reserved += estimate;
        Ok(Reservation(estimate))
    }

    pub(crate) fn settle(&self, reservation: Reservation, actual: f64) {
        let mut s = self.state.lock();
        s.reserved = (s.reserved - reservation.0).max(0.0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_refuses() {
        let b = Budget::new(None, None);
        for _ in 0..1000 {
            let r = b.reserve().unwrap();
            b.settle(r, 1.0);
        }
        assert_eq!(b.spent(), 1000.0);
    }

    #[test]
    fn refuses_when_the_next_estimate_does_not_fit_and_stays_spent() {
        let b = Budget::new(Some(0.05), Some(0.01));
        let mut ok = 0;
        while let Ok(r) = b.reserve() {
            b.settle(r, 0.02);
            ok += 1;
        }
        // 0.01 reserved first, then the largest seen (0.02): 0.02 + 0.02 fit, the third does not.
        assert_eq!(ok, 2);
        assert!(b.is_exhausted());
        assert!(b.reserve().is_err());
        b.set_limit(Some(1.0));
        assert!(b.reserve().is_ok());
    }

    #[test]
    fn in_flight_reservations_count() {
        let b = Budget::new(Some(0.03), Some(0.01));
        let held: Vec<_> = (0..3).map(|_| b.reserve().unwrap()).collect();
        assert!(matches!(b.reserve(), Err(Error::BudgetExceeded { .. })));
        for r in held {
            b.settle(r, 0.0);
        }
    }
}
