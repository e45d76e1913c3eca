//! The throttle's bucket in Redis: [`Throttle::redis`].
//!
//! One hash holds the two levels, when they were last refilled and the shared pause; a second
//! hash what each program has in flight; and each program with something in flight keeps a
//! lease key with a time-to-live, refreshed while it runs. The Lua script below does the
//! arithmetic of `throttle::bucket` atomically on the server's clock (`TIME`), so programs on
//! machines whose clocks differ agree, and drops the in-flight share of a program whose
//! lease ended (it died holding grants): the ceiling `limit − in flight` comes back up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use super::{every_tick, flush_before_drop, program_id, Store, LEASE};
use crate::throttle::{Limits, RemoteBucket};
use crate::{Error, Throttle};

/// KEYS: state hash, in-flight hash, lease-key prefix, the bucket's birth mark, the prefix of
/// each program's last change applied. ARGV: op, program, lease ms, the level of a bucket
/// made now (1 full, 0 empty), requests rate and burst, tokens rate and burst (0 =
/// unlimited), the op's four numbers, how long the hashes outlive the last call (ms), then
/// the change's sequence number (0: an op never sent twice). Replies {granted or done, wait
/// µs, made now: 0 no, 1 new or lost, 2 after it expired idle}.
const SCRIPT: &str = r#"
local op, program = ARGV[1], ARGV[2]
-- A change (settle, extra requests, pause) whose answer was lost to a timeout is sent again,
-- though the server may have applied it: applied twice, a settle's refund would pass the
-- limit. A program sends its changes one at a time in order, so the number of the last one
-- applied tells a repeat.
local sequence = tonumber(ARGV[14])
if sequence > 0 then
  local applied = KEYS[5] .. program
  if sequence <= tonumber(redis.call('GET', applied) or '0') then return {1, 0, 0} end
  redis.call('SET', applied, sequence, 'PX', 86400000)
end
local lease_ms, fresh = tonumber(ARGV[3]), tonumber(ARGV[4])
local rr, rb, tr, tb = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local a, b, c, d = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local idle_ms = tonumber(ARGV[13])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local s = redis.call('HMGET', KEYS[1], 'r', 't', 'at', 'pause')
local lr, lt, at, pause = tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4]) or 0
local made = 0
if at == nil then
  -- The birth mark never expires: with it, the bucket expired idle (full again, as the
  -- API's own); without it, it is new, or Redis lost everything (`fresh` says which).
  if redis.call('EXISTS', KEYS[4]) == 1 then fresh = 1; made = 2 else made = 1 end
  lr = rb * fresh; lt = tb * fresh; at = now
  redis.call('SET', KEYS[4], '1')
end
-- What is in flight, forgetting the programs whose lease ended.
local fr, ft = 0, 0
local flights = redis.call('HGETALL', KEYS[2])
for i = 1, #flights, 2 do
  if redis.call('EXISTS', KEYS[3] .. flights[i]) == 0 then
    redis.call('HDEL', KEYS[2], flights[i])
  else
    local r, k = string.match(flights[i + 1], '(%S+) (%S+)')
    fr = fr + tonumber(r); ft = ft + tonumber(k)
  end
end
local function flight(dr, dt)
  local mine = redis.call('HGET', KEYS[2], program)
  local r, k = 0, 0
  if mine then r, k = string.match(mine, '(%S+) (%S+)'); r = tonumber(r); k = tonumber(k) end
  local nr, nk = math.max(0, r + dr), math.max(0, k + dt)
  fr = math.max(0, fr + nr - r); ft = math.max(0, ft + nk - k)
  if nr == 0 and nk == 0 then redis.call('HDEL', KEYS[2], program)
  else redis.call('HSET', KEYS[2], program, string.format('%.0f %.0f', nr, nk)) end
end
-- The level refills up to the burst, and never past a minute's worth less what is in flight.
local function ceiling(rate, burst, inflight) return math.min(burst, rate - inflight) end
local function raise(level, added, rate, burst, inflight)
  local top = ceiling(rate, burst, inflight)
  if level < top then return math.min(top, level + added) end
  return level
end
local elapsed = math.max(0, now - at)
if rr > 0 then lr = raise(lr, rr * elapsed / 60e6, rr, rb, fr) end
if tr > 0 then lt = raise(lt, tr * elapsed / 60e6, tr, tb, ft) end
at = math.max(at, now)
local reply = {1, 0, made}
if op == 'take' then -- a tokens, b requests
  if pause > now then
    reply = {0, pause - now, made}
  else
    local wait = 0
    local function need(amount, level, rate, burst, inflight)
      local n = math.min(amount, burst)
      if n <= level then return 0 end
      if n > ceiling(rate, burst, inflight) then return 50000 end
      return math.ceil((n - level) * 60e6 / rate)
    end
    if rr > 0 then wait = math.max(wait, need(b, lr, rr, rb, fr)) end
    if tr > 0 then wait = math.max(wait, need(a, lt, tr, tb, ft)) end
    if wait == 0 then
      lr = lr - b; lt = lt - a
      flight(b, a)
      redis.call('SET', KEYS[3] .. program, '1', 'PX', lease_ms)
    else
      reply = {0, wait, made}
    end
  end
elseif op == 'settle' then -- a, b granted tokens and requests; c, d what was used
  flight(-b, -a)
  if rr > 0 then
    if d < b then lr = raise(lr, b - d, rr, rb, fr) else lr = lr - (d - b) end
  end
  if tr > 0 then
    if c < a then lt = raise(lt, a - c, tr, tb, ft) else lt = lt - (c - a) end
  end
elseif op == 'extra' then -- a requests made without a grant
  lr = lr - a
elseif op == 'at_most' then -- a requests left, b tokens left (-1: not said)
  if rr > 0 and a >= 0 then lr = math.min(lr, a - math.max(0, fr - 1)) end
  if tr > 0 and b >= 0 then lt = math.min(lt, b) end
elseif op == 'pause' then -- a µs from now
  pause = math.max(pause, now + a)
end
redis.call('HSET', KEYS[1], 'r', lr, 't', lt, 'at', at, 'pause', pause)
-- Idle for two minutes, the API's own bucket is full again: so may ours be. (While grants
-- are in flight the programs holding them renew this.)
redis.call('PEXPIRE', KEYS[1], idle_ms)
redis.call('PEXPIRE', KEYS[2], idle_ms)
return reply
"#;

