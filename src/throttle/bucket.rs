//! The pure token bucket: two dimensions (requests, tokens) refilled continuously, a FIFO
//! queue of waiters, debt and refunds, a shared pause. No clock reads and no blocking: every
//! operation takes the `Instant` it happens at, so the arithmetic is tested without a clock.
//! [`Throttle`](super::Throttle) is the blocking shell around it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Cap on a computed wait, so an absurd debt can never overflow `Instant` arithmetic.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Levels are kept in units of 1/60e9 of a request or token, so a rate "per minute" is
/// exactly "scaled units per nanosecond" and refill needs no floating point.
const SCALE: i128 = 60_000_000_000;

fn scaled(amount: u64) -> i128 {
    i128::from(amount) * SCALE
}

/// One dimension of the bucket (requests or tokens).
#[derive(Debug, Clone)]
struct Dim {
    /// Units per minute, which is also scaled units per nanosecond.
    rate: i128,
    /// Scaled: the burst.
    capacity: i128,
    /// Scaled: one minute's worth, the capacity of the API's own bucket.
    limit: i128,
    /// Scaled: granted and not yet settled.
    in_flight: i128,
    /// Scaled; negative means debt.
    level: i128,
    /// For each grant in flight, how much a refund could still be worth: the least room
    /// below the burst (capacity − level) seen since it was granted. Had the grant been charged its real cost,
    /// the level would have been higher by the refund, and capped at the ceiling: a refund
    /// given back later can only restore what that cap would not have taken. Without this,
    /// refunds stack on top of a level that refilled meanwhile, and more than the burst goes
    /// at once.
    refund_room: Vec<(u64, i128)>,
}

impl Dim {
    /// Starts full, so the first burst is not delayed. A burst above one minute's worth is
    /// refused before this ([`Throttle::with_burst`](super::Throttle::with_burst)): the API's
    /// own bucket holds no more.
    fn new(per_minute: u64, burst: u64) -> Dim {
        debug_assert!(burst <= per_minute, "a burst above one minute's worth");
        Dim {
            rate: i128::from(per_minute),
            capacity: scaled(burst),
            limit: scaled(per_minute),
            in_flight: 0,
            level: scaled(burst),
            refund_room: Vec::new(),
        }
    }

    /// The most the level may refill to: the burst, and no more than the API's bucket can
    /// hold beside what is still on its way to it.
    fn ceiling(&self) -> i128 {
        self.capacity.min(self.limit.saturating_sub(self.in_flight))
    }

    fn refill(&mut self, elapsed_nanos: i128) {
        let added = self.rate.saturating_mul(elapsed_nanos);
        self.raise(added);
    }

    /// Adds `added` (scaled) up to the ceiling; the grants in flight see the room shrink.
    fn raise(&mut self, added: i128) {
        let ceiling = self.ceiling();
        if self.level < ceiling {
            self.level = self.level.saturating_add(added).min(ceiling);
            let room = self.capacity - self.level;
            for (_, least) in &mut self.refund_room {
                *least = (*least).min(room);
            }
        }
    }

    /// Nanoseconds until `amount` can be taken, `None` if only a settle can make room. A
    /// request larger than the whole capacity only needs a full bucket, or it would wait
    /// forever.
    fn wait_nanos(&self, amount: u64) -> Option<i128> {
        let need = scaled(amount).min(self.capacity);
        let deficit = need - self.level;
        if deficit <= 0 {
            Some(0)
        } else if need > self.ceiling() {
            None
        } else {
            // Round up so that at the returned instant the level really is enough.
            Some((deficit + self.rate - 1) / self.rate)
        }
    }

    fn grant(&mut self, id: u64, amount: u64) {
        self.take(amount);
        self.in_flight = self.in_flight.saturating_add(scaled(amount));
        let room = (self.capacity - self.level).max(0);
        self.refund_room.push((id, room));
    }

    /// The end of grant `id`: what a refund for it may still give back (scaled).
    fn refund_worth(&mut self, id: u64) -> i128 {
        match self.refund_room.iter().position(|(g, _)| *g == id) {
            Some(i) => self.refund_room.swap_remove(i).1.max(0),
            None => 0,
        }
    }

