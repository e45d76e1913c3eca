//! The batcher: one thread that gathers answered items into batches per key, cuts a batch
//! when it is full or when its timeout (counted from its first item) expires, and sends
//! batches and failures on to the sink in the order they are cut. It also gives the items'
//! in-flight slots back as their results arrive.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::process::{Processed, ToBatcher};
use super::shared::Shared;
use super::sink::ToSink;
use super::{Batch, Flush};
use crate::stats::add;
use crate::Error;

/// A batch being filled.
struct Open<O> {
    items: Vec<O>,
    /// When it was opened, which orders open batches by deadline too (one timeout for all).
    opened: u64,
    deadline: Instant,
}

pub(crate) struct Batcher<T, O, K> {
    pub shared: Arc<Shared>,
    pub results: Receiver<ToBatcher<T, O, K>>,
    pub sink: Sender<ToSink<T, O, K>>,
    pub batch_size: usize,
    pub batch_timeout: Duration,
}

impl<T, O, K> Batcher<T, O, K>
where
    K: Eq + Hash + Clone,
{
    pub(crate) fn run(self) {
        let mut open: HashMap<K, Open<O>> = HashMap::new();
        // Open batches, oldest first: the first one's deadline is the next to expire.
        let mut by_age: BTreeMap<u64, K> = BTreeMap::new();
        let mut opened = 0u64;
        let mut seq = 0u64;
        let mut inbox = Vec::new();
        let counters = &self.shared.counters;
        loop {
            let next_deadline = by_age.values().next().map(|key| open[key].deadline);
            let first = match next_deadline {
                Some(deadline) => self.results.recv_deadline(deadline),
                None => self
                    .results
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match first {
                Ok(message) => inbox.push(message),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    while let Some((&age, key)) = by_age.first_key_value() {
                        if open[key].deadline > now {
                            break;
                        }
                        let key = key.clone();
                        by_age.remove(&age);
                        let batch = open.remove(&key).expect("indexed by age");
                        self.send(key, batch, Flush::Timeout, &mut seq);
                    }
                    continue;
                }
            }
            // Take whatever else has arrived, and free all their slots at once: one wake-up
            // of the source for many items.
            inbox.extend(self.results.try_iter());
            let arrived = inbox
                .iter()
                .filter(|m| matches!(m, ToBatcher::Item(_)))
                .count();
            // Out of flight before the slots are free, so the gauge never shows more than
            // `max_in_flight`.
            counters.in_flight.sub(arrived as u64);
            counters.buffered.add(arrived as u64);
            self.shared.slots.give_back(arrived);
            let mut ended = false;
            for message in inbox.drain(..) {
                let processed = match message {
                    ToBatcher::Item(processed) => processed,
                    ToBatcher::End => {
                        ended = true;
                        continue;
                    }
                };
                match processed {
                    Processed::Ok(output, key) => {
                        add(&counters.succeeded, 1);
                        let batch = open.entry(key.clone()).or_insert_with(|| {
                            opened += 1;
                            by_age.insert(opened, key.clone());
                            Open {
                                items: Vec::with_capacity(self.batch_size.min(1024)),
                                opened,
                                deadline: crate::clock::saturating_add(
                                    Instant::now(),
                                    self.batch_timeout,
                                ),
                            }
                        });
                        batch.items.push(output);
                        if batch.items.len() >= self.batch_size {
                            let batch = open.remove(&key).expect("just filled");
                            by_age.remove(&batch.opened);
                            self.send(key, batch, Flush::Full, &mut seq);
                        }
                    }
                    Processed::Failed(failed, stopped) => {
                        let _ = self.sink.send(ToSink::Failed(failed, stopped));
                    }
                    Processed::Bug(message) => {
                        counters.buffered.sub(1);
                        log::error!("a pipeline job panicked in claude-rayon itself: {message}");
                        self.shared.stop_fatally(Error::Panicked(format!(
                            "claude-rayon's pipeline lost an item to an internal panic: {message}"
                        )));
                    }
                }
            }
            if ended {
                break;
            }
        }
        // Every item's result is in: flush what is left, oldest first.
        for key in std::mem::take(&mut by_age).into_values() {
            let batch = open.remove(&key).expect("indexed by age");
            self.send(key, batch, Flush::Drain, &mut seq);
        }
    }

    fn send(&self, key: K, open: Open<O>, flush: Flush, seq: &mut u64) {
        let batch = Batch {
            key,
            items: open.items,
            seq: *seq,
            flush,
        };
        *seq += 1;
        // Blocks while the handler is busy with the batch before: that is the backpressure
        // that reaches the source through the in-flight slots.
        let _ = self.sink.send(ToSink::Batch(batch));
    }
}
