//! A pipeline source and its acknowledgement over a Redis Stream with a consumer group:
//! [`RedisStream`].
//!
//! Items are read with `XREADGROUP` and stay pending in the group until [`Acker`]
//! acknowledges them, after their answer was handed on; a consumer that died leaves them
//! pending, and after `claim_after` of idleness the others take them over (`XAUTOCLAIM`).
//! An item delivered more than `max_deliveries` times goes to `<stream>:dead` instead.
//! While this program holds an entry (read and not yet acknowledged or given up) it keeps
//! the entry's idle time short, so no consumer, this one included, claims it meanwhile.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::Value;

use super::Store;
use crate::{CliError, Error, Failed};

/// How many new entries one read takes: the pipeline pulls only as many items as it has
/// room for, so whatever the read buffer holds beyond is kept from the other consumers.
const READ_COUNT: usize = 4;
/// How many entries one claim takes at most. Redis looks at no more than ten times this
/// many pending entries per claim, so a smaller count finds a dead consumer's entries in a
/// long pending list only after more claim checks.
const CLAIM_COUNT: usize = 16;
/// The most ids one idle-time refresh sends (a Lua script unpacks them on its stack).
const REFRESH_CHUNK: usize = 200;

/// Resets the idle time of the entries still pending for this consumer, without counting a
/// delivery (`XCLAIM ... JUSTID` leaves the count alone), and returns those that are not
/// (acknowledged meanwhile, or taken over by another consumer after a late refresh).
/// KEYS[1] the stream; ARGV[1] the group, ARGV[2] the consumer, ARGV[3..] the ids.
const REFRESH_SCRIPT: &str = r"
local claim, lost = {KEYS[1], ARGV[1], ARGV[2], 0}, {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then claim[#claim + 1] = ARGV[i] else lost[#lost + 1] = ARGV[i] end
end
if #claim > 4 then
  claim[#claim + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(claim))
end
return lost
";

/// Gives back the delivery of entries this program was handed but never asked for, or could
/// not ask for through no fault of theirs: sets each one's delivery count (`XCLAIM ...
/// RETRYCOUNT n JUSTID`), if it is still pending for this consumer.
/// KEYS[1] the stream; ARGV[1] the group, ARGV[2] the consumer, then id and count pairs.
const GIVE_BACK_SCRIPT: &str = r"
for i = 3, #ARGV, 2 do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
  end
end
return 0
";

/// Work shared by programs on many machines through a Redis Stream and a consumer group
/// (feature `redis`).
///
/// Producers add entries with a `text` field ([`add`](Self::add), or `XADD <stream> * text
/// ...` from anything); each consumer program reads them with [`items`](Self::items) as a
/// [`Pipeline`](crate::pipeline::Pipeline) source and acknowledges them with an [`Acker`]
/// once their answers are handed on, for instance written to `<stream>:results` with
/// [`Acker::ack_with_answers`]. What this guarantees:
///
/// - **At least once.** An entry is acknowledged only after the batch handler has the
///   answer: a program that dies before that leaves it pending, and after
///   [`claim_after`](Self::claim_after) of idleness another consumer claims it and asks
///   again. So an answer may be asked for, and written, twice across programs; a
///   [`Journal`](crate::Journal) per program (`PipelineBuilder::with_journal`) only keeps one
///   program from paying twice for the same item.
/// - **Dead letters.** An entry delivered more than [`max_deliveries`](Self::max_deliveries)
///   times (default 4), one without a `text` field, or one that failed for a reason of its
///   own (a refusal, a request rejected as invalid: [`Acker::on_failed`]) goes to
///   `<stream>:dead` with the reason, and is acknowledged. A failure of the program or its
///   account (bad credentials, a spent budget) leaves the entry pending without counting the
///   delivery, for a healthy consumer or a later run; a retryable failure leaves it pending,
///   counted, and it is claimed again after `claim_after`.
///
/// - **Held entries are not claimed.** Every entry this program has read and not yet
///   acknowledged or given up (buffered, queued in the pipeline, or in flight) has its idle
///   time reset every quarter of `claim_after`, without counting a delivery, so a slow item
///   is neither claimed by another consumer nor handed back to this one. A program that
///   dies stops doing so, and its entries are claimed after `claim_after`. So hand every
///   item to an [`Acker`], answered (`ack*`) or failed (`on_failed`, as in the example): one
///   that gets neither stays held until the stream, its source and its ackers are dropped.
///
/// What it costs: a read per 4 items, a claim check and a refresh of the held entries every
/// quarter of `claim_after`, one transaction per batch acknowledged (docs/scaling-out.md).
///
/// # Examples
///
/// ```no_run
/// use claude_rayon::pipeline::Pipeline;
/// use claude_rayon::scale::{RedisStream, StreamItem};
/// use claude_rayon::Session;
/// use std::time::Duration;
///
/// let session = Session::builder().model("haiku").build()?;
/// let tickets = RedisStream::consumer("redis://127.0.0.1:6379/", "tickets", "summaries", "host-a-1")?
///     .claim_after(Duration::from_secs(60));
/// let mut acker = tickets.acker();
/// let mut failures = tickets.acker();
/// Pipeline::builder(&session)
///     .source(tickets.items())
///     .prompt(|t: &StreamItem| format!("Summarise this support ticket:\n{}", t.text))
///     .on_batch(move |batch| {
///         // Written to `tickets:results` and acknowledged in one transaction.
///         let answered = batch.into_items();
///         let _ = acker.ack_with_answers(answered.iter().map(|(t, r)| (t, r.text.as_str())));
///     })
///     .on_failed(move |failed| failures.on_failed(&failed))
///     .run()?;
/// # Ok::<(), claude_rayon::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RedisStream {
    store: Arc<Store>,
    stream: String,
    group: String,
    consumer: String,
    /// What this program holds, shared by every clone: the source and the ackers.
    holding: Arc<Holding>,
    claim_after: Duration,
    max_deliveries: u64,
    until_drained: bool,
}

/// One entry of a [`RedisStream`], as the pipeline's item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamItem {
    /// The entry's id in the stream, what [`Acker`] acknowledges.
    pub id: String,
    /// Its `text` field: what the prompt is made of.
    pub text: String,
    /// How many times it has been delivered, this time included (1 the first time).
    pub deliveries: u64,
}

impl RedisStream {
    /// Consumer `consumer` of group `group` on stream `stream` at `url`; the group (and the
    /// stream) is made if missing, starting at the stream's first entry. Give every
    /// consumer program its own `consumer` name (a host and a number), the same `group`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an empty name or an address that is not Redis's;
    /// [`Error::SharedStore`] if the server does not answer or refuses the group.
    pub fn consumer(
        url: &str,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> Result<RedisStream, Error> {
        if [stream, group, consumer].iter().any(|n| n.is_empty()) {
            return Err(Error::InvalidConfig(
                "a Redis stream consumer needs a stream, a group and a consumer name".into(),
            ));
        }
        let store = Store::open(url)?;
        let made = store.run(|c| {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query::<()>(c)
        });
        match made {
            Ok(()) => {}
            Err(message) if message.contains("BUSYGROUP") => {}
            Err(message) => return Err(store.error(message)),
        }
        let store = Arc::new(store);
        Ok(RedisStream {
            holding: Arc::new(Holding {
                store: Arc::clone(&store),
                stream: stream.into(),
                group: group.into(),
                consumer: consumer.into(),
                ids: Mutex::new(HashSet::new()),
                refresher: OnceLock::new(),
                script: redis::Script::new(REFRESH_SCRIPT),
                give_back_script: redis::Script::new(GIVE_BACK_SCRIPT),
            }),
            store,
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            claim_after: Duration::from_secs(60),
            max_deliveries: 4,
            until_drained: false,
        })
    }

    /// How long an entry must have been pending, untouched, before another consumer takes
    /// it over (default 60 s). A live program touches the entries it holds every quarter of
    /// this, however long their items take, so this is how long a dead program's entries
    /// wait; a pause of the whole program (or of Redis) longer than three quarters of it can
    /// still let an entry in flight be claimed and asked twice.
    pub fn claim_after(mut self, idle: Duration) -> Self {
        self.claim_after = idle.max(Duration::from_millis(10));
        self
    }

    /// How many deliveries an entry gets before it goes to `<stream>:dead` (default 4: the
    /// first and three more after failures or dead consumers). At least 1.
    pub fn max_deliveries(mut self, deliveries: u64) -> Self {
        self.max_deliveries = deliveries.max(1);
        self
    }

    /// [`items`](Self::items) ends once the group has nothing new and nothing pending (every
    /// entry answered or dead-lettered, by anyone), instead of waiting for more: for a job
    /// with an end rather than a service.
    pub fn until_drained(mut self) -> Self {
        self.until_drained = true;
        self
    }

    /// The stream's name; results go to `<stream>:results`, dead letters to `<stream>:dead`.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Adds an entry with `text` to the stream (a producer's call); returns its id.
    ///
    /// # Errors
    ///
    /// [`Error::SharedStore`] if the server does not answer.
    pub fn add(&self, text: &str) -> Result<String, Error> {
        self.store
            .run(|c| {
                redis::cmd("XADD")
                    .arg(&self.stream)
                    .arg("*")
                    .arg("text")
                    .arg(text)
                    .query(c)
            })
            .map_err(|m| self.store.error(m))
    }

    /// The entries to answer, as a pipeline source: new ones, and those a dead consumer left
    /// pending for longer than `claim_after`. Blocks while there is nothing (ends only
    /// [`until_drained`](Self::until_drained)). While Redis cannot be reached it waits and
    /// warns once; nothing is skipped.
    pub fn items(&self) -> StreamItems {
        StreamItems {
            stream: self.clone(),
            connection: None,
            buffer: VecDeque::new(),
            next_claim: Instant::now(),
            claim_cursor: "0-0".into(),
            down: false,
            ended: false,
        }
    }

    /// Acknowledges entries once their answers are handed on (for the batch handler and
    /// `on_failed`; one each, it is `Send`).
    pub fn acker(&self) -> Acker {
        Acker {
            stream: self.clone(),
        }
    }
}

impl RedisStream {
    /// This program holds `id` from now until it is acknowledged or given up; its idle
    /// time is reset every quarter of `claim_after` meanwhile.
    fn hold(&self, id: &str) {
        self.holding.ids.lock().insert(id.to_string());
        // Without the thread an item slower than claim_after may be claimed and asked twice.
        self.holding.refresher.get_or_init(|| {
            let period = (self.claim_after / 4).max(Duration::from_millis(2));
            super::every(
                &self.holding,
                period,
                "claude-rayon-stream-hold",
                Holding::refresh,
            )
        });
    }
}

/// The entries this program holds: read and not yet acknowledged, dead-lettered or given up
/// (in the read buffer, queued in the pipeline, or in flight). Redis hands a consumer its own
/// idle entries back as readily as a dead one's, so without the refresh an item slower than
/// `claim_after` would be claimed and asked again while its first answer is being made.
struct Holding {
    store: Arc<Store>,
    stream: String,
    group: String,
    consumer: String,
    ids: Mutex<HashSet<String>>,
    /// Dropped with the last clone of the stream: the refreshing thread ends.
    refresher: OnceLock<Option<Sender<()>>>,
    script: redis::Script,
    give_back_script: redis::Script,
}

impl std::fmt::Debug for Holding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holding")
            .field("held", &self.ids.lock().len())
            .finish_non_exhaustive()
    }
}

