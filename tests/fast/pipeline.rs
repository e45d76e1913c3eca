//! `Pipeline`: every item ends exactly once (under faults, panics and stops at many points),
//! batches are cut by size, timeout and the end of the source, batches of one key come in
//! formation order one at a time, memory stays bounded over a long source, and a fatal error
//! or a panicking source ends the run by itself; on both backends.

use crate::{on_both_backends, support};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use claude_rayon::pipeline::Pipeline;
use claude_rayon::pipeline::{Batch, Flush, PipelineStats};
use claude_rayon::{CliError, Error, Failed, Response, Session};
use support::backends::{Kind, TestBackend};
use support::{wait_until, Fake};

/// Long enough for 20,000 items on a loaded 2-core machine (12 s alone; it ran out at 60 s
/// once, beside benchmarks and other builds): it is there so a hang fails, not to time.
const DEADLINE: Duration = Duration::from_secs(300);

/// Run `f` on a thread and fail the test if it has not returned by the deadline, rather
/// than hang the suite.
fn within<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// What the handlers saw: ids in batches and ids that failed, with their errors.
#[derive(Clone, Default)]
struct Seen {
    batched: Arc<Mutex<Vec<u64>>>,
    failed: Arc<Mutex<Vec<(u64, Error, u32)>>>,
}

impl Seen {
    fn on_batch(&self) -> impl FnMut(Batch<(u64, Response)>) + Send + 'static {
        let batched = Arc::clone(&self.batched);
        move |batch| {
            let mut batched = batched.lock().unwrap();
            batched.extend(batch.items.iter().map(|(id, _)| *id));
        }
    }

    fn on_failed(&self) -> impl FnMut(Failed<u64>) + Send + 'static {
        let failed = Arc::clone(&self.failed);
        move |f| failed.lock().unwrap().push((f.item, f.error, f.attempts))
    }

    fn failed_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.failed.lock().unwrap().iter().map(|f| f.0).collect();
        ids.sort_unstable();
        ids
    }

    /// Every id in `0..n` appears exactly once across batches and failures, and nothing else.
    fn assert_each_once(&self, n: u64) {
        let mut count: HashMap<u64, u32> = HashMap::new();
        for id in self.batched.lock().unwrap().iter() {
            *count.entry(*id).or_default() += 1;
        }
        for (id, _, _) in self.failed.lock().unwrap().iter() {
            *count.entry(*id).or_default() += 1;
        }
        for id in 0..n {
            assert_eq!(
                count.remove(&id),
                Some(1),
                "item {id} did not end exactly once"
            );
        }
        assert!(
            count.is_empty(),
            "items that were never received: {count:?}"
        );
    }
}

/// The final stats' own accounting: every item ended once, nothing is left inside.
fn assert_settled(stats: &PipelineStats) {
    assert_eq!(
        stats.received,
        stats.batched_items + stats.failed,
        "{stats:#?}"
    );
    assert_eq!(stats.succeeded, stats.batched_items, "{stats:#?}");
    assert!(stats.stopped <= stats.failed, "{stats:#?}");
    assert_eq!((stats.in_flight, stats.buffered), (0, 0), "{stats:#?}");
}

/// A prompt with faults mixed in: ids ending in 3 get a 400 (not retried), in 6 a broken
/// connection on every attempt (retried, then failed: the CLI process crashes, the API's
/// stream is cut), in 8 one 500 then an answer.
fn faulty_prompt(kind: Kind, id: &u64) -> String {
    match (id % 10, kind) {
        (3, _) => format!("[[sim:error=400]] item {id}"),
        (6, Kind::Cli) => format!("[[sim:crash]] item {id}"),
        (6, Kind::Api) => format!("[[sim:error=none]] item {id}"),
        (8, _) => format!("[[sim:fail-times=f{id},1,500]] item {id}"),
        _ => format!("[[sim:delay={}]] item {id}", id % 3),
    }
}

fn fails_for_good(id: u64) -> bool {
    matches!(id % 10, 3 | 6)
}

