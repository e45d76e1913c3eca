//! Warming the prompt cache: one item goes first while the shared prefix is cold.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

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

/// The item warming the prompt cache; if it ends without an answer, the next one warms.
pub(crate) struct Warming<'a>(&'a CacheGate, u64);

impl<'a> Warming<'a> {
    pub(crate) fn new(gate: &'a CacheGate, ticket: u64) -> Warming<'a> {
        Warming(gate, ticket)
    }
}

impl Drop for Warming<'_> {
    fn drop(&mut self) {
        self.0.gave_up(self.1);
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