impl Holding {
    /// No longer held: acknowledged, dead-lettered, or left pending for another try.
    fn release<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut held = self.ids.lock();
        for id in ids {
            held.remove(id);
        }
    }

    /// Releases `items` with the delivery that brought them here not counted (set back to
    /// the count before it): they were not asked, or failed for a reason of this program's.
    /// If Redis cannot be reached the delivery stays counted.
    fn give_back(&self, items: &[&StreamItem]) {
        if items.is_empty() {
            return;
        }
        let given = self.store.run(|c| {
            let mut invocation = self.give_back_script.prepare_invoke();
            invocation
                .key(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer);
            for item in items {
                invocation
                    .arg(&item.id)
                    .arg(item.deliveries.saturating_sub(1));
            }
            invocation.invoke::<i64>(c)
        });
        if let Err(reason) = given {
            log::debug!(
                "stream {}: cannot give back deliveries ({reason}); they stay counted",
                self.stream
            );
        }
        self.release(items.iter().map(|i| i.id.as_str()));
    }

    /// Resets the idle time of every entry held; forgets those no longer this consumer's.
    fn refresh(&self) {
        let ids: Vec<String> = self.ids.lock().iter().cloned().collect();
        for chunk in ids.chunks(REFRESH_CHUNK) {
            let lost: Result<Vec<String>, String> = self.store.run(|c| {
                let mut invocation = self.script.prepare_invoke();
                invocation
                    .key(&self.stream)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(chunk);
                invocation.invoke(c)
            });
            match lost {
                Ok(lost) => {
                    for id in &lost {
                        log::debug!(
                            "stream {}: entry {id} is no longer pending for {}",
                            self.stream,
                            self.consumer
                        );
                    }
                    self.release(lost.iter().map(String::as_str));
                }
                Err(reason) => {
                    // Tried again next period; meanwhile the entries age, and may be claimed
                    // by another consumer (asked twice, never lost).
                    log::debug!(
                        "stream {}: cannot reset the idle time of held entries ({reason})",
                        self.stream
                    );
                    return;
                }
            }
        }
    }
}