/// A small xorshift generator, so the "random" choices are the same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn every_item_ends_exactly_once_with_errors_and_crashes_mixed_in(b: &TestBackend) {
    let session = b.builder().concurrency(3).build().unwrap();
    let seen = Seen::default();
    let n = 200u64;
    let kind = b.kind();
    let stats = {
        let (session, seen) = (session.clone(), seen.clone());
        within("the pipeline over a finite source", move || {
            Pipeline::builder(&session)
                .source(0..n)
                .prompt(move |id: &u64| faulty_prompt(kind, id))
                .batch_size(7)
                .batch_timeout(Duration::from_millis(50))
                .on_batch(seen.on_batch())
                .on_failed(seen.on_failed())
                .run()
                .unwrap()
        })
    };
    assert_settled(&stats);
    assert_eq!(stats.received, n);
    seen.assert_each_once(n);
    let expected: Vec<u64> = (0..n).filter(|&id| fails_for_good(id)).collect();
    assert_eq!(seen.failed_ids(), expected);
    for (id, error, attempts) in seen.failed.lock().unwrap().iter() {
        match id % 10 {
            3 => assert!(
                matches!(
                    error,
                    Error::Api {
                        status: Some(400),
                        ..
                    }
                ) && *attempts == 1
            ),
            _ => {
                let broken = match kind {
                    Kind::Cli => matches!(error, Error::Cli(CliError::ProcessExited { .. })),
                    Kind::Api => matches!(error, Error::Api { status: None, .. }),
                };
                assert!(broken && *attempts == 4, "item {id}: {error:?}");
            }
        }
    }
    assert_eq!(stats.stopped, 0);
    assert!(stats.fatal_error.is_none());
    assert_eq!(stats.session.succeeded, stats.succeeded);
}

/// Stop an endless source once item `k` is being processed, and check the accounting.
fn stop_after(kind: Kind, session: &Session, k: u64, channel: bool, seen: &Seen) -> PipelineStats {
    let (trigger_tx, trigger_rx) = crossbeam_channel::bounded(1);
    let builder = Pipeline::builder(session);
    let builder = if channel {
        let (tx, rx) = crossbeam_channel::bounded(8);
        // Fed without end; the feeder ends when the pipeline lets go of the receiver.
        std::thread::spawn(move || {
            for id in 0u64.. {
                if tx.send(id).is_err() {
                    break;
                }
            }
        });
        builder.source_channel(rx)
    } else {
        builder.source(0u64..)
    };
    let handle = builder
        .prompt(move |id: &u64| {
            if *id == k {
                let _ = trigger_tx.try_send(());
            }
            faulty_prompt(kind, id)
        })
        .batch_size(5)
        .batch_timeout(Duration::from_millis(20))
        .on_batch(seen.on_batch())
        .on_failed(seen.on_failed())
        .start()
        .unwrap();
    trigger_rx
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("item {k} was never processed"));
    within("stop()", move || handle.stop())
}

fn stopping_at_many_points_ends_every_received_item_exactly_once(b: &TestBackend) {
    let session = b.builder().concurrency(3).build().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut points: Vec<u64> = vec![0, 1, 2];
    points.extend((0..5).map(|_| 3 + rng.below(120)));
    let mut total_stopped = 0;
    for (i, &k) in points.iter().enumerate() {
        let channel = i % 2 == 1;
        let seen = Seen::default();
        let stats = stop_after(b.kind(), &session, k, channel, &seen);
        let what = format!("stop after item {k} (channel source: {channel})");
        assert_settled(&stats);
        assert!(stats.received > k, "{what}: {stats:#?}");
        seen.assert_each_once(stats.received);
        // A stop fails only items it kept from being sent; the others fail for their own
        // reason, or not at all. An item whose first try failed and that the stop caught
        // before its retry keeps the error of that try (README, "Retries").
        for (id, error, attempts) in seen.failed.lock().unwrap().iter() {
            let stopped = matches!(error, Error::Cancelled) && *attempts == 0;
            let between_tries = id % 10 == 8 && error.api_status() == Some(500) && *attempts == 1;
            assert!(
                stopped || between_tries || fails_for_good(*id),
                "{what}: item {id} failed with {error:?} after {attempts} attempts"
            );
        }
        let stopped = seen
            .failed
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e, _)| matches!(e, Error::Cancelled))
            .count() as u64;
        assert_eq!(stats.stopped, stopped, "{what}");
        total_stopped += stats.stopped;
    }
    // Items queued for the session's threads when a stop lands are failed, not sent: the
    // path this test is for was taken.
    assert!(total_stopped > 0);
}

