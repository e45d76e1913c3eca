//! [`PipelineBuilder`]: the source, the processing, the batching and the handlers.
//!
//! The types follow the settings: `transform` sets the value type `O`, `batch_key` the key
//! type `K`, and `on_batch` the handler `H`, in that order (each is checked at compile time:
//! a handler is typed on the batches it takes, so it comes last).

use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::process::{KeyFn, Output, PromptFn};
use super::source::Source;
use super::{Batch, Pipeline, PipelineStats};
use crate::{Error, Failed, Response, Session};

/// Marks a [`PipelineBuilder`] without a batch handler yet: [`on_batch`](PipelineBuilder::on_batch)
/// sets one, and `run()` and `start()` need it.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHandler;

/// The settings that do not depend on the value, key or handler types.
pub(crate) struct Common<T> {
    pub source: Option<Source<T>>,
    pub session: Session,
    pub prompt: Option<PromptFn<T>>,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub max_in_flight: Option<usize>,
    pub on_failed: Option<Box<dyn FnMut(Failed<T>) + Send>>,
    pub progress: Option<bool>,
    pub journal: Option<crate::Journal>,
}

/// Configures a [`Pipeline`]: made by [`Pipeline::builder`], which takes the session.
///
/// - `T`: the source's items;
/// - `O`: the value each answered item becomes, `(T, Response)` unless
///   [`transform`](Self::transform) says otherwise;
/// - `K`: the batch key, `()` (one stream of batches) unless [`batch_key`](Self::batch_key)
///   says otherwise;
/// - `H`: the batch handler, [`NoHandler`] until [`on_batch`](Self::on_batch).
///
/// Needed besides the session: a source ([`source`](Self::source) or
/// [`source_channel`](Self::source_channel)), a [`prompt`](Self::prompt) and a handler
/// ([`on_batch`](Self::on_batch)).
#[must_use = "a pipeline does nothing until run() or start()"]
pub struct PipelineBuilder<T, O = (T, Response), K = (), H = NoHandler> {
    pub(crate) common: Common<T>,
    pub(crate) output: Output<T, O>,
    pub(crate) key: KeyFn<O, K>,
    pub(crate) handler: H,
}

impl<T, O, K, H> std::fmt::Debug for PipelineBuilder<T, O, K, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.common;
        f.debug_struct("PipelineBuilder")
            .field("session", &c.session)
            .field("has_source", &c.source.is_some())
            .field("has_prompt", &c.prompt.is_some())
            .field("batch_size", &c.batch_size)
            .field("batch_timeout", &c.batch_timeout)
            .field("max_in_flight", &c.max_in_flight)
            .field("progress", &c.progress)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> PipelineBuilder<T> {
    pub(crate) fn new(session: &Session) -> Self {
        PipelineBuilder {
            common: Common {
                source: None,
                session: session.clone(),
                prompt: None,
                batch_size: 100,
                batch_timeout: Duration::from_secs(1),
                max_in_flight: None,
                on_failed: None,
                progress: None,
                journal: None,
            },
            output: Output::Pair {
                make: |item, response| (item, response),
                back: |(item, _)| item,
            },
            key: Arc::new(|_: &(T, Response)| ()),
            handler: NoHandler,
        }
    }
}

impl<T, O, K, H> PipelineBuilder<T, O, K, H> {
    /// Draw a progress bar for this pipeline (feature `progress`), whatever the session's
    /// own [`progress`](crate::SessionBuilder::progress) setting says; `false` turns it off
    /// for this pipeline. Progress callbacks of the session are called either way.
    pub fn progress(mut self, show: bool) -> Self {
        self.common.progress = Some(show);
        self
    }

    /// Keep the pipeline's answers in `journal` (instead of the session's, if it has one):
    /// an item whose answer is already there is not sent again. See
    /// [`Journal`](crate::Journal).
    pub fn with_journal(mut self, journal: &crate::Journal) -> Self {
        self.common.journal = Some(journal.clone());
        self
    }

    /// Take items from an iterator, which may never end. It is pulled on a thread of the
    /// pipeline's own, only as fast as items can be processed.
    ///
    /// On [`stop`](super::Pipeline::stop) it is not pulled again; if it is blocked
    /// inside `next()` then (waiting on a socket, say), the stop does not wait for it: its
    /// thread is left behind, and an item it yields later goes to `on_failed` with
    /// [`Error::Cancelled`] (or [`Error::Stopped`] after a fatal error). A channel is better
    /// served by [`source_channel`](Self::source_channel), which a stop never waits on.
    pub fn source<I>(mut self, source: I) -> Self
    where
        I: Iterator<Item = T> + Send + 'static,
    {
        self.common.source = Some(Source::Iter(Box::new(source)));
        self
    }

    /// Take items from a crossbeam channel until every sender is dropped. A stop interrupts a
    /// wait on it at once (the receive is `select`ed against the stop).
    pub fn source_channel(mut self, receiver: Receiver<T>) -> Self {
        self.common.source = Some(Source::Channel(receiver));
        self
    }

    /// The prompt for an item. A panic in it fails that item only, with
    /// [`Error::Panicked`].
    pub fn prompt<F, P>(mut self, prompt_fn: F) -> Self
    where
        F: Fn(&T) -> P + Send + Sync + 'static,
        P: AsRef<str>,
    {
        self.common.prompt = Some(Arc::new(move |item: &T| {
            prompt_fn(item).as_ref().to_string()
        }));
        self
    }

    /// Items per batch (default 100): a batch is handed over as soon as it has this many.
    pub fn batch_size(mut self, size: usize) -> Self {
        self.common.batch_size = size;
        self
    }