    /// The end of a grant of `amount`, settled or given back.
    fn land(&mut self, amount: u64) {
        self.in_flight = self.in_flight.saturating_sub(scaled(amount)).max(0);
    }

    fn take(&mut self, amount: u64) {
        self.level = self.level.saturating_sub(scaled(amount));
    }

    /// Gives back `amount` of a grant, no more than it is still worth (`worth`, scaled).
    fn give(&mut self, amount: u64, worth: i128) {
        self.raise(scaled(amount).min(worth));
    }
}

/// A place in the arrival queue of a [`Bucket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

/// What a [`Bucket`] handed out: `requests` requests (one, or the API calls an item is
/// expected to make) and `tokens` estimated tokens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grant {
    pub(crate) tokens: u64,
    pub(crate) requests: u64,
    /// Which grant this is, for what its refund is worth (see `Dim::refund_room`).
    id: u64,
}

impl PartialEq for Grant {
    fn eq(&self, other: &Grant) -> bool {
        (self.tokens, self.requests) == (other.tokens, other.requests)
    }
}

impl Grant {
    /// A grant of a remote bucket: no refund room is kept here (the remote bucket caps
    /// refunds at its own ceiling).
    pub(crate) fn remote(tokens: u64, requests: u64) -> Grant {
        Grant {
            tokens,
            requests,
            id: u64::MAX,
        }
    }