/// The iterator of [`RedisStream::items`].
pub struct StreamItems {
    stream: RedisStream,
    /// Its own connection: a blocked read must not hold up the acknowledgements.
    connection: Option<redis::Connection>,
    buffer: VecDeque<StreamItem>,
    next_claim: Instant,
    claim_cursor: String,
    down: bool,
    ended: bool,
}

impl std::fmt::Debug for StreamItems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamItems")
            .field("stream", &self.stream)
            .field("buffered", &self.buffer.len())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Drop for StreamItems {
    fn drop(&mut self) {
        // Read but never handed to the pipeline: left pending, for whoever claims them, and
        // not counted as delivered since nobody asked for them.
        let unasked: Vec<StreamItem> = self.buffer.drain(..).collect();
        self.stream
            .holding
            .give_back(&unasked.iter().collect::<Vec<_>>());
    }
}

impl Iterator for StreamItems {
    type Item = StreamItem;

    fn next(&mut self) -> Option<StreamItem> {
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            match self.fill() {
                Ok(()) => {
                    if std::mem::replace(&mut self.down, false) {
                        log::warn!(
                            "stream {} at {} answers again",
                            self.stream.stream,
                            self.stream.store.address()
                        );
                    }
                    backoff = Duration::from_millis(100);
                }
                Err(reason) => {
                    self.connection = None;
                    if !std::mem::replace(&mut self.down, true) {
                        log::warn!(
                            "stream {} at {} cannot be read ({reason}); trying again",
                            self.stream.stream,
                            self.stream.store.address()
                        );
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

impl StreamItems {
    /// How long one read blocks on the server when there is nothing new.
    fn block(&self) -> Duration {
        (self.stream.claim_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(2))
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, String> {
        if self.connection.is_none() {
            let connection = self.stream.store.connect()?;
            connection
                .set_read_timeout(Some(self.block() + Duration::from_secs(2)))
                .map_err(|e| self.stream.store.reason(&e))?;
            self.connection = Some(connection);
        }
        Ok(self.connection.as_mut().expect("connected just above"))
    }

    /// Claims what dead consumers left (when due), else reads new entries; decides the end.
    fn fill(&mut self) -> Result<(), String> {
        let s = self.stream.clone();
        if Instant::now() >= self.next_claim {
            self.claim()?;
            if !self.buffer.is_empty() {
                return Ok(());
            }
            self.next_claim = Instant::now() + self.block();
        }
        let block = self.block();
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&s.group)
            .arg(&s.consumer)
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&s.stream)
            .arg(">")
            .query(self.connection()?)
            .map_err(|e| s.store.reason(&e))?;
        let entries: Vec<StreamId> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect();
        for entry in entries {
            self.take(entry, 1)?;
        }
        if self.buffer.is_empty() && s.until_drained {
            let pending: Vec<Value> = redis::cmd("XPENDING")
                .arg(&s.stream)
                .arg(&s.group)
                .query(self.connection()?)
                .map_err(|e| s.store.reason(&e))?;
            let none_pending = matches!(pending.first(), Some(Value::Int(0)));
            if none_pending {
                self.ended = true;
            }
        }
        Ok(())
    }

    /// Takes over entries pending longer than `claim_after` (a dead consumer's, or failures
    /// of our own left for another try).
    fn claim(&mut self) -> Result<(), String> {
        let s = self.stream.clone();
        let cursor = self.claim_cursor.clone();
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&s.stream)
            .arg(&s.group)
            .arg(&s.consumer)
            .arg(s.claim_after.as_millis() as u64)
            .arg(&cursor)
            .arg("COUNT")
            .arg(CLAIM_COUNT)
            .query(self.connection()?)
            .map_err(|e| s.store.reason(&e))?;
        self.claim_cursor = reply.next_stream_id.clone();
        // One of our own still being answered, whose idle time was not reset in time (the
        // program or Redis was paused): it is in hand already, so not queued twice.
        let claimed: Vec<StreamId> = {
            let held = s.holding.ids.lock();
            reply
                .claimed
                .into_iter()
                .filter(|e| !held.contains(&e.id))
                .collect()
        };
        if claimed.is_empty() {
            return Ok(());
        }
        // The claim counted a delivery; XPENDING says how many in all, asked id by id: a
        // range of ids would also list this consumer's other pending entries and could miss
        // some of the claimed ones past its count.
        let counts =
            delivery_counts(&s, self.connection()?, &claimed).map_err(|e| s.store.reason(&e))?;
        for (entry, deliveries) in claimed.into_iter().zip(counts) {
            log::info!(
                "stream {}: {} took over entry {} (delivery {deliveries})",
                s.stream,
                s.consumer,
                entry.id
            );
            self.take(entry, deliveries)?;
        }
        Ok(())
    }

    /// Queues an entry to answer, or sends it to the dead letters.
    fn take(&mut self, entry: StreamId, deliveries: u64) -> Result<(), String> {
        let text = entry.map.get("text").and_then(|v| match v {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        });
        let reason = match (&text, deliveries > self.stream.max_deliveries) {
            (None, _) => Some("the entry has no `text` field (UTF-8)".to_string()),
            (Some(_), true) => Some(format!(
                "delivered {deliveries} times, more than max_deliveries ({})",
                self.stream.max_deliveries
            )),
            (Some(_), false) => None,
        };
        match (reason, text) {
            (Some(reason), text) => {
                let s = self.stream.clone();
                log::warn!(
                    "stream {}: entry {} goes to {}:dead: {reason}",
                    s.stream,
                    entry.id,
                    s.stream
                );
                dead_letter(&s, self.connection()?, &entry.id, text.as_deref(), &reason)
                    .map_err(|e| s.store.reason(&e))
            }
            (None, Some(text)) => {
                self.stream.hold(&entry.id);
                self.buffer.push_back(StreamItem {
                    id: entry.id,
                    text,
                    deliveries,
                });
                Ok(())
            }
            (None, None) => unreachable!("an entry without text has a reason"),
        }
    }
}

/// Whether `error` is about the item itself, so that asking again, by this consumer or any
/// other, fails the same way: what [`Acker::on_failed`] sends to the dead letters at once.
/// A failure of the program or its account (`is_fatal`), a retryable one, a stop, a panic
/// and anything not listed here is not.
fn is_about_the_item(error: &Error) -> bool {
    matches!(
        error,
        Error::Refused { .. }
            | Error::Api {
                status: Some(400 | 413 | 422),
                ..
            }
            | Error::ItemOverBudget { .. }
            | Error::EmptyPrompt
            | Error::Truncated { .. }
            | Error::InvalidAnswer { .. }
            | Error::StructuredOutputMissing { .. }
            | Error::StructuredOutputInvalid(_)
            | Error::Cli(CliError::MaxTurns { .. })
    )
}

/// How many times each of `entries` has been delivered, from the group's pending list, one
/// `XPENDING <stream> <group> <id> <id> 1` each (in one round trip). An entry no longer
/// pending (acknowledged meanwhile) counts as delivered once more than the first time.
fn delivery_counts(
    s: &RedisStream,
    connection: &mut redis::Connection,
    entries: &[StreamId],
) -> redis::RedisResult<Vec<u64>> {
    let mut pipe = redis::pipe();
    for entry in entries {
        pipe.cmd("XPENDING")
            .arg(&s.stream)
            .arg(&s.group)
            .arg(&entry.id)
            .arg(&entry.id)
            .arg(1);
    }
    let found: Vec<Vec<(String, String, u64, u64)>> = pipe.query(connection)?;
    Ok(found
        .into_iter()
        .map(|one| one.first().map_or(2, |p| p.3))
        .collect())
}

/// `<stream>:dead` gets the entry and why, and the group lets it go, in one transaction.
fn dead_letter(
    s: &RedisStream,
    connection: &mut redis::Connection,
    id: &str,
    text: Option<&str>,
    reason: &str,
) -> redis::RedisResult<()> {
    redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(format!("{}:dead", s.stream))
        .arg("*")
        .arg("id")
        .arg(id)
        .arg("text")
        .arg(text.unwrap_or(""))
        .arg("reason")
        .arg(reason)
        .arg("consumer")
        .arg(&s.consumer)
        .ignore()
        .cmd("XACK")
        .arg(&s.stream)
        .arg(&s.group)
        .arg(id)
        .ignore()
        .query(connection)
}

/// How long an acknowledgement waits for Redis before it gives up (the entries stay pending).
const ACK_PATIENCE: Duration = Duration::from_secs(30);

/// Acknowledges a [`RedisStream`]'s entries once their answers are handed on, from the
/// pipeline's batch handler or `on_failed`.
///
/// Until acknowledged, an entry stays pending in the group: if this program dies, another
/// consumer claims it. Each call is one transaction; when Redis cannot be reached it tries
/// for 30 s, then gives up with [`Error::SharedStore`] and the entries stay pending (they
/// are asked again after `claim_after`, by this program or another).
///
/// A failed item goes to `<stream>:dead` only when the failure is the item's own (a refusal,
/// a request rejected as invalid); one of the program's or its account's (bad credentials, a
/// spent budget) leaves it pending, not counted as a delivery: see [`on_failed`](Self::on_failed).
#[derive(Debug)]
pub struct Acker {
    stream: RedisStream,
}

impl Acker {
    /// Runs `f` until it succeeds, waiting while Redis cannot be reached (30 s at most).
    fn retry(
        &self,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<()>,
    ) -> Result<(), Error> {
        let s = &self.stream;
        let mut said = false;
        super::again_within(ACK_PATIENCE, || {
            s.store.run(&mut f).inspect_err(|message| {
                if !std::mem::replace(&mut said, true) {
                    log::warn!(
                        "stream {} at {}: cannot acknowledge ({message}); trying again",
                        s.stream,
                        s.store.address()
                    );
                }
            })
        })
        .map_err(|message| s.store.error(message))
    }

    /// Acknowledges `items`: their answers are safe elsewhere (the user's store).
    ///
    /// # Errors
    ///
    /// [`Error::SharedStore`] if Redis could not be reached for 30 s.
    pub fn ack<'a>(
        &mut self,
        items: impl IntoIterator<Item = &'a StreamItem>,
    ) -> Result<(), Error> {
        let ids: Vec<&str> = items.into_iter().map(|i| i.id.as_str()).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let s = &self.stream;
        let acked = self.retry(|c| {
            redis::cmd("XACK")
                .arg(&s.stream)
                .arg(&s.group)
                .arg(&ids)
                .query::<()>(c)
        });
        // Acknowledged, or left pending for another try: out of this program's hands.
        s.holding.release(ids.iter().copied());
        acked
    }

    /// Writes each answer to `<stream>:results` (fields `id`, the entry's; `consumer`;
    /// `text`, the answer) and acknowledges the entries, in one transaction: an answer is
    /// written if and only if its entry is acknowledged.
    ///
    /// # Errors
    ///
    /// [`Error::SharedStore`] if Redis could not be reached for 30 s.
    pub fn ack_with_answers<'a>(
        &mut self,
        answered: impl IntoIterator<Item = (&'a StreamItem, &'a str)>,
    ) -> Result<(), Error> {
        let answered: Vec<(&StreamItem, &str)> = answered.into_iter().collect();
        if answered.is_empty() {
            return Ok(());
        }
        let s = &self.stream;
        let results = format!("{}:results", s.stream);
        let acked = self.retry(|c| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (item, answer) in &answered {
                pipe.cmd("XADD")
                    .arg(&results)
                    .arg("*")
                    .arg("id")
                    .arg(&item.id)
                    .arg("consumer")
                    .arg(&s.consumer)
                    .arg("text")
                    .arg(*answer)
                    .ignore();
            }
            pipe.cmd("XACK")
                .arg(&s.stream)
                .arg(&s.group)
                .arg(
                    answered
                        .iter()
                        .map(|(i, _)| i.id.as_str())
                        .collect::<Vec<_>>(),
                )
                .ignore();
            pipe.query::<()>(c)
        });
        s.holding
            .release(answered.iter().map(|(item, _)| item.id.as_str()));
        acked
    }

