//! A Broadway-style pipeline for sources that never end and results that go to a store in
//! batches: **source → processors → batcher → sink**, with bounded channels between the
//! stages and a graceful stop.
//!
//! - **Source**: an iterator or a crossbeam [`Receiver`](crossbeam_channel::Receiver), pulled
//!   on a thread of the pipeline's own, one item per free in-flight slot.
//! - **Processors**: each item's prompt runs on the session's threads (at most
//!   `concurrency` calls at once, throttled, retried and budgeted like any other item),
//!   then an optional `transform` makes it the value batched.
//! - **Batcher**: gathers values into batches (per key, with `batch_key`), each handed over
//!   when it has `batch_size` items or `batch_timeout` after its first item.
//! - **Sink**: the batch handler gets each batch, `on_failed` each failure, one at a time, in
//!   the order batches were formed.
//!
//! **Bounded memory**: at most `max_in_flight` items (default 4 × concurrency) are between
//! the source and the batcher, and a slow handler holds the batcher, which holds the slots,
//! which holds the source: an endless source runs in constant memory (see
//! [`PipelineStats::in_flight`] and [`PipelineStats::buffered`]).
//!
//! **Exactly once**: every item taken from the source ends in exactly one batch handed to
//! the handler, or in `on_failed`, whatever fails, panics or stops. Without an `on_failed`,
//! failures are told on stderr (the first at once, the count at the end; see
//! [`PipelineBuilder::on_failed`]).
//!
//! **Graceful stop**: [`Pipeline::stop`] stops taking from the source, lets the calls
//! in flight finish (for [`DEFAULT_STOP_TIMEOUT`] at most, or the bound given to
//! [`Pipeline::stop_within`], after which they are ended and fail as stopped), fails
//! the items not yet sent (as [`Error::Cancelled`]), flushes the partial batches, and returns
//! the final stats. A fatal error (bad credentials, a spent
//! budget) stops the pipeline the same way by itself.

mod batcher;
mod builder;
mod process;
mod shared;
mod sink;
mod source;
mod stats;

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

pub use builder::{NoHandler, PipelineBuilder};
pub use stats::PipelineStats;

use batcher::Batcher;
use process::{Processor, ToBatcher};
use shared::{Phase, Shared};
use sink::Sink;
use source::SourceStage;

use crate::Error;

/// A batch of values handed to the batch handler.
///
/// # Examples
///
/// ```
/// use claude_rayon::pipeline::{Batch, Flush};
///
/// fn store(batch: Batch<String, &'static str>) {
///     if batch.flush == Flush::Timeout {
///         println!("{} rows for {} (partial, timed out)", batch.len(), batch.key);
///     }
/// }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Batch<O, K = ()> {
    /// The key its items share (`()` without [`PipelineBuilder::batch_key`]).
    pub key: K,
    /// The values, in the order their answers came (not the source's order).
    pub items: Vec<O>,
    /// Its place in the order batches were formed, over the whole pipeline, from 0.
    pub seq: u64,
    /// Why it was handed over.
    pub flush: Flush,
}

impl<O, K> Batch<O, K> {
    /// Items in the batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it has no items (never true of a batch handed to a handler).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The values.
    pub fn into_items(self) -> Vec<O> {
        self.items
    }
}

/// Why a batch was handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flush {
    /// It reached `batch_size`.
    Full,
    /// `batch_timeout` passed since its first item.
    Timeout,
    /// The source ended or the pipeline stopped: what was left.
    Drain,
}