    #[cfg(test)]
    pub(crate) fn new(tokens: u64, requests: u64) -> Grant {
        // No grant of the bucket's: a refund for it is worth nothing.
        Grant {
            tokens,
            requests,
            id: u64::MAX,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    ticket: Ticket,
    tokens: u64,
    requests: u64,
}

/// The pure token bucket: no clock reads, no blocking.
///
/// Callers [`join`](Bucket::join) the FIFO queue, then poll
/// [`try_acquire`](Bucket::try_acquire). Whoever polls admits every waiter at the head of
/// the queue that fits, in order, not just itself: a waiter never has to be the one awake
/// at the right moment, and `try_acquire` never returns a `ready_at` in the past for a
/// waiter that is merely queued behind an admissible one.
#[derive(Debug)]
pub(crate) struct Bucket {
    requests: Option<Dim>,
    tokens: Option<Dim>,
    refilled_at: Instant,
    paused_until: Option<Instant>,
    queue: VecDeque<Waiter>,
    /// Admitted but not yet collected by their own `try_acquire`. Small: at most the
    /// number of blocked threads.
    granted: Vec<(Ticket, Grant)>,
    next_ticket: u64,
}

impl Bucket {
    /// `requests` and `tokens` are `(per_minute, burst)`, both non-zero; `None` is unlimited.
    pub(crate) fn new(
        now: Instant,
        requests: Option<(u64, u64)>,
        tokens: Option<(u64, u64)>,
    ) -> Bucket {
        Bucket {
            requests: requests.map(|(rate, burst)| Dim::new(rate, burst)),
            tokens: tokens.map(|(rate, burst)| Dim::new(rate, burst)),
            refilled_at: now,
            paused_until: None,
            queue: VecDeque::new(),
            granted: Vec::new(),
            next_ticket: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        // Instants given out of order are ignored rather than draining the bucket.
        if now <= self.refilled_at {
            return;
        }
        let elapsed =
            i128::try_from(now.duration_since(self.refilled_at).as_nanos()).unwrap_or(i128::MAX);
        for dim in [&mut self.requests, &mut self.tokens].into_iter().flatten() {
            dim.refill(elapsed);
        }
        self.refilled_at = now;
    }

    /// Joins the back of the queue for one request costing `estimated_tokens`.
    #[cfg(test)]
    pub(crate) fn join(&mut self, estimated_tokens: u64) -> Ticket {
        self.join_calls(estimated_tokens, 1)
    }

    /// Joins the back of the queue for `requests` requests (at least one) costing
    /// `estimated_tokens` in all.
    pub(crate) fn join_calls(&mut self, estimated_tokens: u64, requests: u64) -> Ticket {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.queue.push_back(Waiter {
            ticket,
            tokens: estimated_tokens,
            requests: requests.max(1),
        });
        ticket
    }

    /// Admits `ticket` if it is its turn and both dimensions allow it (debiting the
    /// bucket), or returns the earliest instant worth trying again.
    pub(crate) fn try_acquire(&mut self, now: Instant, ticket: Ticket) -> Result<Grant, Instant> {
        self.refill(now);
        self.admit_ready(now);
        if let Some(i) = self.granted.iter().position(|(t, _)| *t == ticket) {
            return Ok(self.granted.swap_remove(i).1);
        }
        debug_assert!(
            self.queue.iter().any(|w| w.ticket == ticket),
            "unknown ticket {ticket:?}"
        );
        Err(self.head_ready_at(now))
    }

    /// Admits waiters from the head of the queue while they fit.
    fn admit_ready(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|until| until > now) {
            return;
        }
        while let Some(head) = self.queue.front().copied() {
            if self.wait_nanos(head.tokens, head.requests) != Some(0) {
                // Strict FIFO: nobody overtakes a head that does not fit yet.
                break;
            }
            // The ticket is unique: it names the grant too.
            let id = head.ticket.0;
            if let Some(dim) = &mut self.requests {
                dim.grant(id, head.requests);
            }
            if let Some(dim) = &mut self.tokens {
                dim.grant(id, head.tokens);
            }
            self.queue.pop_front();
            self.granted.push((
                head.ticket,
                Grant {
                    tokens: head.tokens,
                    requests: head.requests,
                    id,
                },
            ));
        }
    }

    /// `None` while the head waits for a grant in flight to settle.
    fn wait_nanos(&self, tokens: u64, requests: u64) -> Option<i128> {
        let requests = self
            .requests
            .as_ref()
            .map_or(Some(0), |d| d.wait_nanos(requests))?;
        let tokens = self
            .tokens
            .as_ref()
            .map_or(Some(0), |d| d.wait_nanos(tokens))?;
        Some(requests.max(tokens))
    }

    /// When the head of the queue can be admitted; nobody behind it can go earlier.
    fn head_ready_at(&self, now: Instant) -> Instant {
        let Some(head) = self.queue.front() else {
            // Only reachable with an unknown ticket; the shell polls anyway.
            return now + MAX_WAIT;
        };
        // Waiting on a settle: the shell is woken by it (and polls anyway).
        let nanos = self
            .wait_nanos(head.tokens, head.requests)
            .map_or(u64::MAX, |n| u64::try_from(n).unwrap_or(u64::MAX));
        let ready = now + Duration::from_nanos(nanos).min(MAX_WAIT);
        match self.paused_until {
            Some(until) if until > ready => until,
            _ => ready,
        }
    }

    /// Leaves the queue without a permit. A grant made on the waiter's behalf in the
    /// meantime is given back.
    pub(crate) fn cancel(&mut self, now: Instant, ticket: Ticket) {
        if let Some(i) = self.queue.iter().position(|w| w.ticket == ticket) {
            self.queue.remove(i);
        } else if let Some(i) = self.granted.iter().position(|(t, _)| *t == ticket) {
            let (_, grant) = self.granted.swap_remove(i);
            self.refill(now);
            if let Some(dim) = &mut self.requests {
                dim.land(grant.requests);
                let worth = dim.refund_worth(grant.id);
                dim.give(grant.requests, worth);
            }
            if let Some(dim) = &mut self.tokens {
                dim.land(grant.tokens);
                let worth = dim.refund_worth(grant.id);
                dim.give(grant.tokens, worth);
            }
        }
    }

    /// Ends a grant, which is no longer in flight, and corrects the token level with its real
    /// usage: a refund when `actual_tokens` is below the estimate, debt when above.
    #[cfg(test)]
    pub(crate) fn settle(&mut self, now: Instant, grant: Grant, actual_tokens: u64) {
        self.settle_calls(now, grant, actual_tokens, 1);
    }

    /// Ends a grant and corrects both dimensions with what really happened: the tokens used
    /// and the API calls made (a refund for calls expected and not made, debt for more).
    pub(crate) fn settle_calls(
        &mut self,
        now: Instant,
        grant: Grant,
        actual_tokens: u64,
        actual_requests: u64,
    ) {
        let granted_tokens = grant.tokens;
        // Refill first, up to the ceiling that held while the grant was in flight.
        self.refill(now);
        if let Some(dim) = &mut self.requests {
            dim.land(grant.requests);
            let worth = dim.refund_worth(grant.id);
            if actual_requests < grant.requests {
                dim.give(grant.requests - actual_requests, worth);
            } else {
                dim.take(actual_requests - grant.requests);
            }
        }
        if let Some(dim) = &mut self.tokens {
            dim.land(granted_tokens);
            let worth = dim.refund_worth(grant.id);
            if actual_tokens < granted_tokens {
                dim.give(granted_tokens - actual_tokens, worth);
            } else {
                dim.take(actual_tokens - granted_tokens);
            }
        }
    }

    /// Charges `n` requests made without a permit (the CLI's own retries).
    pub(crate) fn note_extra_requests(&mut self, now: Instant, n: u32) {
        self.refill(now);
        if let Some(dim) = &mut self.requests {
            dim.take(u64::from(n));
        }
    }

    /// Lowers each limited dimension's level to what the API says is left (whole requests
    /// and tokens), less the other requests in flight; never raises it: the API counts
    /// requests ours has not sent yet.
    pub(crate) fn at_most(&mut self, now: Instant, requests: Option<u64>, tokens: Option<u64>) {
        self.refill(now);
        if let (Some(dim), Some(left)) = (&mut self.requests, requests) {
            // The other requests in flight may not have reached the API when it answered:
            // count them as coming (the one that brought the word has arrived).
            let coming = (dim.in_flight - scaled(1)).max(0);
            dim.level = dim.level.min(scaled(left) - coming);
        }
        if let (Some(dim), Some(left)) = (&mut self.tokens, tokens) {
            dim.level = dim.level.min(scaled(left));
        }
    }

    /// Admits nobody before `until`; never shortens a pause already in force.
    pub(crate) fn pause_until(&mut self, until: Instant) {
        self.paused_until = Some(
            self.paused_until
                .map_or(until, |current| current.max(until)),
        );
    }

    /// The end of the pause, if it is still in the future at `now`.
    pub(crate) fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|until| *until > now)
    }