    /// For the pipeline's `on_failed`; what happens depends on whose the failure is:
    ///
    /// - **The item's**: a refusal, a request the API rejects as invalid (400, 413, 422), an
    ///   item over the budget on its own, an empty prompt, an answer cut at a limit, not one
    ///   of the allowed answers or without the structured output asked for, `max_turns` used
    ///   up. Asking again, here or anywhere, fails the
    ///   same way: the entry goes to `<stream>:dead` with the error, and is acknowledged.
    /// - **This program's or its account's** ([`Error::is_fatal`]: bad credentials, a spent
    ///   budget, an unknown model, the API unreachable, a usage or spend limit), or the item
    ///   was cut short by a stop ([`Error::Cancelled`], [`Error::Stopped`]): the entry stays
    ///   pending, and this delivery is not counted against `max_deliveries`, so a healthy
    ///   consumer or a later run takes it after `claim_after`, however many runs fail so.
    /// - **Anything else** (a retryable error, a timeout, a panic, another API error): the
    ///   entry stays pending and is claimed again after `claim_after`, and this delivery
    ///   counts; past `max_deliveries` it goes to `<stream>:dead`.
    pub fn on_failed(&mut self, failed: &Failed<StreamItem>) {
        let error = &failed.error;
        if !is_about_the_item(error) {
            let the_programs =
                error.is_fatal() || matches!(error, Error::Cancelled | Error::Stopped(_));
            log::info!(
                "stream {}: entry {} failed ({error}); left pending for another try{}",
                self.stream.stream,
                failed.item.id,
                if the_programs {
                    ", this delivery not counted"
                } else {
                    ""
                }
            );
            if the_programs {
                self.stream.holding.give_back(&[&failed.item]);
            } else {
                self.stream.holding.release([failed.item.id.as_str()]);
            }
            return;
        }
        let reason = failed.error.to_string();
        let s = &self.stream;
        let item = &failed.item;
        if let Err(e) = self.retry(|c| dead_letter(s, c, &item.id, Some(&item.text), &reason)) {
            log::warn!("stream {}: entry {} stays pending: {e}", s.stream, item.id);
        }
        s.holding.release([item.id.as_str()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_of_the_item_itself_are_dead_lettered() {
        let message = || "message".to_string();
        let the_items = [
            Error::Refused { message: message() },
            Error::Api {
                status: Some(400),
                message: message(),
            },
            Error::Api {
                status: Some(413),
                message: message(),
            },
            Error::ItemOverBudget {
                estimate_usd: 2.0,
                left_usd: 1.0,
                budget_usd: 5.0,
            },
            Error::EmptyPrompt,
            Error::Cli(CliError::MaxTurns { turns: 3 }),
        ];
        for error in &the_items {
            assert!(is_about_the_item(error), "{error:?}");
        }
        let not_the_items = [
            Error::Authentication { message: message() },
            Error::BudgetExceeded {
                budget_usd: 5.0,
                spent_usd: 5.0,
            },
            Error::ModelNotFound { message: message() },
            Error::ApiUnreachable {
                message: message(),
                failures: 5,
            },
            Error::SpendLimitReached { message: message() },
            Error::Api {
                status: Some(529),
                message: message(),
            },
            Error::Api {
                status: Some(403),
                message: message(),
            },
            Error::Timeout(Duration::from_secs(60)),
            Error::Panicked(message()),
            Error::Cancelled,
            Error::Stopped(Box::new(Error::Closed)),
        ];
        for error in &not_the_items {
            assert!(!is_about_the_item(error), "{error:?}");
        }
    }
}
