//! The spending cap in Redis: [`SharedBudget::redis`].
//!
//! One key holds what every program has spent (settled), one hash the reservations in
//! flight (`program|n` → USD), and each program with reservations keeps a lease key with a
//! time-to-live. The Lua script reserves only if spent plus the live reservations plus the
//! new one stays within the cap, and forgets the reservations of a program whose lease ended
//! (it died holding them), so they do not keep the cap spent.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use super::{every_tick, flush_before_drop, program_id, Store, LEASE};
use crate::budget::{Refusal, SharedBudget, SharedSpend};
use crate::Error;

/// KEYS: spent, reservations hash, lease-key prefix, the prefix of each program's last settle
/// applied. ARGV: op, program, lease ms, whether this program has seen the cap's state (1 or
/// 0), then the op's numbers. Replies {done (1), done on a cap not made yet (2), refused (0)
/// or state lost (-1), a number as a string}.
const SCRIPT: &str = r#"
local op, program, lease_ms, seen = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
-- The spent key is made with the cap and never expires: gone once a program has seen it,
-- Redis lost it (a restart without persistence, an eviction, a flush), and what every
-- program spent is unknown. Counting again from zero would pass the cap: refuse instead.
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- (A settle of nothing releases a reservation whose answer was lost: it may come before
  -- the cap was ever made.)
  if seen or (op == 'settle' and tonumber(ARGV[6]) > 0) then return {-1, '0'} end
  if op ~= 'reserve' then return {2, '0'} end
  redis.call('SET', KEYS[1], '0')
end
if op == 'reserve' then -- ARGV[5] id, ARGV[6] amount, ARGV[7] cap
  local amount, cap = tonumber(ARGV[6]), tonumber(ARGV[7])
  local committed = tonumber(redis.call('GET', KEYS[1]))
  local held = redis.call('HGETALL', KEYS[2])
  for i = 1, #held, 2 do
    local owner = string.match(held[i], '^(.*)|')
    if redis.call('EXISTS', KEYS[3] .. owner) == 0 then
      redis.call('HDEL', KEYS[2], held[i])
    else
      committed = committed + tonumber(held[i + 1])
    end
  end
  if committed + amount > cap then return {0, string.format('%.17g', committed)} end
  redis.call('HSET', KEYS[2], program .. '|' .. ARGV[5], string.format('%.17g', amount))
  redis.call('SET', KEYS[3] .. program, '1', 'PX', lease_ms)
  return {1, string.format('%.17g', committed + amount)}
elseif op == 'settle' then -- ARGV[5] id, ARGV[6] spent, ARGV[7] sequence number
  -- A settle whose answer was lost to a timeout is sent again, though the server may have
  -- applied it; a program sends its settles one at a time in order, so the number of the
  -- last one applied tells a repeat, which must not count the cost twice.
  local applied = KEYS[4] .. program
  if tonumber(ARGV[7]) <= tonumber(redis.call('GET', applied) or '0') then
    return {1, redis.call('GET', KEYS[1])}
  end
  redis.call('SET', applied, ARGV[7], 'PX', 86400000)
  redis.call('HDEL', KEYS[2], program .. '|' .. ARGV[5])
  local spent = redis.call('INCRBYFLOAT', KEYS[1], ARGV[6])
  return {1, spent}
end
return {1, redis.call('GET', KEYS[1])}
"#;