/// An iterator that hands out `ready` items, then says it is stuck and blocks in `next()`
/// until told to go on.
struct Stalling {
    next: u64,
    ready: u64,
    stuck: crossbeam_channel::Sender<()>,
    go_on: crossbeam_channel::Receiver<()>,
}

impl Iterator for Stalling {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.next >= self.ready {
            let _ = self.stuck.send(());
            self.go_on.recv().ok()?;
        }
        self.next += 1;
        Some(self.next - 1)
    }
}

fn stop_does_not_wait_for_a_source_blocked_in_next_and_its_late_item_still_ends_once(
    b: &TestBackend,
) {
    let session = b.builder().concurrency(2).build().unwrap();
    let (stuck, stuck_rx) = crossbeam_channel::unbounded();
    let (go_on, go_on_rx) = crossbeam_channel::bounded(1);
    let seen = Seen::default();
    let handle = Pipeline::builder(&session)
        .source(Stalling {
            next: 0,
            ready: 5,
            stuck,
            go_on: go_on_rx,
        })
        .prompt(|id: &u64| format!("item {id}"))
        .batch_size(2)
        .batch_timeout(Duration::from_secs(3600))
        .on_batch(seen.on_batch())
        .on_failed(seen.on_failed())
        .start()
        .unwrap();
    stuck_rx
        .recv_timeout(DEADLINE)
        .expect("the source gets stuck after five items");
    // The five are answered and in a partial batch: only the stuck source is left.
    wait_until("the five items are answered", DEADLINE, || {
        handle.stats().succeeded == 5
    });
    let stats = within("stop() with the source stuck in next()", move || {
        handle.stop()
    });
    assert_settled(&stats);
    assert_eq!((stats.received, stats.batched_items), (5, 5));
    assert_eq!(
        seen.batched.lock().unwrap().len(),
        5,
        "the last partial batch was flushed"
    );
    assert!(seen.failed.lock().unwrap().is_empty());
    // Now the source yields one more: too late for the run, it goes to on_failed.
    go_on.send(()).unwrap();
    wait_until("the late item reaches on_failed", DEADLINE, || {
        !seen.failed.lock().unwrap().is_empty()
    });
    let failed = seen.failed.lock().unwrap();
    assert_eq!(failed.len(), 1);
    assert!(
        matches!(failed[0], (5, Error::Cancelled, 0)),
        "{:?}",
        failed[0]
    );
}

fn a_full_batch_goes_at_once_and_a_partial_one_when_its_timeout_expires(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let timeout = Duration::from_millis(300);
    let (items, source) = crossbeam_channel::unbounded::<u64>();
    let (batches_tx, batches) = crossbeam_channel::unbounded();
    let handle = Pipeline::builder(&session)
        .source_channel(source)
        .prompt(|id: &u64| format!("item {id}"))
        .batch_size(3)
        .batch_timeout(timeout)
        .on_batch(move |batch: Batch<(u64, Response)>| batches_tx.send(batch).unwrap())
        .start()
        .unwrap();

    for id in 0..3 {
        items.send(id).unwrap();
    }
    let full = batches.recv_timeout(DEADLINE).expect("a full batch");
    assert_eq!(full.flush, Flush::Full);
    assert_eq!(full.seq, 0);
    let mut ids: Vec<u64> = full.items.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2]);

    // Two more and then nothing: no more input will come to fill the batch.
    let sent = Instant::now();
    items.send(3).unwrap();
    items.send(4).unwrap();
    let partial = batches
        .recv_timeout(DEADLINE)
        .expect("the partial batch after its timeout");
    assert_eq!(partial.flush, Flush::Timeout);
    assert_eq!((partial.seq, partial.len()), (1, 2));
    // Its clock starts with its first item, which arrived after it was sent.
    assert!(sent.elapsed() >= timeout, "flushed before its timeout");

    drop(items);
    let stats = within("join() after the source ends", move || handle.join());
    assert_settled(&stats);
    assert_eq!((stats.received, stats.batches), (5, 2));
}

