//! A pipeline source and its acknowledgement over a Redis Stream with a consumer group:
//! [`RedisStream`].
//!
//! Items are read with `XREADGROUP` and stay pending in the group until [`Acker`]
//! acknowledges them, after their answer was handed on; a consumer that died leaves them
//! pending, and after `claim_after` of idleness the others take them over (`XAUTOCLAIM`).
//! An item delivered more than `max_deliveries` times goes to `<stream>:dead` instead.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::Value;

use super::Store;
use crate::{Error, Failed};

/// How many entries one read or claim takes.
const READ_COUNT: usize = 16;

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
///   times (default 4), one without a `text` field, or one that failed with an error that
///   retrying cannot fix ([`Acker::on_failed`]) goes to `<stream>:dead` with the reason, and
///   is acknowledged. A retryable failure stays pending and is claimed again after
///   `claim_after`.
///
/// What it costs: a read per 16 items, a claim check every quarter of `claim_after`, one
/// transaction per batch acknowledged (docs/scaling-out.md).
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
        Ok(RedisStream {
            store: Arc::new(store),
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            claim_after: Duration::from_secs(60),
            max_deliveries: 4,
            until_drained: false,
        })
    }

    /// How long an entry must have been pending, untouched, before another consumer takes
    /// it over (default 60 s): longer than the slowest item takes, or items in flight are
    /// asked twice.
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
            .arg(READ_COUNT)
            .query(self.connection()?)
            .map_err(|e| s.store.reason(&e))?;
        self.claim_cursor = reply.next_stream_id.clone();
        if reply.claimed.is_empty() {
            return Ok(());
        }
        // The claim counted a delivery; XPENDING says how many in all.
        let first = reply
            .claimed
            .first()
            .map(|e| e.id.clone())
            .unwrap_or_default();
        let last = reply
            .claimed
            .last()
            .map(|e| e.id.clone())
            .unwrap_or_default();
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&s.stream)
            .arg(&s.group)
            .arg(&first)
            .arg(&last)
            .arg(READ_COUNT * 4)
            .arg(&s.consumer)
            .query(self.connection()?)
            .map_err(|e| s.store.reason(&e))?;
        for entry in reply.claimed {
            let deliveries = pending
                .iter()
                .find(|(id, ..)| *id == entry.id)
                .map_or(2, |p| p.3);
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

/// Acknowledges a [`RedisStream`]'s entries once their answers are handed on, from the
/// pipeline's batch handler or `on_failed`.
///
/// Until acknowledged, an entry stays pending in the group: if this program dies, another
/// consumer claims it. Each call is one transaction; when Redis cannot be reached it tries
/// for 30 s, then gives up with [`Error::SharedStore`] and the entries stay pending (they
/// are asked again after `claim_after`, by this program or another).
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
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut backoff = Duration::from_millis(100);
        let mut said = false;
        loop {
            match self.stream.store.run(&mut f) {
                Ok(()) => return Ok(()),
                Err(message) if Instant::now() + backoff > deadline => {
                    return Err(self.stream.store.error(message))
                }
                Err(message) => {
                    if !std::mem::replace(&mut said, true) {
                        log::warn!(
                            "stream {} at {}: cannot acknowledge ({message}); trying again",
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
        self.retry(|c| {
            redis::cmd("XACK")
                .arg(&s.stream)
                .arg(&s.group)
                .arg(&ids)
                .query::<()>(c)
        })
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
        self.retry(|c| {
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
        })
    }

    /// For the pipeline's `on_failed`: an item whose error retrying cannot fix (a refusal, a
    /// bad request, an item over budget) goes to `<stream>:dead` with the error and is
    /// acknowledged; a retryable one (or one cut short by a stop) stays pending, to be
    /// claimed again after `claim_after` (counted against `max_deliveries`).
    pub fn on_failed(&mut self, failed: &Failed<StreamItem>) {
        let cut_short = matches!(failed.error, Error::Cancelled | Error::Stopped(_));
        if failed.error.is_retryable() || cut_short {
            log::info!(
                "stream {}: entry {} failed ({}); left pending for another try",
                self.stream.stream,
                failed.item.id,
                failed.error
            );
            return;
        }
        let reason = failed.error.to_string();
        let s = &self.stream;
        let item = &failed.item;
        if let Err(e) = self.retry(|c| dead_letter(s, c, &item.id, Some(&item.text), &reason)) {
            log::warn!("stream {}: entry {} stays pending: {e}", s.stream, item.id);
        }
    }
}