impl SharedBudget {
    /// One spending cap of `limit_usd` US dollars for every program that names the same
    /// `name` on the Redis server at `url` (feature `redis`). Give it to each session with
    /// [`SessionBuilder::shared_budget`](crate::SessionBuilder::shared_budget).
    ///
    /// Each item reserves its estimate before it goes out and settles its real cost after,
    /// atomically (a Lua script); a program that dies holding reservations gives them back
    /// 10 s after its last sign of life. While Redis cannot be reached no call goes out:
    /// items wait (a stop ends the wait) and one warning names the address and the reason.
    /// Costs settled while it is away are sent when it answers; a budget dropped before then
    /// waits up to 5 s for it, then logs an error with the USD the cap did not count.
    /// What was spent stays in Redis: a new cap starts from zero under a new name.
    ///
    /// The store must keep what it holds (`appendonly yes`): a Redis that restarts without
    /// persistence, evicts or flushes the cap's keys has forgotten what was spent. A program
    /// that had seen the cap then refuses every further item with
    /// [`Error::SharedBudgetLost`] rather than count again from zero past the cap; a program
    /// started after the loss cannot tell it from a new cap.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a cap that is negative or not finite, an empty name or
    /// an address that is not Redis's; [`Error::SharedStore`] if the server does not answer.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use claude_rayon::{Session, SharedBudget};
    ///
    /// // 20 USD for the whole nightly job, however many machines run it.
    /// let budget = SharedBudget::redis("redis://127.0.0.1:6379/", "nightly-2026-12-04", 20.0)?;
    /// let session = Session::builder().shared_budget(budget.clone()).build()?;
    /// println!("spent so far: {:.2} USD", budget.spent_usd()?);
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn redis(url: &str, name: &str, limit_usd: f64) -> Result<SharedBudget, Error> {
        if !(limit_usd.is_finite() && limit_usd >= 0.0) {
            return Err(Error::InvalidConfig(format!(
                "a shared budget must be a finite, non-negative amount, not {limit_usd}"
            )));
        }
        if name.is_empty() {
            return Err(Error::InvalidConfig(
                "a shared budget needs a name (the same in every program sharing it)".into(),
            ));
        }
        Ok(SharedBudget {
            store: Arc::new(RedisSpend::open(url, name, limit_usd)?),
        })
    }
}

impl RedisSpend {
    fn open(url: &str, name: &str, limit_usd: f64) -> Result<RedisSpend, Error> {
        let store = Store::open(url)?;
        let prefix = format!("claude-rayon:{{{name}}}:budget");
        let inner = Arc::new(Inner {
            store,
            name: name.to_string(),
            seen: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            spent_key: format!("{prefix}:spent"),
            held_key: format!("{prefix}:held"),
            lease_prefix: format!("{prefix}:lease:"),
            applied_prefix: format!("{prefix}:applied:"),
            program: program_id(),
            script: redis::Script::new(SCRIPT),
            limit: limit_usd,
            next_id: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            unsent: Mutex::new(Vec::new()),
            settles: AtomicU64::new(0),
        });
        let stop = every_tick(&inner, Inner::tick);
        Ok(RedisSpend { inner, _stop: stop })
    }
}

struct Inner {
    store: Store,
    name: String,
    /// This program has seen the cap's state in Redis: if it is gone now, Redis lost it.
    seen: AtomicBool,
    /// Redis lost the cap's state: nothing more is reserved (said once, when found).
    lost: AtomicBool,
    spent_key: String,
    held_key: String,
    lease_prefix: String,
    applied_prefix: String,
    program: String,
    script: redis::Script,
    limit: f64,
    next_id: AtomicU64,
    /// Reservations not yet settled: while any, the lease is renewed.
    in_flight: AtomicU64,
    /// Settles not yet applied (reservation id, USD, sequence number), sent in order; kept
    /// while Redis cannot be reached.
    unsent: Mutex<Vec<(u64, f64, u64)>>,
    /// The last settle's sequence number.
    settles: AtomicU64,
}