fn the_end_of_the_source_flushes_the_partial_batches_without_waiting_for_the_timeout(
    b: &TestBackend,
) {
    let session = b.builder().concurrency(2).build().unwrap();
    let (batches_tx, batches) = crossbeam_channel::unbounded();
    let stats = within("a run whose last batch is partial", move || {
        Pipeline::builder(&session)
            .source(0..7u64)
            .prompt(|id: &u64| format!("item {id}"))
            .batch_key(|(id, _): &(u64, Response)| id % 2)
            .batch_size(3)
            // Only the end of the source can flush a partial batch in this test's time.
            .batch_timeout(Duration::from_secs(3600))
            .on_batch(move |batch| batches_tx.send(batch).unwrap())
            .run()
            .unwrap()
    });
    assert_settled(&stats);
    let batches: Vec<Batch<(u64, Response), u64>> = batches.try_iter().collect();
    // Evens: 0 2 4 6 (one full, one of 1); odds: 1 3 5 (full).
    assert_eq!(batches.len(), 3);
    let drained: Vec<(u64, usize)> = batches
        .iter()
        .filter(|b| b.flush == Flush::Drain)
        .map(|b| (b.key, b.len()))
        .collect();
    assert_eq!(drained, [(0, 1)]);
}

/// One call of the batch handler: the batch's key, sequence number and items.
type HandlerCall = (u64, u64, Vec<u64>);

fn batches_of_one_key_come_in_formation_order_one_at_a_time(b: &TestBackend) {
    let session = b.builder().concurrency(4).build().unwrap();
    let busy = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicU64::new(0));
    let calls: Arc<Mutex<Vec<HandlerCall>>> = Arc::default();
    let n = 150u64;
    let stats = {
        let (busy, overlaps, calls) = (busy.clone(), overlaps.clone(), calls.clone());
        within("a keyed run", move || {
            Pipeline::builder(&session)
                .source(0..n)
                .prompt(|id: &u64| format!("[[sim:delay={}]] item {id}", (id * 7) % 5))
                .transform(|id: &u64, _answer| *id)
                .batch_key(|id: &u64| id % 3)
                .batch_size(4)
                .batch_timeout(Duration::from_millis(30))
                .on_batch(move |batch: Batch<u64, u64>| {
                    if busy.swap(true, Ordering::SeqCst) {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    calls
                        .lock()
                        .unwrap()
                        .push((batch.key, batch.seq, batch.items.clone()));
                    // Long enough for another call to overlap if the pipeline allowed it.
                    std::thread::yield_now();
                    busy.store(false, Ordering::SeqCst);
                })
                .run()
                .unwrap()
        })
    };
    assert_settled(&stats);
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "two handler calls overlapped"
    );
    let calls = calls.lock().unwrap();
    // Handed over in formation order: the sequence numbers count up from 0 with no gap.
    let seqs: Vec<u64> = calls.iter().map(|c| c.1).collect();
    assert_eq!(seqs, (0..calls.len() as u64).collect::<Vec<_>>());
    let mut all: Vec<u64> = Vec::new();
    for (key, _, items) in calls.iter() {
        assert!(!items.is_empty() && items.len() <= 4);
        assert!(items.iter().all(|id| id % 3 == *key), "{key}: {items:?}");
        all.extend(items);
    }
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>());
}

