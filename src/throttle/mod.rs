//! A shared token bucket that keeps a pool of CLI processes under the API's rate limits.
//!
//! The bucket has two dimensions, requests per minute and tokens per minute, refilled
//! continuously. The pure core, `Bucket`, does all the arithmetic on explicit
//! [`Instant`]s so it can be tested without a clock; [`Throttle`] is the thin blocking shell
//! around it (a `parking_lot` mutex and condition variable).
//!
//! The API counts a request when it arrives, which can be well after the permit (a cold CLI
//! process takes most of a second to send its first request). While the API's own bucket is
//! full it drops its refill, so a bucket that counted from the permit alone would run ahead
//! of the API's after an idle spell and send a request the API refuses. The refill therefore
//! stops at one minute's worth minus what is in flight (granted and not yet settled): the
//! bucket's level plus the requests not yet arrived never exceeds the API's level.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::Error;

mod bucket;
#[cfg(test)]
mod bucket_properties;

use bucket::{Bucket, Grant, Ticket};

/// Longest a waiter sleeps before rechecking `should_stop`, even when nothing wakes it.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The tokens a prompt costs before it is sent: about four bytes per token, rounded up.
/// Only a ballpark: a permit is settled with the real usage once it is known.
pub(crate) fn estimate_tokens(prompt: &str) -> u64 {
    prompt.len().div_ceil(4) as u64
}

/// A shared token bucket limiting requests per minute and tokens per minute across every
/// process of a pool.
///
/// Each dimension may be unlimited (`None`). Both refill continuously at their rate and hold
/// at most a burst's worth, by default one minute's worth, which is how the Anthropic API
/// documents its own limits; the bucket starts full. Every item waits for one more request
/// costing its estimated tokens, in arrival order, so a large item is never overtaken forever
/// by small ones.
///
/// Token costs are estimated up front (prompt bytes / 4, plus the rest of the request and
/// an allowance for the answer) and corrected once the real usage is known, so the bucket can
/// go into debt, and a refund lets the next item go. A single item larger than the whole
/// burst goes, into debt, once the bucket is full, so it is never starved. After a 429 or 529
/// every item on the throttle holds off for as long as the API asked
/// ([`paused_until`](Throttle::paused_until)).
///
/// Until an item's answer is in, its request counts as in flight: the API may not have seen
/// it yet, so the bucket never refills beyond one minute's worth minus what is in flight. This
/// only matters near a full bucket (ARCHITECTURE.md, "Throttle").
///
/// Share it as `Arc<Throttle>`.
///
/// # Examples
///
/// Two sessions that use one API key share one throttle, so that together they stay under
/// its limits:
///
/// ```
/// use std::sync::Arc;
/// use claude_rayon::{Session, Throttle};
///
/// // 50 requests and 40,000 tokens per minute, bursts of at most 10 requests.
/// let throttle = Arc::new(
///     Throttle::new(Some(50), Some(40_000))
///         .and_then(|t| t.with_burst(Some(10), None))
///         .expect("valid limits"),
/// );
/// let reviews = Session::builder().model("sonnet").throttle(Arc::clone(&throttle));
/// let summaries = Session::builder().model("haiku").throttle(Arc::clone(&throttle));
/// assert_eq!(throttle.requests_per_minute(), Some(50));
/// assert!(throttle.paused_until().is_none());
/// ```
#[derive(Debug)]
pub struct Throttle {
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u64>,
    /// The limits with their bursts, as a remote bucket is told them on every call.
    limits: Limits,
    /// Shared with the permits, so that a dropped permit can settle itself.
    state: Arc<Mutex<State>>,
    changed: Arc<Condvar>,
    /// Where the bucket lives when other programs share it (`Throttle::redis`); `None`: in
    /// `state`, this process only.
    remote: Option<Arc<dyn RemoteBucket>>,
}

/// `(per_minute, burst)` of each limited dimension, as the bucket and a remote one take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) requests: Option<(u64, u64)>,
    pub(crate) tokens: Option<(u64, u64)>,
}