impl Inner {
    /// Runs the script's `op`; a reply of -1 (the state was lost) is said once here.
    fn call(&self, op: &str, numbers: &[String]) -> Result<(i64, String), String> {
        let seen = self.seen.load(Ordering::SeqCst);
        let (done, number): (i64, String) = self.store.run(|c| {
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(&self.spent_key)
                .key(&self.held_key)
                .key(&self.lease_prefix)
                .key(&self.applied_prefix)
                .arg(op)
                .arg(&self.program)
                .arg(LEASE.as_millis() as u64)
                .arg(if seen { 1 } else { 0 })
                .arg(numbers);
            invocation.invoke(c)
        })?;
        if done < 0 {
            if !self.lost.swap(true, Ordering::SeqCst) {
                log::error!(
                    "shared budget `{}` at {}: its state was lost (Redis restarted without \
                     persistence, or its keys were evicted or flushed); what was spent is \
                     unknown, so no further calls are made on it",
                    self.name,
                    self.store.address()
                );
            }
        } else if op != "spent" && done != 2 {
            self.seen.store(true, Ordering::SeqCst);
        }
        Ok((done, number))
    }

    /// A settle the store could not record: its cost is not counted anywhere.
    fn not_recorded(&self, actual: f64) {
        if actual > 0.0 {
            log::error!(
                "shared budget `{}` at {}: {actual:.6} USD spent was not recorded (its state \
                 was lost)",
                self.name,
                self.store.address()
            );
        }
    }

    /// Queues the settle of reservation `id` with its sequence number (taken under the
    /// queue's lock, so numbers go out in order).
    fn keep_settle(&self, id: u64, actual: f64) {
        let mut unsent = self.unsent.lock();
        let sequence = self.settles.fetch_add(1, Ordering::SeqCst) + 1;
        unsent.push((id, actual.max(0.0), sequence));
    }

    fn send_unsent(&self) {
        let mut unsent = self.unsent.lock();
        while let Some(&(id, actual, sequence)) = unsent.first() {
            let numbers = [
                id.to_string(),
                format!("{actual:.17e}"),
                sequence.to_string(),
            ];
            match self.call("settle", &numbers) {
                Err(_) => break,
                Ok((done, _)) if done < 0 => self.not_recorded(actual),
                Ok(_) => {}
            }
            unsent.remove(0);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn tick(&self) {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            let lease = format!("{}{}", self.lease_prefix, self.program);
            let _ = self.store.run(|c| {
                redis::cmd("SET")
                    .arg(&lease)
                    .arg(1)
                    .arg("PX")
                    .arg(LEASE.as_millis() as u64)
                    .query::<()>(c)
            });
        }
        self.send_unsent();
    }
}

/// [`SharedSpend`] on Redis; a thread of its own renews the lease while it lives.
struct RedisSpend {
    inner: Arc<Inner>,
    _stop: Option<Sender<()>>,
}

impl Drop for RedisSpend {
    fn drop(&mut self) {
        let inner = &self.inner;
        let flushed = flush_before_drop(|| {
            inner.send_unsent();
            inner.unsent.lock().is_empty()
        });
        if !flushed {
            let unsent = inner.unsent.lock();
            let usd: f64 = unsent.iter().map(|&(_, actual, _)| actual).sum();
            log::error!(
                "shared budget `{}` at {}: {usd:.6} USD spent by {} item(s) was not recorded \
                 (Redis could not be reached before the budget was dropped); the other \
                 programs on the cap do not count it",
                inner.name,
                inner.store.address(),
                unsent.len()
            );
        }
    }
}

impl std::fmt::Debug for RedisSpend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSpend")
            .field("address", &self.inner.store.address())
            .field("spent", &self.inner.spent_key)
            .field("limit", &self.inner.limit)
            .finish_non_exhaustive()
    }
}