fn memory_stays_bounded_over_a_long_source(b: &TestBackend) {
    let concurrency = 2;
    let session = b.builder().concurrency(concurrency).build().unwrap();
    let (n, batch_size) = (20_000u64, 50usize);
    // The default.
    let max_in_flight = 4 * concurrency as u64;
    // Results the batcher took at once (at most one per slot), then the open batch, the
    // batch being sent, one in the channel and one in the handler.
    let max_buffered = max_in_flight + 4 * batch_size as u64;
    let pulled = Arc::new(AtomicU64::new(0));
    let handled = Arc::new(AtomicU64::new(0));
    let widest_gap = Arc::new(AtomicU64::new(0));
    let source = {
        let pulled = Arc::clone(&pulled);
        (0..n).inspect(move |_| {
            pulled.fetch_add(1, Ordering::SeqCst);
        })
    };
    let on_batch = {
        let widest_gap = Arc::clone(&widest_gap);
        move |batch: Batch<(u64, Response)>| {
            // A store slower than the calls now and then, so that pressure builds.
            if batch.seq % 8 == 0 {
                std::thread::sleep(Duration::from_millis(3));
            }
            let done = handled.fetch_add(batch.len() as u64, Ordering::SeqCst);
            let out = pulled.load(Ordering::SeqCst);
            widest_gap.fetch_max(out.saturating_sub(done), Ordering::SeqCst);
        }
    };
    let stats = within("20,000 items", move || {
        Pipeline::builder(&session)
            .source(source)
            .prompt(|id: &u64| format!("item {id}"))
            .batch_size(batch_size)
            .on_batch(on_batch)
            .run()
            .unwrap()
    });
    assert_settled(&stats);
    assert_eq!(stats.received, n);
    assert!(
        stats.max_in_flight <= max_in_flight,
        "in flight: {} > {max_in_flight}",
        stats.max_in_flight
    );
    assert!(
        stats.max_buffered <= max_buffered,
        "buffered: {} > {max_buffered}",
        stats.max_buffered
    );
    // The same bound seen from outside the library: items pulled and not yet handled.
    let gap = widest_gap.load(Ordering::SeqCst);
    assert!(gap <= max_in_flight + max_buffered, "gap {gap}");
    assert!(stats.max_in_flight >= 1 && stats.max_buffered >= 1);
}

fn a_panicking_handler_is_counted_and_the_run_goes_on(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let later: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stats = {
        let later = later.clone();
        within("a run with a panicking handler", move || {
            Pipeline::builder(&session)
                .source(0..40u64)
                .prompt(|id: &u64| match id {
                    13 => "[[sim:error=400]]".to_string(),
                    _ => format!("item {id}"),
                })
                .batch_size(5)
                .on_batch(move |batch| {
                    if batch.seq == 1 || batch.seq == 3 {
                        panic!("the store is down");
                    }
                    later.lock().unwrap().push(batch.seq);
                })
                .on_failed(|_| panic!("on_failed panics too"))
                .run()
                .unwrap()
        })
    };
    assert_settled(&stats);
    // 39 answers: seven full batches and one of four; item 13 failed.
    assert_eq!(
        (stats.batches, stats.batched_items, stats.failed),
        (8, 39, 1)
    );
    assert_eq!((stats.handler_panics, stats.handler_panic_items), (2, 10));
    assert_eq!(stats.on_failed_panics, 1);
    assert_eq!(*later.lock().unwrap(), [0, 2, 4, 5, 6, 7]);
}