/// A bucket held outside this process and shared by every program on it (src/scale/): the
/// same arithmetic as `Bucket`, done atomically where it lives, on that place's clock.
/// Arrival order among this process's waiters is kept here, by the shell; across programs
/// whoever asks first when there is room goes first.
pub(crate) trait RemoteBucket: Send + Sync + fmt::Debug {
    /// Takes `requests` requests and `tokens` tokens if both fit now. `Ok(None)`: granted;
    /// `Ok(Some(wait))`: not before `wait` (a refill or a pause); `Err(reason)`: the store
    /// cannot be reached, nothing was taken.
    fn try_take(
        &self,
        limits: Limits,
        tokens: u64,
        requests: u64,
    ) -> Result<Option<Duration>, String>;
    /// Ends a grant of `granted` (tokens, requests) with what really happened; kept and sent
    /// again later when the store cannot be reached.
    fn settle(&self, limits: Limits, granted: (u64, u64), actual_tokens: u64, actual_requests: u64);
    /// Charges `n` requests made without a grant.
    fn note_extra_requests(&self, limits: Limits, n: u32);
    /// The API's word on what is left (see `Bucket::at_most`).
    fn at_most(&self, limits: Limits, requests: Option<u64>, tokens: Option<u64>);
    /// Holds every program off for `wait` from now.
    fn pause_for(&self, limits: Limits, wait: Duration);
    /// Where the store is, for messages (no password).
    fn address(&self) -> String;
}

#[derive(Debug)]
struct State {
    bucket: Bucket,
    /// Bumped by `wake_all`, so a waiter that was checking `should_stop` (unlocked) when
    /// the notification went out still notices it.
    wake_epoch: u64,
    /// A remote bucket's waiters in this process, in arrival order: only the head asks it.
    remote_queue: RemoteQueue,
    /// The remote bucket could not be reached at the last try (said once, until it answers).
    remote_down: bool,
    /// The end of the last pause this process asked a remote bucket for.
    remote_paused_until: Option<Instant>,
}

/// Tickets for a remote bucket's waiters: `serving` is the head; abandoned tickets are
/// skipped when the head moves on.
#[derive(Debug, Default)]
struct RemoteQueue {
    next: u64,
    serving: u64,
    abandoned: std::collections::BTreeSet<u64>,
}

impl RemoteQueue {
    fn advance(&mut self) {
        self.serving += 1;
        while self.abandoned.remove(&self.serving) {
            self.serving += 1;
        }
    }

    fn leave(&mut self, ticket: u64) {
        if ticket == self.serving {
            self.advance();
        } else {
            self.abandoned.insert(ticket);
        }
    }
}

impl State {
    fn new(bucket: Bucket) -> State {
        State {
            bucket,
            wake_epoch: 0,
            remote_queue: RemoteQueue::default(),
            remote_down: false,
            remote_paused_until: None,
        }
    }
}

/// Permission to send one request, from [`Throttle::acquire`].
///
/// [`settle`](Permit::settle) it with the real usage. Dropping it instead settles it with
/// the estimate: the estimate was charged when it was granted, so nothing leaks, and the
/// request stops counting as in flight.
#[must_use = "settle the permit with the real token usage"]
pub(crate) struct Permit {
    /// What was charged: the estimated tokens, and 1 request or the calls an item was
    /// expected to make.
    grant: Grant,
    waited: Duration,
    /// The throttle's state, until settled.
    release: Option<Release>,
}

/// Where a permit goes back to.
enum Release {
    Local(Arc<Mutex<State>>, Arc<Condvar>),
    Remote(Arc<dyn RemoteBucket>, Limits),
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("estimated_tokens", &self.grant.tokens)
            .field("waited", &self.waited)
            .finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.settle_with(self.grant.tokens, self.grant.requests);
    }
}