    /// Queued plus admitted-but-uncollected: the callers still inside `acquire`.
    pub(crate) fn waiters(&self) -> usize {
        self.queue.len() + self.granted.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn millis(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Joins and tries once, leaving the queue on failure: a caller that is not waiting. A
    /// grant is settled at once with its estimate, as if the request took no time.
    fn try_now(b: &mut Bucket, now: Instant, tokens: u64) -> Result<Grant, Instant> {
        let ticket = b.join(tokens);
        let result = b.try_acquire(now, ticket);
        match result {
            Ok(grant) => b.settle(now, grant, grant.tokens),
            Err(_) => b.cancel(now, ticket),
        }
        result
    }

    /// Joins and must be admitted at once; the grant stays in flight until settled.
    fn hold(b: &mut Bucket, now: Instant, tokens: u64) -> Grant {
        let ticket = b.join(tokens);
        b.try_acquire(now, ticket).expect("admitted at once")
    }

    fn grant(tokens: u64) -> Result<Grant, Instant> {
        Ok(Grant::new(tokens, 1))
    }

    // ---- pure core ----

    #[test]
    fn an_item_expected_to_make_two_calls_is_charged_two_and_refunded_what_it_did_not_make() {
        let t0 = Instant::now();
        // Ten requests per minute, a burst of ten.
        let mut b = Bucket::new(t0, Some((10, 10)), None);
        let mut grants = Vec::new();
        for _ in 0..5 {
            let ticket = b.join_calls(0, 2);
            let grant = b.try_acquire(t0, ticket).expect("fits");
            assert_eq!(grant.requests, 2);
            grants.push(grant);
        }
        // Ten requests are out: the next has to wait.
        let next = b.join_calls(0, 1);
        assert!(b.try_acquire(t0, next).is_err());
        b.cancel(t0, next);
        // Four items made one call each, not two: four requests come back at once.
        for grant in grants.drain(..4) {
            b.settle_calls(t0, grant, 0, 1);
        }
        for _ in 0..4 {
            let ticket = b.join_calls(0, 1);
            assert!(b.try_acquire(t0, ticket).is_ok());
        }
        // That used the refunds up.
        let full = b.join_calls(0, 1);
        assert!(b.try_acquire(t0, full).is_err());
        b.cancel(t0, full);
        // One made three: one more than charged is debt, on top of the empty bucket.
        b.settle_calls(t0, grants.pop().unwrap(), 0, 3);
        let late = b.join_calls(0, 1);
        let ready = b.try_acquire(t0, late).unwrap_err();
        assert!(ready >= t0 + secs(12), "{:?}", ready - t0);
    }

    #[test]
    fn the_apis_word_lowers_the_level_less_the_requests_still_on_their_way() {
        let t0 = Instant::now();
        // One request per second, the whole minute's burst.
        let mut b = Bucket::new(t0, Some((60, 60)), None);
        let in_flight: Vec<Grant> = (0..3).map(|_| hold(&mut b, t0, 0)).collect();
        // The API, answering one of the three, says 5 are left: the two others may still
        // come, so 3 can go now and the fourth waits a second.
        b.at_most(t0, Some(5), None);
        for _ in 0..3 {
            assert_eq!(try_now(&mut b, t0, 0), grant(0));
        }
        assert_eq!(try_now(&mut b, t0, 0), Err(t0 + secs(1)));
        // More room than the bucket has never raises it.
        b.at_most(t0, Some(50), None);
        assert_eq!(try_now(&mut b, t0, 0), Err(t0 + secs(1)));
        drop(in_flight);
    }

    #[test]
    fn starts_full_then_refills_continuously() {
        let t0 = Instant::now();
        // One request per second.
        let mut b = Bucket::new(t0, Some((60, 60)), None);
        for _ in 0..60 {
            assert_eq!(try_now(&mut b, t0, 0), grant(0));
        }
        assert_eq!(try_now(&mut b, t0, 0), Err(t0 + secs(1)));
        assert_eq!(try_now(&mut b, t0 + millis(999), 0), Err(t0 + secs(1)));
        assert_eq!(try_now(&mut b, t0 + secs(1), 0), grant(0));
        // Half a request accrues in half a second and counts towards the next.
        assert_eq!(try_now(&mut b, t0 + millis(1500), 0), Err(t0 + secs(2)));
        assert_eq!(try_now(&mut b, t0 + secs(2), 0), grant(0));
    }

    #[test]
    fn tokens_limit_independently_of_requests() {
        let t0 = Instant::now();
        // Plenty of requests, 1,000 tokens per minute.
        let mut b = Bucket::new(t0, Some((1_000, 1_000)), Some((1_000, 1_000)));
        assert_eq!(try_now(&mut b, t0, 600), grant(600));
        // 400 left, 200 short: 12 s at 1,000 per minute.
        assert_eq!(try_now(&mut b, t0, 600), Err(t0 + secs(12)));
        assert_eq!(try_now(&mut b, t0, 400), grant(400));
    }

    #[test]
    fn requests_limit_independently_of_tokens() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, Some((2, 2)), Some((1_000_000, 1_000_000)));
        assert_eq!(try_now(&mut b, t0, 1), grant(1));
        assert_eq!(try_now(&mut b, t0, 1), grant(1));
        assert_eq!(try_now(&mut b, t0, 1), Err(t0 + secs(30)));
    }