fn panics_in_the_prompt_transform_or_key_fail_only_their_item_and_hand_it_back(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let failed: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let batched: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stats = {
        let (failed, batched) = (failed.clone(), batched.clone());
        within("a run with panicking closures", move || {
            Pipeline::builder(&session)
                .source(0..20u64)
                .prompt(|id: &u64| {
                    assert_ne!(*id, 3, "no prompt for 3");
                    format!("item {id}")
                })
                .transform(|id: &u64, answer: Response| {
                    assert_ne!(*id, 5, "no transform for 5");
                    (*id, answer.text)
                })
                .batch_key(|(id, _): &(u64, String)| {
                    assert_ne!(*id, 7, "no key for 7");
                    id % 2
                })
                .batch_size(4)
                .on_batch(move |batch| {
                    batched
                        .lock()
                        .unwrap()
                        .extend(batch.items.iter().map(|(id, _)| *id))
                })
                .on_failed(move |f: Failed<u64>| {
                    let Error::Panicked(message) = f.error else {
                        panic!("{:?}", f.error)
                    };
                    failed.lock().unwrap().push((f.item, message));
                })
                .run()
                .unwrap()
        })
    };
    assert_settled(&stats);
    let mut failed = failed.lock().unwrap().clone();
    failed.sort();
    let ids: Vec<u64> = failed.iter().map(|f| f.0).collect();
    assert_eq!(ids, [3, 5, 7]);
    assert!(failed[0].1.contains("no prompt for 3"), "{failed:?}");
    assert!(failed[1].1.contains("no transform for 5"), "{failed:?}");
    assert!(failed[2].1.contains("no key for 7"), "{failed:?}");
    assert_eq!(batched.lock().unwrap().len(), 17);
}

fn a_fatal_error_stops_an_endless_pipeline_by_itself(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let seen = Seen::default();
    let stats = {
        let seen = seen.clone();
        within("an endless pipeline that meets a 401", move || {
            Pipeline::builder(&session)
                .source(0u64..)
                .prompt(|id: &u64| match id {
                    10 => "[[sim:error=401]]".to_string(),
                    _ => format!("item {id}"),
                })
                .batch_size(4)
                .on_batch(seen.on_batch())
                .on_failed(seen.on_failed())
                .run()
                .unwrap()
        })
    };
    assert_settled(&stats);
    assert!(
        matches!(stats.fatal_error, Some(Error::Authentication { .. })),
        "{:?}",
        stats.fatal_error
    );
    seen.assert_each_once(stats.received);
    for (id, error, attempts) in seen.failed.lock().unwrap().iter() {
        let ok = match id {
            10 => matches!(error, Error::Authentication { .. }),
            _ => matches!(error, Error::Stopped(_)) && *attempts == 0,
        };
        assert!(ok, "item {id}: {error:?}");
    }
    assert_eq!(stats.stopped + 1, stats.failed);
}

fn a_panicking_source_ends_the_run_with_the_panic_as_its_error(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let source = (0u64..).inspect(|id| assert!(*id < 6, "the queue broke"));
    let stats = within("a run whose source panics", move || {
        Pipeline::builder(&session)
            .source(source)
            .prompt(|id: &u64| format!("item {id}"))
            .on_batch(|_| {})
            .run()
            .unwrap()
    });
    assert_settled(&stats);
    assert_eq!(stats.received, 6);
    match &stats.fatal_error {
        Some(Error::Panicked(message)) => assert!(message.contains("the queue broke")),
        other => panic!("{other:?}"),
    }
}

fn dropping_the_handle_stops_the_pipeline(b: &TestBackend) {
    /// A source that says when the pipeline lets go of it.
    struct Watched(std::ops::RangeFrom<u64>, crossbeam_channel::Sender<()>);
    impl Iterator for Watched {
        type Item = u64;
        fn next(&mut self) -> Option<u64> {
            self.0.next()
        }
    }
    impl Drop for Watched {
        fn drop(&mut self) {
            let _ = self.1.send(());
        }
    }
    let session = b.builder().concurrency(2).build().unwrap();
    let (dropped_tx, dropped) = crossbeam_channel::bounded(1);
    let handle = Pipeline::builder(&session)
        .source(Watched(0.., dropped_tx))
        .prompt(|id: &u64| format!("item {id}"))
        .on_batch(|_| {})
        .start()
        .unwrap();
    wait_until("some items", DEADLINE, || handle.stats().received > 3);
    drop(handle);
    dropped
        .recv_timeout(DEADLINE)
        .expect("the source is let go once the handle is dropped");
}