impl Permit {
    /// Ends the grant on its throttle, once; waiters may fit now that it has landed.
    fn settle_with(&mut self, actual_tokens: u64, actual_requests: u64) {
        let grant = self.grant;
        match self.release.take() {
            Some(Release::Local(state, changed)) => {
                state.lock().bucket.settle_calls(
                    Instant::now(),
                    grant,
                    actual_tokens,
                    actual_requests,
                );
                changed.notify_all();
            }
            Some(Release::Remote(remote, limits)) => remote.settle(
                limits,
                (grant.tokens, grant.requests),
                actual_tokens,
                actual_requests,
            ),
            None => {}
        }
    }

    /// Settles with the tokens used and the API calls really made: a refund when below the
    /// estimate, debt when above; calls expected and not made are refunded, calls beyond
    /// them charged. The request no longer counts as in flight, and the waiters are woken.
    pub(crate) fn settle(mut self, actual_tokens: u64, calls: u64) {
        if actual_tokens > self.grant.tokens {
            log::trace!(
                "throttle: request used {actual_tokens} tokens, {} estimated",
                self.grant.tokens
            );
        }
        self.settle_with(actual_tokens, calls);
    }

    /// The request was not sent after all: refund all of it.
    pub(crate) fn give_back(self) {
        self.settle(0, 0);
    }

    /// The tokens charged for this permit when it was granted.
    #[cfg(test)]
    pub(crate) fn estimated_tokens(&self) -> u64 {
        self.grant.tokens
    }

    /// How long [`Throttle::acquire`] blocked before granting this permit.
    pub(crate) fn waited(&self) -> Duration {
        self.waited
    }
}

/// [`Throttle::acquire`] gave up because its `should_stop` returned true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WaitAbandoned;

impl Throttle {
    /// A throttle allowing `requests_per_minute` requests and `tokens_per_minute` tokens
    /// per minute; `None` leaves that dimension unlimited.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if either limit is zero.
    pub fn new(
        requests_per_minute: Option<u32>,
        tokens_per_minute: Option<u64>,
    ) -> Result<Throttle, Error> {
        if requests_per_minute == Some(0) {
            return Err(Error::InvalidConfig(
                "requests per minute must be at least 1 (use None for unlimited)".into(),
            ));
        }
        if tokens_per_minute == Some(0) {
            return Err(Error::InvalidConfig(
                "tokens per minute must be at least 1 (use None for unlimited)".into(),
            ));
        }
        let requests = requests_per_minute.map(|r| (u64::from(r), u64::from(r)));
        let tokens = tokens_per_minute.map(|t| (t, t));
        Ok(Throttle {
            requests_per_minute,
            tokens_per_minute,
            limits: Limits { requests, tokens },
            state: Arc::new(Mutex::new(State::new(Bucket::new(
                Instant::now(),
                requests,
                tokens,
            )))),
            changed: Arc::new(Condvar::new()),
            remote: None,
        })
    }

    /// Overrides the burst (bucket capacity) of each dimension; `None` keeps the default of
    /// one minute's worth. The bucket is refilled to the new capacity, so call this when
    /// building the throttle, before sharing it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if a burst is zero, above one minute's worth (the API's own
    /// bucket holds no more: the excess would come back as 429s), or given for a dimension
    /// that is unlimited.
    ///
    /// # Examples
    ///
    /// ```
    /// use claude_rayon::Throttle;
    ///
    /// let smooth = Throttle::new(Some(60), None)?.with_burst(Some(5), None)?;
    /// assert_eq!(smooth.requests_per_minute(), Some(60));
    /// assert!(Throttle::new(Some(60), None)?.with_burst(Some(61), None).is_err());
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn with_burst(self, requests: Option<u32>, tokens: Option<u64>) -> Result<Throttle, Error> {
        fn check<T: PartialOrd + From<u8>>(
            burst: Option<T>,
            limit: Option<T>,
            what: &str,
        ) -> Result<(), Error> {
            match burst {
                Some(b) if b == T::from(0) => Err(Error::InvalidConfig(format!(
                    "{what} burst must be at least 1"
                ))),
                Some(_) if limit.is_none() => Err(Error::InvalidConfig(format!(
                    "{what} burst given but {what} per minute is unlimited"
                ))),
                Some(b) if limit.is_some_and(|l| b > l) => Err(Error::InvalidConfig(format!(
                    "a {what} burst above one minute's worth ({what} per minute) would send \
                     more at once than the API's own bucket holds, and get 429s"
                ))),
                _ => Ok(()),
            }
        }
        check(requests, self.requests_per_minute, "requests")?;
        check(tokens, self.tokens_per_minute, "tokens")?;
        let requests = self
            .requests_per_minute
            .map(|r| (u64::from(r), u64::from(requests.unwrap_or(r))));
        let tokens = self.tokens_per_minute.map(|t| (t, tokens.unwrap_or(t)));
        // A new state: permits granted before this (there should be none) keep the old one.
        Ok(Throttle {
            limits: Limits { requests, tokens },
            state: Arc::new(Mutex::new(State::new(Bucket::new(
                Instant::now(),
                requests,
                tokens,
            )))),
            ..self
        })
    }