    #[test]
    fn ready_at_is_the_later_of_both_dimensions() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, Some((60, 1)), Some((60, 60)));
        assert_eq!(try_now(&mut b, t0, 60), grant(60));
        // Requests need 1 s, tokens 10 s.
        assert_eq!(try_now(&mut b, t0, 10), Err(t0 + secs(10)));
        // Tokens need 1 s, requests 1 s: either alone would say 1 s.
        assert_eq!(try_now(&mut b, t0, 1), Err(t0 + secs(1)));
    }

    #[test]
    fn burst_caps_what_idle_time_accumulates() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, Some((60, 5)), None);
        let later = t0 + secs(3600);
        for _ in 0..5 {
            assert_eq!(try_now(&mut b, later, 0), grant(0));
        }
        assert_eq!(try_now(&mut b, later, 0), Err(later + secs(1)));
    }

    #[test]
    fn debt_delays_the_next_request() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, None, Some((60, 60)));
        let held = hold(&mut b, t0, 60);
        b.settle(t0, held, 90);
        // Level -30: 10 more tokens need 40 s.
        assert_eq!(try_now(&mut b, t0, 10), Err(t0 + secs(40)));
        // Even a zero estimate waits out the debt.
        assert_eq!(try_now(&mut b, t0, 0), Err(t0 + secs(30)));
        assert_eq!(try_now(&mut b, t0 + secs(40), 10), grant(10));
    }

    #[test]
    fn refund_frees_tokens_but_never_beyond_capacity() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, None, Some((60, 60)));
        let held = hold(&mut b, t0, 60);
        b.settle(t0, held, 20);
        assert_eq!(try_now(&mut b, t0, 40), grant(40));
        assert_eq!(try_now(&mut b, t0, 1), Err(t0 + secs(1)));

        // Full again after a minute. Half of it goes out; while in flight the rest cannot
        // refill past 30, and a full refund on settling stops at the capacity.
        let t1 = t0 + secs(60);
        let held = hold(&mut b, t1, 30);
        let t2 = t1 + secs(60);
        b.settle(t2, held, 0);
        assert_eq!(try_now(&mut b, t2, 60), grant(60));
        assert_eq!(try_now(&mut b, t2, 1), Err(t2 + secs(1)));
    }

    #[test]
    fn requests_in_flight_hold_back_the_refill() {
        let t0 = Instant::now();
        // One request a second; the API's own bucket holds 60.
        let mut b = Bucket::new(t0, Some((60, 60)), None);
        let held = hold(&mut b, t0, 0);
        // Ten seconds on, the API may still not have the held request: only 59 are free,
        // not 60 (the refill stops at 60 minus one in flight).
        let t10 = t0 + secs(10);
        for _ in 0..59 {
            assert_eq!(try_now(&mut b, t10, 0), grant(0));
        }
        assert_eq!(try_now(&mut b, t10, 0), Err(t10 + secs(1)));
        b.settle(t10, held, 0);
        assert_eq!(try_now(&mut b, t10 + secs(1), 0), grant(0));

        // When the ceiling itself is below one request, only a settle makes room.
        let mut b = Bucket::new(t0, Some((1, 1)), None);
        let held = hold(&mut b, t0, 0);
        let t120 = t0 + secs(120);
        assert_eq!(try_now(&mut b, t120, 0), Err(t120 + MAX_WAIT));
        b.settle(t120, held, 0);
        assert_eq!(try_now(&mut b, t120, 0), Err(t120 + secs(60)));
        assert_eq!(try_now(&mut b, t120 + secs(60), 0), grant(0));

        // A smaller burst leaves room for what is in flight: no effect then.
        let mut b = Bucket::new(t0, Some((60, 10)), None);
        let _held: Vec<_> = (0..5).map(|_| hold(&mut b, t0, 0)).collect();
        assert_eq!(try_now(&mut b, t0 + secs(60), 0), grant(0));
        for _ in 0..9 {
            assert_eq!(try_now(&mut b, t0 + secs(60), 0), grant(0));
        }
        assert!(try_now(&mut b, t0 + secs(60), 0).is_err());
    }

    /// The API's side of a rate limit: a bucket of one minute's worth, counting a request
    /// when it arrives.
    struct ApiBucket {
        per_minute: f64,
        level: f64,
        at_ms: u64,
    }

    impl ApiBucket {
        fn arrive(&mut self, now_ms: u64) -> bool {
            let elapsed = (now_ms - self.at_ms) as f64;
            self.level = (self.level + elapsed * self.per_minute / 60_000.0).min(self.per_minute);
            self.at_ms = now_ms;
            // A hair of slack for floating point; the bucket itself is exact.
            if self.level >= 1.0 - 1e-9 {
                self.level -= 1.0;
                true
            } else {
                false
            }
        }
    }

    #[test]
    fn the_api_never_refuses_whatever_the_delay_before_a_request_reaches_it() {
        // 30 a minute at the default burst, four workers, 1 ms steps over ten minutes.
        // Requests reach the API after a delay (most of a second when a worker starts cold),
        // finish later still, and workers sometimes idle long enough for both buckets to
        // fill up again: the cases where counting at the permit alone runs ahead of the API.
        const RATE: u64 = 30;
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, Some((RATE, RATE)), None);
        let mut api = ApiBucket {
            per_minute: RATE as f64,
            level: RATE as f64,
            at_ms: 0,
        };
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut random = |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        #[derive(Clone, Copy)]
        enum Worker {
            Idle { until: u64, cold: bool },
            Waiting { ticket: Ticket, cold: bool },
            InFlight { arrives: u64, lands: u64 },
        }
        let mut workers = [Worker::Idle {
            until: 0,
            cold: true,
        }; 4];
        let (mut sent, mut refused) = (0u32, 0u32);
        for now_ms in 0..600_000u64 {
            let now = t0 + millis(now_ms);
            for w in &mut workers {
                match *w {
                    Worker::Idle { until, cold } if until <= now_ms => {
                        let ticket = b.join(0);
                        *w = Worker::Waiting { ticket, cold };
                    }
                    Worker::InFlight { arrives, lands } => {
                        if arrives == now_ms && !api.arrive(now_ms) {
                            refused += 1;
                        }
                        if lands == now_ms {
                            b.settle(now, Grant::new(0, 1), 0);
                            let (until, cold) = match random(10) {
                                0 => (now_ms + 20_000 + random(60_000), true),
                                _ => (now_ms, false),
                            };
                            *w = Worker::Idle { until, cold };
                        }
                    }
                    _ => {}
                }
                if let Worker::Waiting { ticket, cold } = *w {
                    if b.try_acquire(now, ticket).is_ok() {
                        sent += 1;
                        let delay = if cold {
                            700 + random(800)
                        } else {
                            5 + random(80)
                        };
                        let arrives = now_ms + delay;
                        *w = Worker::InFlight {
                            arrives,
                            lands: arrives + 20 + random(3_000),
                        };
                    }
                }
            }
        }
        assert_eq!(
            refused, 0,
            "{refused} of {sent} requests refused by the API"
        );
        // Ten minutes at 30 a minute with idle spells: well over half the limit went out.
        assert!(sent > 150, "only {sent} requests sent");
    }

    #[test]
    fn oversized_request_is_admitted_into_debt_once_full() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, None, Some((60, 60)));
        assert_eq!(try_now(&mut b, t0, 1), grant(1));
        // 59 of 60: one more second until full.
        assert_eq!(try_now(&mut b, t0, 100), Err(t0 + secs(1)));
        let t1 = t0 + secs(1);
        assert_eq!(try_now(&mut b, t1, 100), grant(100));
        // Level -40: the next oversized one needs a full bucket again, 100 s later.
        assert_eq!(try_now(&mut b, t1, 100), Err(t1 + secs(100)));
    }

    #[test]
    fn waiters_are_served_in_arrival_order() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, None, Some((60, 60)));
        assert_eq!(try_now(&mut b, t0, 60), grant(60));
        let big = b.join(60);
        let small = b.join(1);
        assert_eq!(b.waiters(), 2);
        assert_eq!(b.try_acquire(t0, big), Err(t0 + secs(60)));
        // One token is there after a second, but the big waiter is ahead.
        let t1 = t0 + secs(1);
        assert_eq!(b.try_acquire(t1, small), Err(t0 + secs(60)));
        // A newcomer queues too, rather than slipping in.
        assert_eq!(try_now(&mut b, t1, 1), Err(t0 + secs(60)));

        // The small waiter's poll admits the big one on its behalf, then waits its turn: for
        // the big one to settle (it holds the whole minute's worth), then for the refill.
        let t60 = t0 + secs(60);
        assert!(b.try_acquire(t60, small).unwrap_err() > t60 + secs(3600));
        assert_eq!(b.waiters(), 2);
        let granted = b.try_acquire(t60, big).unwrap();
        assert_eq!(granted, grant(60).unwrap());
        b.settle(t60, granted, 60);
        assert_eq!(b.try_acquire(t60, small), Err(t60 + secs(1)));
        assert_eq!(b.try_acquire(t60 + secs(1), small), grant(1));
        assert_eq!(b.waiters(), 0);
    }

    #[test]
    fn one_poll_admits_every_head_that_fits() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, Some((60, 60)), None);
        b.pause_until(t0 + secs(5));
        let tickets: Vec<_> = (0..3).map(|_| b.join(0)).collect();
        assert_eq!(b.try_acquire(t0, tickets[2]), Err(t0 + secs(5)));
        assert_eq!(b.try_acquire(t0 + secs(5), tickets[2]), grant(0));
        // The others were admitted by that poll and only need to collect.
        assert_eq!(b.waiters(), 2);
        assert_eq!(b.try_acquire(t0 + secs(5), tickets[0]), grant(0));
        assert_eq!(b.try_acquire(t0 + secs(5), tickets[1]), grant(0));
    }

    #[test]
    fn cancelled_head_unblocks_the_queue_and_grants_are_given_back() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, Some((60, 60)), Some((60, 60)));
        assert_eq!(try_now(&mut b, t0, 50), grant(50));
        let big = b.join(60);
        let small = b.join(10);
        assert_eq!(b.try_acquire(t0, small), Err(t0 + secs(50)));
        b.cancel(t0, big);
        assert_eq!(b.try_acquire(t0, small), grant(10));

        // A grant made on a waiter's behalf is returned when it cancels.
        let first = b.join(0);
        let second = b.join(0);
        assert_eq!(b.try_acquire(t0, second), grant(0));
        b.cancel(t0, first);
        assert_eq!(b.waiters(), 0);
        // 60 - 1 (first try) - 1 (small) - 1 (second) requests are left, not one fewer.
        for _ in 0..57 {
            assert_eq!(try_now(&mut b, t0, 0), grant(0));
        }
        assert!(try_now(&mut b, t0, 0).is_err());
    }

    #[test]
    fn pause_blocks_until_its_end_and_is_only_extended() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, Some((60, 60)), None);
        b.pause_until(t0 + secs(20));
        b.pause_until(t0 + secs(10));
        assert_eq!(b.paused_until(t0), Some(t0 + secs(20)));
        assert_eq!(try_now(&mut b, t0 + secs(5), 0), Err(t0 + secs(20)));
        b.pause_until(t0 + secs(30));
        assert_eq!(try_now(&mut b, t0 + secs(20), 0), Err(t0 + secs(30)));
        assert_eq!(try_now(&mut b, t0 + secs(30), 0), grant(0));
        assert_eq!(b.paused_until(t0 + secs(30)), None);
    }

    #[test]
    fn pause_and_rate_limit_combine() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, Some((60, 1)), None);
        assert_eq!(try_now(&mut b, t0, 0), grant(0));
        b.pause_until(t0 + millis(500));
        // The pause ends first; the refill decides.
        assert_eq!(try_now(&mut b, t0, 0), Err(t0 + secs(1)));
    }

    #[test]
    fn extra_requests_are_charged_without_waiting() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, Some((60, 60)), None);
        b.note_extra_requests(t0, 62);
        // Level -2: one request needs 3 s.
        assert_eq!(try_now(&mut b, t0, 0), Err(t0 + secs(3)));
        assert_eq!(try_now(&mut b, t0 + secs(3), 0), grant(0));
    }

    #[test]
    fn unlimited_bucket_never_waits() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, None, None);
        b.note_extra_requests(t0, u32::MAX);
        b.settle(t0, Grant::new(0, 1), u64::MAX);
        for _ in 0..1000 {
            assert_eq!(try_now(&mut b, t0, u64::MAX), grant(u64::MAX));
        }
    }

    #[test]
    fn huge_debt_does_not_overflow() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, Some((1, 1)), Some((1, 1)));
        b.settle(t0, Grant::new(0, 1), u64::MAX);
        b.note_extra_requests(t0, u32::MAX);
        assert_eq!(try_now(&mut b, t0, 1), Err(t0 + MAX_WAIT));
    }

    #[test]
    fn instants_out_of_order_do_not_drain_the_bucket() {
        let t0 = Instant::now() + secs(10);
        let mut b = Bucket::new(t0, Some((60, 1)), None);
        assert_eq!(try_now(&mut b, t0, 0), grant(0));
        assert_eq!(
            try_now(&mut b, t0 - secs(5), 0),
            Err(t0 - secs(5) + secs(1))
        );
        assert_eq!(try_now(&mut b, t0 + secs(1), 0), grant(0));
    }
}