fn incomplete_or_invalid_settings_are_refused(b: &TestBackend) {
    let session = b.builder().concurrency(2).build().unwrap();
    let refused = |result: Result<PipelineStats, Error>, what: &str| match result {
        Err(Error::InvalidConfig(message)) => assert!(message.contains(what), "{message}"),
        other => panic!("{what}: {other:?}"),
    };
    refused(
        Pipeline::builder::<u64>(&session)
            .prompt(|id: &u64| id.to_string())
            .on_batch(|_| {})
            .run(),
        "source",
    );
    refused(
        Pipeline::builder(&session)
            .source(0..3u64)
            .on_batch(|_| {})
            .run(),
        "prompt",
    );
    refused(
        Pipeline::builder(&session)
            .source(0..3u64)
            .prompt(|id: &u64| id.to_string())
            .batch_size(0)
            .on_batch(|_| {})
            .run(),
        "batch_size",
    );
    refused(
        Pipeline::builder(&session)
            .source(0..3u64)
            .prompt(|id: &u64| id.to_string())
            .max_in_flight(0)
            .on_batch(|_| {})
            .run(),
        "max_in_flight",
    );
    assert!(b.prompts_seen().is_empty());
}

fn progress_reports_cover_a_pipeline_to_its_last_item(b: &TestBackend) {
    let reports: Arc<Mutex<Vec<claude_rayon::Progress>>> = Arc::default();
    let session = {
        let reports = Arc::clone(&reports);
        b.builder()
            .concurrency(2)
            .on_progress(move |p| reports.lock().unwrap().push(p.clone()))
            .build()
            .unwrap()
    };
    let stats = within("a run with progress reports", move || {
        Pipeline::builder(&session)
            .source(0..30u64)
            .prompt(|id: &u64| match id % 10 {
                4 => "[[sim:error=400]]".to_string(),
                _ => format!("item {id}"),
            })
            .batch_size(4)
            .on_batch(|_| {})
            .on_failed(|_| {})
            .run()
            .unwrap()
    });
    assert_settled(&stats);
    let reports = reports.lock().unwrap();
    let last = reports.last().expect("at least the final report");
    assert!(reports.iter().all(|p| p.run == "pipeline"));
    assert!(last.finished);
    assert_eq!((last.done, last.succeeded, last.failed), (30, 27, 3));
    assert_eq!(last.total, None);
}

fn a_bounded_stop_ends_hanging_calls_and_fails_their_items_as_stopped(b: &TestBackend) {
    let session = b
        .builder()
        .timeout(Duration::from_secs(600))
        .concurrency(2)
        .build()
        .unwrap();
    let seen = Seen::default();
    let handle = Pipeline::builder(&session)
        .source(0..6u64)
        .prompt(|id: &u64| format!("[[sim:hang]] item {id}"))
        .batch_size(2)
        .on_batch(seen.on_batch())
        .on_failed(seen.on_failed())
        .start()
        .unwrap();
    wait_until("two calls hang", DEADLINE, || b.prompts_seen().len() == 2);
    let pids = b.fake().map(Fake::pids).unwrap_or_default();
    let started = std::time::Instant::now();
    let stats = within("stop_within with every call hanging", move || {
        handle.stop_within(Duration::from_millis(300))
    });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        started.elapsed()
    );
    assert_settled(&stats);
    assert_eq!(
        (stats.received, stats.succeeded),
        (stats.failed, 0),
        "{stats:#?}"
    );
    assert_eq!(stats.stopped, stats.failed, "{stats:#?}");
    let failed = seen.failed.lock().unwrap().clone();
    let ended_in_flight: Vec<_> = failed.iter().filter(|f| f.2 == 1).collect();
    assert_eq!(ended_in_flight.len(), 2, "{failed:?}");
    assert!(ended_in_flight
        .iter()
        .all(|f| matches!(f.1, Error::Cancelled)));
    // On the CLI, the hanging processes are ended too.
    for pid in pids {
        wait_until("a hanging process is gone", DEADLINE, || {
            !support::pid_alive(pid)
        });
    }
}