impl Throttle {
    /// A throttle shared by every program that names the same `name` on the Redis server at
    /// `url` (feature `redis`): the same bucket as [`Throttle::new`] (requests and tokens per
    /// minute, the burst of [`with_burst`](Throttle::with_burst), debt, refunds, the pause
    /// after a 429), held in Redis and updated atomically by a Lua script on the server's
    /// clock. Give it to each session with
    /// [`SessionBuilder::throttle`](crate::SessionBuilder::throttle), on any backend.
    ///
    /// - A program that dies holding grants does not shrink the limit: its share of what is
    ///   in flight is forgotten 10 s after its last sign of life.
    /// - If Redis cannot be reached, no request is admitted: waiting items wait (a stop ends
    ///   the wait) and the throttle logs one warning naming the address and the reason, asks
    ///   again with a growing backoff (at most every 2 s), and says when it answers again. A
    ///   Redis that comes back empty (restarted without persistence) starts the bucket empty,
    ///   not full, so the limit holds across the restart (unless the first to ask is a
    ///   program started after it, which cannot tell a loss from a new name). Settles made while it was away are
    ///   sent when it answers; a throttle dropped before then waits up to 5 s for it, then
    ///   logs an error with the tokens and requests the other programs will not count.
    /// - Within a program, waiters go in arrival order; across programs, whoever asks when
    ///   there is room goes first.
    ///
    /// Every program on a name must give the same limits. What it costs: one round trip to
    /// Redis per permit and one per settle (docs/scaling-out.md has the figures).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero limit, an empty name or an address that is not
    /// Redis's; [`Error::SharedStore`] if the server does not answer now.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use claude_rayon::{Backend, Session, Throttle};
    ///
    /// // Every program of the organisation's key: 50 requests a minute in all.
    /// let throttle = Throttle::redis("redis://127.0.0.1:6379/", "org-key-haiku", Some(50), None)?
    ///     .with_burst(Some(5), None)?;
    /// let session = Session::builder()
    ///     .backend(Backend::MessagesApi)
    ///     .throttle(Arc::new(throttle))
    ///     .build()?;
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn redis(
        url: &str,
        name: &str,
        requests_per_minute: Option<u32>,
        tokens_per_minute: Option<u64>,
    ) -> Result<Throttle, Error> {
        let local = Throttle::new(requests_per_minute, tokens_per_minute)?;
        if name.is_empty() {
            return Err(Error::InvalidConfig(
                "a shared throttle needs a name (the same in every program sharing it)".into(),
            ));
        }
        let bucket = RedisBucket::open(Store::open(url)?, name);
        Ok(local.with_remote(Arc::new(bucket)))
    }
}