/// A running pipeline from a source that may never end to a handler that takes batches:
/// configure one with [`Pipeline::builder`], then [`start`](PipelineBuilder::start) it (or
/// [`run`](PipelineBuilder::run) it to its end). Watch it, stop it, or wait for it. See the
/// [module documentation](crate::pipeline) for the stages.
///
/// Dropping it stops the pipeline (as [`stop`](Self::stop) does) without waiting for it: the
/// items in flight still end, on the pipeline's threads.
///
/// # Examples
///
/// Tickets arrive on a channel; each gets a one-word urgency, and the rows go to a store in
/// batches of 4 (on the built-in simulator here, so it runs anywhere):
///
/// ```
/// claude_rayon::simulator::serve_if_requested();
/// use std::time::Duration;
/// use claude_rayon::pipeline::Pipeline;
/// use claude_rayon::Session;
///
/// let session = Session::builder().simulated()?.concurrency(2).build()?;
/// let (tx, rx) = crossbeam_channel::bounded(16);
/// std::thread::spawn(move || {
///     for id in 0..10u32 {
///         tx.send((id, format!("printer {id} is on fire"))).unwrap();
///     }
/// });
/// let stats = Pipeline::builder(&session)
///     .source_channel(rx)
///     .prompt(|(_, text): &(u32, String)| format!("Urgency of this ticket, in one word: {text}"))
///     .transform(|(id, _), answer| (*id, answer.text))
///     .batch_size(4)
///     .batch_timeout(Duration::from_millis(200))
///     .on_batch(|batch| println!("store {} rows", batch.items.len()))
///     .on_failed(|failed| eprintln!("ticket {} failed: {}", failed.item.0, failed.error))
///     .run()?;
/// assert_eq!(stats.received, 10);
/// assert_eq!(stats.batched_items + stats.failed, 10);
/// # Ok::<(), claude_rayon::Error>(())
/// ```
///
/// An endless source, stopped gracefully after a while:
///
/// ```no_run
/// use std::time::Duration;
/// use claude_rayon::pipeline::Pipeline;
/// use claude_rayon::Session;
///
/// let session = Session::builder().model("haiku").concurrency(4).build()?;
/// let handle = Pipeline::builder(&session)
///     .source((0u64..).map(|n| format!("event {n}")))
///     .prompt(|event: &String| format!("Summarise: {event}"))
///     .on_batch(|batch| println!("{} answers", batch.items.len()))
///     .start()?;
/// std::thread::sleep(Duration::from_secs(10));
/// let stats = handle.stop();
/// assert_eq!(stats.received, stats.batched_items + stats.failed);
/// # Ok::<(), claude_rayon::Error>(())
/// ```
#[must_use = "dropping a started pipeline stops it"]
pub struct Pipeline {
    shared: Arc<Shared>,
    supervisor: Option<JoinHandle<PipelineStats>>,
    /// Closed when the supervisor is done.
    finished: crossbeam_channel::Receiver<()>,
}