    /// A throttle that never waits.
    pub fn unlimited() -> Throttle {
        Throttle::new(None, None).expect("no limits is a valid configuration")
    }

    /// Blocks until one request costing `estimated_tokens` is allowed, in arrival order.
    ///
    /// `should_stop` is checked before blocking, whenever the waiter is woken (see
    /// [`wake_all`](Throttle::wake_all)) and at least every 50 ms; it runs without the
    /// throttle's lock held.
    ///
    /// # Errors
    ///
    /// [`WaitAbandoned`] if `should_stop` returned true before the request was admitted; the
    /// caller then holds no permit and has been charged nothing.
    #[cfg(test)]
    pub(crate) fn acquire(
        &self,
        estimated_tokens: u64,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Permit, WaitAbandoned> {
        self.acquire_calls(estimated_tokens, 1, should_stop)
    }

    /// As [`acquire`](Self::acquire), for an item expected to make `requests` API calls.
    pub(crate) fn acquire_calls(
        &self,
        estimated_tokens: u64,
        requests: u64,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Permit, WaitAbandoned> {
        if let Some(remote) = &self.remote {
            return self.acquire_remote(remote, estimated_tokens, requests.max(1), should_stop);
        }
        let start = Instant::now();
        let mut state = self.state.lock();
        let ticket = state.bucket.join_calls(estimated_tokens, requests);
        let mut check_stop = true;
        // Admitted on the first poll means no wait, whatever the lock took.
        let mut first_poll = true;
        loop {
            let now = Instant::now();
            let polled_before = !std::mem::replace(&mut first_poll, false);
            let ready_at = match state.bucket.try_acquire(now, ticket) {
                Ok(grant) => {
                    // Our poll may have admitted the waiters behind us too.
                    if state.bucket.waiters() > 0 {
                        self.changed.notify_all();
                    }
                    return Ok(Permit {
                        grant,
                        waited: if polled_before {
                            now.saturating_duration_since(start)
                        } else {
                            Duration::ZERO
                        },
                        release: Some(Release::Local(
                            Arc::clone(&self.state),
                            Arc::clone(&self.changed),
                        )),
                    });
                }
                Err(ready_at) => ready_at,
            };
            if check_stop {
                let epoch = state.wake_epoch;
                // Unlocked, so a `should_stop` that touches this throttle cannot deadlock;
                // a panic in it must not leave our ticket blocking the queue forever.
                let stop = MutexGuard::unlocked(&mut state, || {
                    panic::catch_unwind(AssertUnwindSafe(should_stop))
                });
                match stop {
                    Ok(false) => {
                        // The state may have changed while unlocked: poll again before
                        // sleeping, and recheck `should_stop` if `wake_all` was missed.
                        check_stop = state.wake_epoch != epoch;
                        continue;
                    }
                    Ok(true) => {
                        self.leave(&mut state, ticket);
                        return Err(WaitAbandoned);
                    }
                    Err(payload) => {
                        self.leave(&mut state, ticket);
                        drop(state);
                        panic::resume_unwind(payload);
                    }
                }
            }
            self.changed
                .wait_until(&mut state, ready_at.min(now + POLL_INTERVAL));
            check_stop = true;
        }
    }

    /// A throttle whose bucket is `remote`, shared with other programs, at these limits.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn with_remote(self, remote: Arc<dyn RemoteBucket>) -> Throttle {
        Throttle {
            remote: Some(remote),
            ..self
        }
    }

    /// `acquire_calls` on a remote bucket: this process's waiters queue here, and the head
    /// asks the remote bucket until it grants, waiting as long as it says. While it cannot be
    /// reached nothing is admitted: the head says so once (a warning naming the address and
    /// the reason) and asks again with a growing backoff, until it answers or `should_stop`.
    fn acquire_remote(
        &self,
        remote: &Arc<dyn RemoteBucket>,
        estimated_tokens: u64,
        requests: u64,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Permit, WaitAbandoned> {
        const FIRST_BACKOFF: Duration = Duration::from_millis(100);
        const MAX_BACKOFF: Duration = Duration::from_secs(2);
        // A refund by another program wakes nobody here: ask again at least this often.
        const LONGEST_WAIT: Duration = Duration::from_millis(500);
        let start = Instant::now();
        let mut state = self.state.lock();
        let ticket = state.remote_queue.next;
        state.remote_queue.next += 1;
        let mut backoff = FIRST_BACKOFF;
        let mut asked = false;
        loop {
            let mut sleep = POLL_INTERVAL;
            if state.remote_queue.serving == ticket {
                let limits = self.limits;
                let taken = MutexGuard::unlocked(&mut state, || {
                    remote.try_take(limits, estimated_tokens, requests)
                });
                match taken {
                    Ok(None) => {
                        if std::mem::replace(&mut state.remote_down, false) {
                            log::warn!(
                                "shared throttle at {} answers again; admitting requests",
                                remote.address()
                            );
                        }
                        state.remote_queue.advance();
                        self.changed.notify_all();
                        return Ok(Permit {
                            grant: Grant::remote(estimated_tokens, requests),
                            waited: if asked {
                                start.elapsed()
                            } else {
                                Duration::ZERO
                            },
                            release: Some(Release::Remote(Arc::clone(remote), limits)),
                        });
                    }
                    Ok(Some(wait)) => {
                        if std::mem::replace(&mut state.remote_down, false) {
                            log::warn!(
                                "shared throttle at {} answers again; admitting requests",
                                remote.address()
                            );
                        }
                        backoff = FIRST_BACKOFF;
                        sleep = wait.min(LONGEST_WAIT);
                    }
                    Err(reason) => {
                        if !std::mem::replace(&mut state.remote_down, true) {
                            log::warn!(
                                "shared throttle at {} cannot be reached ({reason}); no request \
                                 is sent until it answers, asking again every {MAX_BACKOFF:?} at most",
                                remote.address()
                            );
                        }
                        sleep = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                asked = true;
            }
            let stop = MutexGuard::unlocked(&mut state, || {
                panic::catch_unwind(AssertUnwindSafe(should_stop))
            });
            match stop {
                Ok(false) => {}
                Ok(true) => {
                    state.remote_queue.leave(ticket);
                    self.changed.notify_all();
                    return Err(WaitAbandoned);
                }
                Err(payload) => {
                    state.remote_queue.leave(ticket);
                    self.changed.notify_all();
                    drop(state);
                    panic::resume_unwind(payload);
                }
            }
            let epoch = state.wake_epoch;
            let until = Instant::now() + sleep;
            // Woken early by a new head, a `wake_all` (then `should_stop` is checked again).
            while state.wake_epoch == epoch
                && !self.changed.wait_until(&mut state, until).timed_out()
                && state.remote_queue.serving != ticket
            {}
        }
    }

    fn leave(&self, state: &mut State, ticket: Ticket) {
        state.bucket.cancel(Instant::now(), ticket);
        // The queue head may have changed, or a grant been given back.
        self.changed.notify_all();
    }

    /// Charges `n` requests made without a permit, such as the CLI's own internal retries.
    /// Never waits; the bucket may go into debt.
    pub(crate) fn note_extra_requests(&self, n: u32) {
        if let Some(remote) = &self.remote {
            if n > 0 {
                remote.note_extra_requests(self.limits, n);
            }
            return;
        }
        if n > 0 {
            self.state
                .lock()
                .bucket
                .note_extra_requests(Instant::now(), n);
        }
    }

    /// Makes every [`acquire`](Throttle::acquire) wait until at least `until`, for a shared
    /// back-off after a rate-limit or overload error. A later instant extends the pause; an
    /// earlier one does not shorten it.
    pub(crate) fn pause_until(&self, until: Instant) {
        let mut state = self.state.lock();
        if let Some(remote) = &self.remote {
            if state.remote_paused_until.is_none_or(|p| p < until) {
                state.remote_paused_until = Some(until);
                drop(state);
                remote.pause_for(self.limits, until.saturating_duration_since(Instant::now()));
            }
            return;
        }
        // Log only when this pause outlasts the one in force, to keep repeats quiet.
        if state.bucket.paused_until(until).is_none() {
            log::debug!(
                "throttle: pausing all requests for {:?}",
                until.saturating_duration_since(Instant::now())
            );
        }
        state.bucket.pause_until(until);
    }

    /// Takes the API's word on what its rate limits have left (whole requests and tokens):
    /// where it has less room than the bucket thinks, the bucket comes down to it (never up:
    /// the API counts requests ours has not sent yet).
    pub(crate) fn at_most(&self, requests: Option<u64>, tokens: Option<u64>) {
        if let Some(remote) = &self.remote {
            remote.at_most(self.limits, requests, tokens);
            return;
        }
        let mut state = self.state.lock();
        state.bucket.at_most(Instant::now(), requests, tokens);
    }

    /// The end of the current pause, or `None` if no pause is in force.
    ///
    /// On a shared throttle ([`Throttle::redis`]), the pauses this program asked for.
    pub fn paused_until(&self) -> Option<Instant> {
        let state = self.state.lock();
        if self.remote.is_some() {
            return state.remote_paused_until.filter(|p| *p > Instant::now());
        }
        state.bucket.paused_until(Instant::now())
    }

    /// How many callers are currently blocked in [`acquire`](Throttle::acquire).
    #[cfg(test)]
    pub(crate) fn waiters(&self) -> usize {
        self.state.lock().bucket.waiters()
    }

    /// Wakes every blocked [`acquire`](Throttle::acquire) so it rechecks its `should_stop`.
    pub(crate) fn wake_all(&self) {
        let mut state = self.state.lock();
        state.wake_epoch = state.wake_epoch.wrapping_add(1);
        self.changed.notify_all();
    }

    /// The requests-per-minute limit, `None` if unlimited.
    pub fn requests_per_minute(&self) -> Option<u32> {
        self.requests_per_minute
    }

    /// The tokens-per-minute limit, `None` if unlimited.
    pub fn tokens_per_minute(&self) -> Option<u64> {
        self.tokens_per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn estimate_is_bytes_over_four_rounded_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("ééé"), 2); // 6 bytes
    }

    // ---- configuration ----

    #[test]
    fn invalid_configurations_are_rejected() {
        assert!(matches!(
            Throttle::new(Some(0), None),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            Throttle::new(None, Some(0)),
            Err(Error::InvalidConfig(_))
        ));
        let t = || Throttle::new(Some(10), Some(1000)).unwrap();
        assert!(matches!(
            t().with_burst(Some(0), None),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            t().with_burst(None, Some(0)),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            Throttle::new(None, Some(1000))
                .unwrap()
                .with_burst(Some(5), None),
            Err(Error::InvalidConfig(_))
        ));
        // Above one minute's worth, the API's own bucket would refuse the excess.
        for above in [
            t().with_burst(Some(11), None),
            t().with_burst(None, Some(1001)),
        ] {
            match above {
                Err(Error::InvalidConfig(message)) => assert!(message.contains("429"), "{message}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(t().with_burst(Some(10), Some(1000)).is_ok());
        let t = Throttle::unlimited();
        assert_eq!(
            (t.requests_per_minute(), t.tokens_per_minute()),
            (None, None)
        );
        let t = Throttle::new(Some(10), Some(1000))
            .unwrap()
            .with_burst(Some(3), None)
            .unwrap();
        assert_eq!(t.requests_per_minute(), Some(10));
        assert_eq!(t.tokens_per_minute(), Some(1000));
    }

    #[test]
    fn throttle_is_shareable() {
        fn check<T: Send + Sync + std::fmt::Debug>() {}
        check::<Throttle>();
        check::<Permit>();
    }

    // ---- blocking shell ----

    /// Polls (never a fixed sleep) until `n` callers are blocked in `acquire`.
    fn wait_for_waiters(t: &Throttle, n: usize) {
        let deadline = Instant::now() + secs(10);
        while t.waiters() != n {
            assert!(
                Instant::now() < deadline,
                "expected {n} waiters, have {}",
                t.waiters()
            );
            thread::yield_now();
        }
    }

    const NEVER: &dyn Fn() -> bool = &|| false;

    /// Runs `acquire` on another thread, stopping when `stop` is set. Results come back on a
    /// channel so a broken throttle fails the test by timeout instead of hanging it.
    fn spawn_acquire(
        t: &Arc<Throttle>,
        tokens: u64,
        stop: &Arc<AtomicBool>,
    ) -> mpsc::Receiver<Result<Permit, WaitAbandoned>> {
        let (tx, rx) = mpsc::channel();
        let (t, stop) = (Arc::clone(t), Arc::clone(stop));
        thread::spawn(move || {
            let _ = tx.send(t.acquire(tokens, &|| stop.load(Ordering::SeqCst)));
        });
        rx
    }

    fn recv<T>(rx: &mpsc::Receiver<T>) -> T {
        rx.recv_timeout(secs(10))
            .expect("acquire should have returned")
    }

    fn stop_flag() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(false))
    }

    #[test]
    fn with_burst_limits_the_first_burst() {
        // Sixty a minute, but at most two at once.
        let t = Throttle::new(Some(60), None)
            .unwrap()
            .with_burst(Some(2), None)
            .unwrap();
        let _a = t.acquire(0, NEVER).unwrap();
        let _b = t.acquire(0, NEVER).unwrap();
        let t = Arc::new(t);
        let stop = stop_flag();
        let rx = spawn_acquire(&t, 0, &stop);
        wait_for_waiters(&t, 1);
        stop.store(true, Ordering::SeqCst);
        t.wake_all();
        assert_eq!(recv(&rx).map(drop), Err(WaitAbandoned));
    }

    #[test]
    fn refund_lets_a_blocked_waiter_proceed() {
        let t = Arc::new(Throttle::new(None, Some(60)).unwrap());
        let permit = t.acquire(60, NEVER).unwrap();
        assert_eq!(permit.estimated_tokens(), 60);
        // Without a refund this waits 30 s.
        let rx = spawn_acquire(&t, 30, &stop_flag());
        wait_for_waiters(&t, 1);
        permit.settle(10, 1);
        let got = recv(&rx).unwrap();
        assert_eq!(got.estimated_tokens(), 30);
        assert!(got.waited() > Duration::ZERO);
        assert_eq!(t.waiters(), 0);
    }

    #[test]
    fn blocked_waiters_are_admitted_in_arrival_order() {
        // 100 tokens per second, burst 10, and an hour's debt so nothing refills during setup.
        let t = Arc::new(
            Throttle::new(None, Some(6_000))
                .unwrap()
                .with_burst(None, Some(10))
                .unwrap(),
        );
        let debt = recv(&spawn_acquire(&t, 360_000, &stop_flag())).unwrap();
        let (tx, rx) = mpsc::channel();
        for (i, tokens) in [(0, 10), (1, 1), (2, 1)] {
            let (t2, tx) = (Arc::clone(&t), tx.clone());
            thread::spawn(move || {
                let p = t2.acquire(tokens, NEVER).unwrap();
                tx.send(i).unwrap();
                p.settle(tokens, 1);
            });
            wait_for_waiters(&t, i + 1);
        }
        // Refills to exactly the burst: the big head fits, the small ones must then wait.
        debt.settle(0, 1);
        let order: Vec<_> = (0..3).map(|_| recv(&rx)).collect();
        assert_eq!(order, [0, 1, 2]);
    }

    #[test]
    fn should_stop_ends_the_wait_after_wake_all() {
        let t = Arc::new(Throttle::new(Some(60), None).unwrap());
        t.pause_until(Instant::now() + secs(3600));
        assert!(t.paused_until().is_some());
        let stop = stop_flag();
        let rx = spawn_acquire(&t, 0, &stop);
        wait_for_waiters(&t, 1);
        stop.store(true, Ordering::SeqCst);
        t.wake_all();
        assert_eq!(recv(&rx).map(drop), Err(WaitAbandoned));
        assert_eq!(t.waiters(), 0);
    }

    #[test]
    fn should_stop_may_call_into_the_throttle() {
        let t = Arc::new(Throttle::new(Some(60), None).unwrap());
        t.pause_until(Instant::now() + secs(3600));
        let (tx, rx) = mpsc::channel();
        let t2 = Arc::clone(&t);
        thread::spawn(move || {
            let calls = std::sync::atomic::AtomicUsize::new(0);
            // Runs unlocked, so this neither deadlocks nor loses its own wake-up.
            let stop = || {
                t2.wake_all();
                calls.fetch_add(1, Ordering::SeqCst) == 1 && t2.waiters() == 1
            };
            let result = t2.acquire(0, &stop).map(drop);
            let _ = tx.send((result, calls.load(Ordering::SeqCst)));
        });
        assert_eq!(recv(&rx), (Err(WaitAbandoned), 2));
        assert_eq!(t.waiters(), 0);
    }

    #[test]
    fn stopping_head_lets_the_next_waiter_through() {
        let t = Arc::new(Throttle::new(None, Some(60)).unwrap());
        let _permit = t.acquire(50, NEVER).unwrap();
        let stop = stop_flag();
        // Needs 60 with 10 left: blocks everyone behind it for 50 s.
        let big = spawn_acquire(&t, 60, &stop);
        wait_for_waiters(&t, 1);
        let small = spawn_acquire(&t, 5, &stop_flag());
        wait_for_waiters(&t, 2);
        stop.store(true, Ordering::SeqCst);
        t.wake_all();
        assert_eq!(recv(&big).map(drop), Err(WaitAbandoned));
        assert_eq!(recv(&small).map(|p| p.estimated_tokens()), Ok(5));
    }

    #[test]
    fn panicking_should_stop_leaves_the_queue() {
        let t = Arc::new(Throttle::new(Some(60), None).unwrap());
        t.pause_until(Instant::now() + secs(3600));
        let (tx, rx) = mpsc::channel();
        let t2 = Arc::clone(&t);
        thread::spawn(move || {
            let result = panic::catch_unwind(AssertUnwindSafe(|| {
                let _ = t2.acquire(0, &|| panic!("should_stop panicked on purpose"));
            }));
            let _ = tx.send(result.is_err());
        });
        assert!(recv(&rx), "the panic should propagate");
        assert_eq!(t.waiters(), 0);
    }

    #[test]
    fn immediate_admission_does_not_consult_should_stop() {
        let t = Throttle::unlimited();
        let p = t.acquire(5, &|| true).unwrap();
        assert_eq!(p.estimated_tokens(), 5);
        p.settle(7, 1);
        t.note_extra_requests(3);
        assert_eq!(t.waiters(), 0);
        assert_eq!(t.paused_until(), None);
    }
}