/// A bucket's keys on the server; `{name}` is a hash tag, so they stay on one node.
struct Keys {
    state: String,
    flight: String,
    lease: String,
    /// Set when the bucket is first made, never expired: tells an idle expiry from a loss.
    born: String,
    /// Prefix of each program's key holding the number of its last change applied.
    applied: String,
}

/// How long the bucket outlives the last word of any program: idle that long, the API's own
/// bucket is full again.
const IDLE_EXPIRY: Duration = Duration::from_secs(120);

struct Inner {
    store: Store,
    keys: Keys,
    /// [`IDLE_EXPIRY`], shorter in tests.
    idle_expiry: Duration,
    program: String,
    script: redis::Script,
    /// This program has seen the bucket: if it is gone now, Redis lost it, and a new one
    /// starts empty.
    seen: AtomicBool,
    /// Grants of this program not yet settled: while any, the lease is renewed.
    in_flight: AtomicU64,
    /// Changes not yet applied (settles, extra requests, pauses), sent in order, each with
    /// its sequence number; kept while Redis cannot be reached.
    unsent: Mutex<Vec<(&'static str, [i64; 4], u64)>>,
    /// The last change's sequence number.
    changes: AtomicU64,
    /// The bucket was found made anew after this program had seen it (said once per loss).
    said_lost: AtomicBool,
    /// The limits of the last call, for the changes the lease thread sends again.
    limits_for_tick: Mutex<Option<Limits>>,
}

/// [`RemoteBucket`] on Redis; a thread of its own renews the lease while it lives.
pub(crate) struct RedisBucket {
    inner: Arc<Inner>,
    /// Dropped with the bucket: the renewing thread ends.
    _stop: Option<Sender<()>>,
}

impl std::fmt::Debug for RedisBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBucket")
            .field("address", &self.inner.store.address())
            .field("state", &self.inner.keys.state)
            .finish_non_exhaustive()
    }
}

impl RedisBucket {
    fn open(store: Store, name: &str) -> RedisBucket {
        RedisBucket::open_with(store, name, IDLE_EXPIRY)
    }

    fn open_with(store: Store, name: &str, idle_expiry: Duration) -> RedisBucket {
        let prefix = format!("claude-rayon:{{{name}}}:throttle");
        let inner = Arc::new(Inner {
            store,
            keys: Keys {
                state: prefix.clone(),
                flight: format!("{prefix}:flight"),
                lease: format!("{prefix}:lease:"),
                born: format!("{prefix}:born"),
                applied: format!("{prefix}:applied:"),
            },
            idle_expiry,
            program: program_id(),
            script: redis::Script::new(SCRIPT),
            seen: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            unsent: Mutex::new(Vec::new()),
            changes: AtomicU64::new(0),
            said_lost: AtomicBool::new(false),
            limits_for_tick: Mutex::new(None),
        });
        let stop = every_tick(&inner, Inner::tick);
        RedisBucket { inner, _stop: stop }
    }
}

impl Drop for RedisBucket {
    fn drop(&mut self) {
        let inner = &self.inner;
        // Settles kept while Redis was away say what was used beyond the grants: dropped,
        // the other programs would not count it.
        if !flush_before_drop(|| inner.send_unsent()) {
            let unsent = inner.unsent.lock();
            let settles = unsent.iter().filter(|(op, ..)| *op == "settle");
            let (tokens, requests) = settles.fold((0, 0), |(t, r), (_, n, _)| (t + n[2], r + n[3]));
            log::error!(
                "shared throttle at {}: {tokens} tokens and {requests} requests used were not \
                 recorded ({} change(s) kept while Redis could not be reached, before the \
                 throttle was dropped); the other programs on it do not count them",
                inner.store.address(),
                unsent.len()
            );
        }
        // Nothing of this program is in flight any more (each permit held the bucket).
        let _ = inner.store.run(|c| {
            redis::pipe()
                .hdel(&inner.keys.flight, &inner.program)
                .del(format!("{}{}", inner.keys.lease, inner.program))
                .query::<()>(c)
        });
    }
}