impl SharedSpend for RedisSpend {
    fn reserve(&self, amount: f64) -> Result<Result<u64, Refusal>, String> {
        let inner = &self.inner;
        let lost = || Refusal::StateLost {
            name: inner.name.clone(),
        };
        if inner.lost.load(Ordering::SeqCst) {
            return Ok(Err(lost()));
        }
        inner.send_unsent();
        let id = inner.next_id.fetch_add(1, Ordering::SeqCst);
        let reserved = inner.call(
            "reserve",
            &[
                id.to_string(),
                format!("{amount:.17e}"),
                format!("{:.17e}", inner.limit),
            ],
        );
        let (done, committed) = match reserved {
            Ok(reply) => reply,
            Err(reason) => {
                // The server may have made the reservation though its answer was lost (a
                // timeout): released by a settle of nothing, or it would hold part of the
                // cap for as long as this program renews its lease.
                inner.in_flight.fetch_add(1, Ordering::SeqCst);
                inner.keep_settle(id, 0.0);
                return Err(reason);
            }
        };
        match done {
            1 => {
                inner.in_flight.fetch_add(1, Ordering::SeqCst);
                Ok(Ok(id))
            }
            0 => Ok(Err(Refusal::OverCap(
                committed.parse().unwrap_or(inner.limit),
            ))),
            _ => Ok(Err(lost())),
        }
    }

    fn settle(&self, id: u64, actual: f64) {
        self.inner.keep_settle(id, actual);
        self.inner.send_unsent();
    }

    fn limit(&self) -> f64 {
        self.inner.limit
    }

    fn spent(&self) -> Result<f64, String> {
        let (done, spent) = self.inner.call("spent", &[])?;
        if done < 0 {
            return Err(format!(
                "the shared budget `{}` lost its state (Redis restarted without persistence, \
                 or its keys were evicted or flushed): what was spent is unknown",
                self.inner.name
            ));
        }
        Ok(spent.parse().unwrap_or(0.0))
    }

    fn address(&self) -> String {
        self.inner.store.address().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::super::TestServer;
    use super::*;

    fn held(server: &TestServer, budget: &RedisSpend) -> usize {
        let mut connection = server.connection();
        redis::cmd("HLEN")
            .arg(&budget.inner.held_key)
            .query(&mut connection)
            .unwrap()
    }

    fn open(server: &TestServer, name: &str, limit: f64) -> RedisSpend {
        RedisSpend::open(&server.url(), name, limit).unwrap()
    }

    #[test]
    fn a_settle_sent_again_after_a_lost_answer_counts_once() {
        let Some(server) = TestServer::start() else {
            return;
        };
        let store = &open(&server, "repeat", 1.0);
        let id = store.reserve(0.25).unwrap().unwrap();
        // Sent twice, as after a timeout whose answer was lost though the server applied it.
        let sequence = store.inner.settles.fetch_add(1, Ordering::SeqCst) + 1;
        let numbers = [
            id.to_string(),
            format!("{:.17e}", 0.25),
            sequence.to_string(),
        ];
        store.inner.call("settle", &numbers).unwrap();
        store.inner.call("settle", &numbers).unwrap();
        assert_eq!(store.spent().unwrap(), 0.25);
        // The next settle counts as usual.
        let id = store.reserve(0.25).unwrap().unwrap();
        store.settle(id, 0.25);
        assert_eq!(store.spent().unwrap(), 0.5);
        assert_eq!(held(&server, store), 0);
    }

    #[test]
    fn a_settle_of_nothing_releases_a_reservation_and_never_loses_a_new_cap() {
        let Some(server) = TestServer::start() else {
            return;
        };
        // Before the cap exists (the first reservation's answer lost): not taken for a loss.
        let store = &open(&server, "orphan", 1.0);
        store.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        store.inner.keep_settle(u64::MAX, 0.0);
        store.inner.send_unsent();
        assert!(!store.inner.lost.load(Ordering::SeqCst));
        assert_eq!(store.inner.in_flight.load(Ordering::SeqCst), 0);
        // A reservation the server made, released by a settle of nothing: the cap is whole.
        let id = store.reserve(0.75).unwrap().unwrap();
        assert_eq!(held(&server, store), 1);
        store.settle(id, 0.0);
        assert_eq!(held(&server, store), 0);
        assert_eq!(store.spent().unwrap(), 0.0);
        assert!(store.reserve(1.0).unwrap().is_ok());
    }
}