on_both_backends!(
    every_item_ends_exactly_once_with_errors_and_crashes_mixed_in,
    stopping_at_many_points_ends_every_received_item_exactly_once,
    stop_does_not_wait_for_a_source_blocked_in_next_and_its_late_item_still_ends_once,
    a_full_batch_goes_at_once_and_a_partial_one_when_its_timeout_expires,
    the_end_of_the_source_flushes_the_partial_batches_without_waiting_for_the_timeout,
    batches_of_one_key_come_in_formation_order_one_at_a_time,
    memory_stays_bounded_over_a_long_source,
    a_panicking_handler_is_counted_and_the_run_goes_on,
    panics_in_the_prompt_transform_or_key_fail_only_their_item_and_hand_it_back,
    a_fatal_error_stops_an_endless_pipeline_by_itself,
    a_panicking_source_ends_the_run_with_the_panic_as_its_error,
    dropping_the_handle_stops_the_pipeline,
    incomplete_or_invalid_settings_are_refused,
    progress_reports_cover_a_pipeline_to_its_last_item,
    a_bounded_stop_ends_hanging_calls_and_fails_their_items_as_stopped,
);

/// The child of `failures_without_a_handler_are_told_on_stderr`: this test binary re-run with
/// its stderr on a pipe, running a pipeline without `on_failed` and one with it.
fn run_child_with_unhandled_failures() -> ! {
    let fake = Fake::new();
    let session = fake.builder().concurrency(2).build().unwrap();
    let tickets: Vec<String> = (0..12)
        .map(|i| {
            let fault = if i % 4 == 1 { "[[sim:error=400]] " } else { "" };
            format!(
                "{fault}Ticket {i}: since the update the export drops every row after the \
                 first thousand, and the CSV ends without a newline; finance needs it today."
            )
        })
        .collect();
    let run = |with_handler: bool| {
        let builder = Pipeline::builder(&session)
            .source(tickets.clone().into_iter())
            .prompt(|t: &String| format!("Urgency of this ticket, one word: {t}"))
            .batch_size(4);
        if with_handler {
            builder
                .on_failed(|failed| eprintln!("HANDLED {}", failed.error))
                .on_batch(|_| {})
                .run()
        } else {
            builder.on_batch(|_| {}).run()
        }
        .unwrap()
    };
    let stats = run(false);
    assert_eq!((stats.succeeded, stats.failed), (9, 3));
    eprintln!("FIRST RUN DONE");
    let stats = run(true);
    assert_eq!((stats.succeeded, stats.failed), (9, 3));
    eprintln!("CHILD DONE");
    std::process::exit(0);
}

#[test]
fn failures_without_a_handler_are_told_on_stderr() {
    if std::env::var("CLAUDE_RAYON_TEST_UNHANDLED_CHILD").is_ok() {
        run_child_with_unhandled_failures();
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &support::this_test(
                module_path!(),
                "failures_without_a_handler_are_told_on_stderr",
            ),
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CLAUDE_RAYON_TEST_UNHANDLED_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    support::assert_ran_one_test(&String::from_utf8_lossy(&output.stdout));
    let (first_run, second_run) = stderr
        .split_once("FIRST RUN DONE")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(second_run.contains("CHILD DONE"), "{stderr}");
    // The first failure at once, with its error and what to do; then one line with the count.
    let told: Vec<&str> = first_run
        .lines()
        .filter(|l| l.contains("has no on_failed handler"))
        .collect();
    assert_eq!(told.len(), 1, "the first failure, once:\n{stderr}");
    assert!(
        told[0].contains("400") && told[0].contains("PipelineBuilder::on_failed"),
        "{stderr}"
    );
    let summary: Vec<&str> = first_run
        .lines()
        .filter(|l| l.contains("the pipeline ended with"))
        .collect();
    assert_eq!(summary.len(), 1, "one summary:\n{stderr}");
    assert!(summary[0].contains("3 failed items"), "{stderr}");
    // With a handler, the handler gets them and the library says nothing.
    assert_eq!(second_run.matches("HANDLED").count(), 3, "{stderr}");
    assert!(
        !second_run.contains("claude-rayon:"),
        "nothing of its own with a handler:\n{stderr}"
    );
}