impl Inner {
    /// Runs the script's `op`; `sequence` numbers a change sent until applied (0: not one).
    fn call(
        &self,
        limits: Limits,
        op: &str,
        numbers: [i64; 4],
        sequence: u64,
    ) -> Result<Vec<i64>, String> {
        let (rr, rb) = limits.requests.unwrap_or((0, 0));
        let (tr, tb) = limits.tokens.unwrap_or((0, 0));
        let seen = self.seen.load(Ordering::SeqCst);
        *self.limits_for_tick.lock() = Some(limits);
        let reply: Vec<i64> = self.store.run(|c| {
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(&self.keys.state)
                .key(&self.keys.flight)
                .key(&self.keys.lease)
                .key(&self.keys.born)
                .key(&self.keys.applied)
                .arg(op)
                .arg(&self.program)
                .arg(LEASE.as_millis() as u64)
                .arg(if seen { 0 } else { 1 })
                .arg(rr)
                .arg(rb)
                .arg(tr)
                .arg(tb)
                .arg(&numbers[..])
                .arg(self.idle_expiry.as_millis() as u64)
                .arg(sequence);
            invocation.invoke(c)
        })?;
        if reply.get(2) == Some(&1) && seen {
            if !self.said_lost.swap(true, Ordering::SeqCst) {
                log::warn!(
                    "shared throttle at {}: its state was lost (Redis restarted?); it starts \
                     again from an empty bucket so the limit holds",
                    self.store.address()
                );
            }
        } else {
            self.said_lost.store(false, Ordering::SeqCst);
        }
        self.seen.store(true, Ordering::SeqCst);
        Ok(reply)
    }

    /// Sends the changes kept while Redis was away, in order, then `op`; keeps what fails.
    fn send_or_keep(&self, limits: Limits, op: &'static str, numbers: [i64; 4]) {
        let mut unsent = self.unsent.lock();
        let sequence = self.changes.fetch_add(1, Ordering::SeqCst) + 1;
        unsent.push((op, numbers, sequence));
        while let Some(&(op, numbers, sequence)) = unsent.first() {
            match self.call(limits, op, numbers, sequence) {
                Ok(_) => {
                    unsent.remove(0);
                }
                Err(reason) => {
                    log::debug!("shared throttle: kept a change to send later ({reason})");
                    break;
                }
            }
        }
    }

    fn tick(&self) {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            // The lease, and the bucket itself: a grant that outlasts the idle expiry (a long
            // answer, nobody else asking) must not find it gone, as if Redis had lost it.
            let lease = format!("{}{}", self.keys.lease, self.program);
            let idle = self.idle_expiry.as_millis() as u64;
            let _ = self.store.run(|c| {
                redis::pipe()
                    .cmd("SET")
                    .arg(&lease)
                    .arg(1)
                    .arg("PX")
                    .arg(LEASE.as_millis() as u64)
                    .ignore()
                    .pexpire(&self.keys.state, idle as i64)
                    .ignore()
                    .pexpire(&self.keys.flight, idle as i64)
                    .ignore()
                    .query::<()>(c)
            });
        }
        self.send_unsent();
    }

    /// Sends the changes kept while Redis was away, in order; whether none is left.
    fn send_unsent(&self) -> bool {
        let limits = *self.limits_for_tick.lock();
        let mut unsent = self.unsent.lock();
        let Some(limits) = limits else {
            return unsent.is_empty();
        };
        while let Some(&(op, numbers, sequence)) = unsent.first() {
            if self.call(limits, op, numbers, sequence).is_err() {
                return false;
            }
            unsent.remove(0);
        }
        true
    }
}