/// How long [`Pipeline::stop`] lets calls in flight finish before ending them.
pub const DEFAULT_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Pipeline {
    /// Start configuring a pipeline whose source yields `T`, on `session`: its
    /// concurrency, throttle, retries and budget. Items run on its threads, at most
    /// [`Session::concurrency`](crate::Session::concurrency) calls at once. The type is
    /// usually inferred from the source, so set that first.
    pub fn builder<T: Send + 'static>(session: &crate::Session) -> PipelineBuilder<T> {
        PipelineBuilder::new(session)
    }

    /// What the pipeline has done so far. The counters are read one at a time, so while it
    /// runs they may be a moment apart (an item counted as received and not yet in flight).
    ///
    /// # Examples
    ///
    /// A source that ends, watched while it runs, then waited for:
    ///
    /// ```
    /// # claude_rayon::simulator::serve_if_requested();
    /// use claude_rayon::pipeline::Pipeline;
    /// use claude_rayon::Session;
    ///
    /// let session = Session::builder().simulated()?.concurrency(2).build()?;
    /// let running = Pipeline::builder(&session)
    ///     .source(0..20u32)
    ///     .prompt(|n: &u32| format!("item {n}"))
    ///     .batch_size(5)
    ///     .on_batch(|batch| assert!(batch.len() <= 5))
    ///     .start()?;
    /// eprintln!("{} in flight", running.stats().in_flight);
    /// let stats = running.join(); // until the source ends and every item is handled
    /// assert_eq!((stats.received, stats.batched_items), (20, 20));
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    pub fn stats(&self) -> PipelineStats {
        self.shared.snapshot()
    }

    /// Stop gracefully and wait: take nothing more from the source, let the calls in flight
    /// finish (for up to [`DEFAULT_STOP_TIMEOUT`]; see [`stop_within`](Self::stop_within)),
    /// hand the items not yet sent to `on_failed` (as [`Error::Cancelled`]), flush the
    /// partial batches, and return the final stats.
    ///
    /// An iterator blocked inside `next()` is not waited for; an item it yields later goes
    /// to `on_failed`, after these stats were taken.
    ///
    /// # Panics
    ///
    /// Only if the pipeline itself panicked (a bug in this crate): the panic is passed on.
    pub fn stop(self) -> PipelineStats {
        self.stop_within(DEFAULT_STOP_TIMEOUT)
    }

    /// Stop as [`stop`](Self::stop) does, but give the calls in flight only `bound` to
    /// finish: after it, their processes are killed and their items go to `on_failed` as
    /// stopped ([`Error::Cancelled`]). Answers already in hand still go to the handler, each
    /// exactly once, so a slow handler still takes its time for the batches already formed.
    ///
    /// # Examples
    ///
    /// ```
    /// # claude_rayon::simulator::serve_if_requested();
    /// use std::time::Duration;
    /// use claude_rayon::pipeline::Pipeline;
    /// use claude_rayon::Session;
    ///
    /// let session = Session::builder().simulated()?.concurrency(2).build()?;
    /// let handle = Pipeline::builder(&session)
    ///     .source(0..)
    ///     .prompt(|n: &u64| format!("item {n}"))
    ///     .on_batch(|_batch| {})
    ///     .start()?;
    /// let stats = handle.stop_within(Duration::from_secs(1));
    /// assert_eq!(stats.received, stats.succeeded + stats.failed);
    /// # Ok::<(), claude_rayon::Error>(())
    /// ```
    ///
    /// # Panics
    ///
    /// As [`stop`](Self::stop).
    pub fn stop_within(mut self, bound: std::time::Duration) -> PipelineStats {
        self.shared.request_stop();
        let deadline = crate::clock::saturating_add(std::time::Instant::now(), bound);
        if self.finished.recv_deadline(deadline).is_err() && !self.is_finished() {
            log::info!("pipeline stop: calls still in flight after {bound:?} are ended");
            self.shared.run.stop().abort();
        }
        self.wait()
    }

    /// Ask the pipeline to stop, without waiting; [`join`](Self::join) then waits for it.
    pub fn request_stop(&self) {
        self.shared.request_stop();
    }

    /// Wait until the source ends (or a stop, or a fatal error) and every item is handled;
    /// return the final stats.
    ///
    /// # Panics
    ///
    /// As [`stop`](Self::stop).
    pub fn join(mut self) -> PipelineStats {
        self.wait()
    }

    /// Whether the pipeline has ended (its final stats are ready for `join`).
    pub fn is_finished(&self) -> bool {
        self.supervisor.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn wait(&mut self) -> PipelineStats {
        let supervisor = self.supervisor.take().expect("waited once");
        match supervisor.join() {
            Ok(stats) => stats,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if self.supervisor.is_some() {
            self.shared.request_stop();
        }
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("stats", &self.stats())
            .finish()
    }
}

/// A started pipeline's ends, held by whoever supervises it.
pub(crate) struct Running<T, O, K> {
    shared: Arc<Shared>,
    results: Sender<ToBatcher<T, O, K>>,
    batcher: JoinHandle<()>,
    sink: JoinHandle<()>,
    /// Without an `on_failed`, where failures went: it says how many at the end.
    unhandled: Option<Arc<sink::Unhandled>>,
}

fn invalid(message: &str) -> Error {
    Error::InvalidConfig(message.into())
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(format!("claude-rayon-pipeline-{name}"))
        .spawn(body)
        .map_err(Error::io)
}

/// Check the settings, open the channels and start the source, batcher and sink threads.
pub(crate) fn launch<T, O, K, H>(
    builder: PipelineBuilder<T, O, K, H>,
) -> Result<Running<T, O, K>, Error>
where
    T: Send + 'static,
    O: Send + 'static,
    K: Eq + std::hash::Hash + Clone + Send + 'static,
    H: FnMut(Batch<O, K>) + Send + 'static,
{
    let PipelineBuilder {
        common,
        output,
        key,
        handler,
    } = builder;
    let session = common.session;
    if session.answers_in_batches() {
        return Err(Error::InvalidConfig(crate::session::refused_by_batches(
            "a pipeline",
        )));
    }
    let source = common.source.ok_or_else(|| {
        invalid("a pipeline needs a source: .source(iterator) or .source_channel(receiver)")
    })?;
    let prompt = common
        .prompt
        .ok_or_else(|| invalid("a pipeline needs a prompt: .prompt(|item| ...)"))?;
    if common.batch_size == 0 {
        return Err(invalid("batch_size must be at least 1"));
    }
    let max_in_flight = common.max_in_flight.unwrap_or(4 * session.concurrency());
    if max_in_flight == 0 {
        return Err(invalid("max_in_flight must be at least 1"));
    }
    let (on_failed, unhandled) = match common.on_failed {
        Some(handler) => (handler, None),
        None => {
            let unhandled = Arc::new(sink::Unhandled::default());
            (unhandled.handler(), Some(unhandled))
        }
    };
    let on_failed: shared::OnFailed<T> = Arc::new(parking_lot::Mutex::new(on_failed));
    let shared = Arc::new(Shared::new(
        &session,
        max_in_flight,
        common.progress,
        common.journal.as_ref(),
    ));
    shared.stop_on_session_cancel();
    // Never full: one result per slot, plus the end.
    let (results_tx, results_rx) = crossbeam_channel::bounded(max_in_flight + 1);
    // One batch (or failure) waits while the handler works on the one before.
    let (sink_tx, sink_rx) = crossbeam_channel::bounded(1);

    let sink = Sink {
        shared: Arc::clone(&shared),
        inbox: sink_rx,
        handler,
        on_failed: Arc::clone(&on_failed),
    };
    let sink = spawn("sink", move || sink.run())?;
    let batcher = Batcher {
        shared: Arc::clone(&shared),
        results: results_rx,
        sink: sink_tx,
        batch_size: common.batch_size,
        batch_timeout: common.batch_timeout,
    };
    let batcher = spawn("batcher", move || batcher.run())?;
    let processor = Arc::new(Processor {
        shared: Arc::clone(&shared),
        prompt,
        output,
        key,
        results: results_tx.clone(),
    });
    let stage = SourceStage {
        source,
        shared: Arc::clone(&shared),
        processor,
        on_failed,
    };
    if let Err(error) = spawn("source", move || stage.run()) {
        // The batcher and sink end when their senders go.
        drop(results_tx);
        return Err(error);
    }
    Ok(Running {
        shared,
        results: results_tx,
        batcher,
        sink,
        unhandled,
    })
}

impl<T, O, K> Running<T, O, K> {
    /// Wait for the source to end (or a stop), then for every item, then flush; the final
    /// stats.
    pub(crate) fn supervise(self) -> PipelineStats {
        let shared = &self.shared;
        // Slots the source thread keeps: those it held if it is left behind inside `next()`.
        let held = {
            let mut state = shared.source.lock();
            loop {
                match state.phase {
                    Phase::Done => break 0,
                    Phase::InNext if state.stop => {
                        state.detached = true;
                        break state.held;
                    }
                    _ => shared.source_changed.wait(&mut state),
                }
            }
        };
        // Every slot back means every item sent has its result at the batcher.
        shared.slots.take(shared.max_in_flight - held, &|| false);
        let _ = self.results.send(ToBatcher::End);
        for stage in [self.batcher, self.sink] {
            if let Err(panic) = stage.join() {
                std::panic::resume_unwind(panic);
            }
        }
        shared.run.finish();
        // Under the source lock: an item a left-behind source hands over is counted wholly
        // or not at all.
        let stats = {
            let _source = shared.source.lock();
            shared.snapshot()
        };
        if let Some(unhandled) = &self.unhandled {
            unhandled.summarise(&stats);
        }
        stats
    }
}
