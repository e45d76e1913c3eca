//! How an adaptor's items reach the session's threads.
//!
//! rayon cannot move an indexed producer into another pool's `install`, so an adaptor, when
//! driven, first gathers its base's items (on whatever thread drives it), then hands them to
//! `concurrency` workers on the session's own pool that pull from one shared queue: a slow
//! item never holds back a queue of others behind it, and no thread outside the session's
//! pool ever waits on a CLI process. Each item's life is the engine's.

use parking_lot::Mutex;

use crate::engine::Run;

/// Run `work` on every item on the run's session's threads; results come back in input
/// order. The run's last progress report follows the last item.
pub(crate) fn dispatch<T, R, W>(run: &Run, items: Vec<T>, work: W) -> Vec<R>
where
    T: Send,
    R: Send,
    W: Fn(T) -> R + Sync,
{
    let total = items.len();
    if total == 0 {
        run.finish();
        return Vec::new();
    }
    let (queue_tx, queue_rx) = crossbeam_channel::bounded(total);
    for pair in items.into_iter().enumerate() {
        queue_tx
            .send(pair)
            .expect("the queue has room for every item");
    }
    drop(queue_tx);
    let slots: Vec<Mutex<Option<R>>> = (0..total).map(|_| Mutex::new(None)).collect();
    let session = run.session();
    let workers = session.concurrency().min(total);
    session.threads().scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|_| {
                while let Ok((index, item)) = queue_rx.try_recv() {
                    *slots[index].lock() = Some(work(item));
                }
            });
        }
    });
    run.finish();
    slots
        .into_iter()
        .map(|slot| slot.into_inner().expect("every item was processed"))
        .collect()
}