    /// How long a batch may wait to fill (default 1 s), from its first item: then it is
    /// handed over as it is. The items of a slow or idle source are so never held for long.
    pub fn batch_timeout(mut self, timeout: Duration) -> Self {
        self.common.batch_timeout = timeout;
        self
    }

    /// The most items between the source and the batcher at once (default 4 × the
    /// session's concurrency): being processed, queued for the session's threads, or
    /// answered and not yet batched. The source refills in bursts once half of them are
    /// free, so the part above `concurrency` keeps the session's threads supplied while it
    /// sleeps. A stop fails the queued ones, unsent.
    pub fn max_in_flight(mut self, items: usize) -> Self {
        self.common.max_in_flight = Some(items);
        self
    }

    /// What to do with an item that failed: its error and attempts, the item handed back
    /// (see [`Failed`]). Called one at a time. A panic in it is counted
    /// ([`PipelineStats::on_failed_panics`]) and the pipeline goes on.
    ///
    /// Without it, a failed item is lost, but not unseen: each is logged at warn, the first
    /// that is not a stop is written to stderr at once (its error, and that no handler took
    /// it), and when the pipeline ends one line on stderr says how many items failed
    /// (and how many of those were stopped unsent). [`PipelineStats::failed`] counts them
    /// too. To keep stderr quiet, give a handler, even `.on_failed(|_| {})`.
    pub fn on_failed<F>(mut self, on_failed: F) -> Self
    where
        F: FnMut(Failed<T>) + Send + 'static,
    {
        self.common.on_failed = Some(Box::new(on_failed));
        self
    }
}

impl<T: Send + 'static> PipelineBuilder<T, (T, Response), (), NoHandler> {
    /// Turn each answered item into the value batched, instead of `(item, response)`. The
    /// item is borrowed so that, should the transform panic, it can still be handed to
    /// `on_failed` (with [`Error::Panicked`]); the session then counts a success that the
    /// pipeline counts as a failure.
    pub fn transform<O2, F>(self, transform: F) -> PipelineBuilder<T, O2, (), NoHandler>
    where
        F: Fn(&T, Response) -> O2 + Send + Sync + 'static,
        O2: Send + 'static,
    {
        PipelineBuilder {
            common: self.common,
            output: Output::Custom(Arc::new(transform)),
            key: Arc::new(|_: &O2| ()),
            handler: NoHandler,
        }
    }
}

impl<T, O: 'static> PipelineBuilder<T, O, (), NoHandler> {
    /// Batch by key: items with the same key go in the same batches, and the batches of one
    /// key are handed to the handler one at a time, in the order they were formed. Each key
    /// has its own partial batch and timeout. A panic in `key_fn` fails that item, with
    /// [`Error::Panicked`].
    ///
    /// Memory holds up to one partial batch per key that has items waiting, so a key space
    /// without bound (a user id, say) holds as many partial batches as keys seen within one
    /// `batch_timeout`.
    pub fn batch_key<K2, F>(self, key_fn: F) -> PipelineBuilder<T, O, K2, NoHandler>
    where
        F: Fn(&O) -> K2 + Send + Sync + 'static,
        K2: Eq + Hash + Clone + Send + 'static,
    {
        PipelineBuilder {
            common: self.common,
            output: self.output,
            key: Arc::new(key_fn),
            handler: NoHandler,
        }
    }
}

impl<T, O, K> PipelineBuilder<T, O, K, NoHandler> {
    /// The batch handler: called with each batch, one at a time, in the order batches were
    /// formed (on a thread of the pipeline's own). Writing to a store goes here. A panic in it
    /// is counted ([`PipelineStats::handler_panics`], with the batch's items in
    /// [`PipelineStats::handler_panic_items`]) and the pipeline goes on.
    pub fn on_batch<H>(self, handler: H) -> PipelineBuilder<T, O, K, H>
    where
        H: FnMut(Batch<O, K>) + Send + 'static,
    {
        PipelineBuilder {
            common: self.common,
            output: self.output,
            key: self.key,
            handler,
        }
    }
}

impl<T, O, K, H> PipelineBuilder<T, O, K, H>
where
    T: Send + 'static,
    O: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
    H: FnMut(Batch<O, K>) + Send + 'static,
{
    /// Run the pipeline until the source ends and every item has been handled (in a batch
    /// or in `on_failed`), or until a fatal error stops it; return the final stats.
    ///
    /// The calling thread only waits; call it from outside the session's own threads (not
    /// from a prompt closure), which the items need.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if the source or prompt is missing, or a size is 0;
    /// [`Error::Io`] if a thread cannot be started. Items' failures go to `on_failed`.
    pub fn run(self) -> Result<PipelineStats, Error> {
        Ok(super::launch(self)?.supervise())
    }

    /// Start the pipeline on threads of its own and return a handle to watch it
    /// ([`stats`](Pipeline::stats)), stop it gracefully ([`stop`](Pipeline::stop))
    /// or wait for its source to end ([`join`](Pipeline::join)).
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub fn start(self) -> Result<Pipeline, Error> {
        let running = super::launch(self)?;
        let shared = Arc::clone(&running.shared);
        let (finished_tx, finished) = crossbeam_channel::bounded::<()>(0);
        let supervisor = std::thread::Builder::new()
            .name("claude-rayon-pipeline".into())
            .spawn(move || {
                let stats = running.supervise();
                drop(finished_tx);
                stats
            })
            .map_err(Error::io)?;
        Ok(Pipeline {
            shared,
            supervisor: Some(supervisor),
            finished,
        })
    }
}