fn number(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl RemoteBucket for RedisBucket {
    fn try_take(
        &self,
        limits: Limits,
        tokens: u64,
        requests: u64,
    ) -> Result<Option<Duration>, String> {
        let reply = self
            .inner
            .call(limits, "take", [number(tokens), number(requests), 0, 0], 0)?;
        if reply.first() == Some(&1) {
            self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        } else {
            let micros = reply.get(1).copied().unwrap_or(0).max(1);
            Ok(Some(Duration::from_micros(micros as u64)))
        }
    }

    fn settle(
        &self,
        limits: Limits,
        granted: (u64, u64),
        actual_tokens: u64,
        actual_requests: u64,
    ) {
        self.inner.send_or_keep(
            limits,
            "settle",
            [
                number(granted.0),
                number(granted.1),
                number(actual_tokens),
                number(actual_requests),
            ],
        );
        self.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn note_extra_requests(&self, limits: Limits, n: u32) {
        self.inner
            .send_or_keep(limits, "extra", [i64::from(n), 0, 0, 0]);
    }

    fn at_most(&self, limits: Limits, requests: Option<u64>, tokens: Option<u64>) {
        // Only worth saying now: a word kept for later would be stale.
        let said = |n: Option<u64>| n.map_or(-1, number);
        let _ = self
            .inner
            .call(limits, "at_most", [said(requests), said(tokens), 0, 0], 0);
    }

    fn pause_for(&self, limits: Limits, wait: Duration) {
        let micros = i64::try_from(wait.as_micros()).unwrap_or(i64::MAX);
        self.inner.send_or_keep(limits, "pause", [micros, 0, 0, 0]);
    }

    fn address(&self) -> String {
        self.inner.store.address().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{wait_for, TestServer};
    use super::*;

    /// The bucket's expiry in these tests: shorter than a grant is held.
    const IDLE: Duration = Duration::from_millis(1500);

    fn ttl(connection: &mut redis::Connection, key: &str) -> i64 {
        redis::cmd("PTTL").arg(key).query(connection).unwrap()
    }

    #[test]
    fn a_grant_held_past_the_idle_expiry_keeps_the_bucket_and_an_idle_one_comes_back_full() {
        let Some(server) = TestServer::start() else {
            return;
        };
        let bucket = RedisBucket::open_with(Store::open(&server.url()).unwrap(), "idle", IDLE);
        let limits = Limits {
            requests: Some((60, 3)),
            tokens: None,
        };
        for _ in 0..3 {
            assert_eq!(bucket.try_take(limits, 0, 1).unwrap(), None);
        }
        let state = bucket.inner.keys.state.clone();
        let mut connection = server.connection();
        // Held for several renewals (each a time-to-live going up), longer than the expiry.
        let (mut renewals, mut last) = (0, ttl(&mut connection, &state));
        wait_for(
            "the grants are held past the expiry",
            Duration::from_secs(30),
            || {
                let now = ttl(&mut connection, &state);
                if now > last {
                    renewals += 1;
                }
                last = now;
                now < 0 || renewals >= 3
            },
        );
        assert!(
            last > 0,
            "the bucket expired while its grants were in flight"
        );

        for _ in 0..3 {
            bucket.settle(limits, (0, 1), 0, 1);
        }
        wait_for("the idle bucket expires", Duration::from_secs(30), || {
            ttl(&mut connection, &state) < 0
        });
        // Expired idle, not lost: full again (the whole burst at once), and nothing said.
        assert_eq!(bucket.try_take(limits, 0, 3).unwrap(), None);
        assert!(!bucket.inner.said_lost.load(Ordering::SeqCst));

        // Lost (as after a restart without persistence): made empty, and said.
        let _: () = redis::cmd("FLUSHALL").query(&mut connection).unwrap();
        assert!(bucket.try_take(limits, 0, 1).unwrap().is_some());
        assert!(bucket.inner.said_lost.load(Ordering::SeqCst));
    }

    #[test]
    fn a_change_sent_again_after_a_lost_answer_is_applied_once() {
        let Some(server) = TestServer::start() else {
            return;
        };
        let bucket = RedisBucket::open(Store::open(&server.url()).unwrap(), "repeat");
        // Slow to refill (one request every 10 s), so the level moves only by what is done.
        let limits = Limits {
            requests: Some((6, 3)),
            tokens: None,
        };
        for _ in 0..3 {
            assert_eq!(bucket.try_take(limits, 0, 1).unwrap(), None);
        }
        let level = |connection: &mut redis::Connection| -> f64 {
            redis::cmd("HGET")
                .arg(&bucket.inner.keys.state)
                .arg("r")
                .query(connection)
                .unwrap()
        };
        let mut connection = server.connection();
        assert!(level(&mut connection) < 0.5);
        // A settle giving one unused request back, sent twice as after a timeout whose
        // answer was lost though the server had applied it.
        let settle = [0, 1, 0, 0];
        let sequence = bucket.inner.changes.fetch_add(1, Ordering::SeqCst) + 1;
        bucket
            .inner
            .call(limits, "settle", settle, sequence)
            .unwrap();
        bucket
            .inner
            .call(limits, "settle", settle, sequence)
            .unwrap();
        let after = level(&mut connection);
        assert!(
            (1.0..1.5).contains(&after),
            "one request given back, not two: the level is {after}"
        );
        // The next change is applied as usual.
        bucket.inner.send_or_keep(limits, "settle", settle);
        assert!(level(&mut connection) >= 1.9);
    }
}
