//! A session's own cancel (`SessionBuilder::with_cancel`, what `Cancel::on_ctrl_c` is given
//! to): every run on the session obeys it without being given it, an endless pipeline
//! included.

use crate::support;

use std::time::Duration;

use claude_rayon::pipeline::Pipeline;
use claude_rayon::prelude::*;
use claude_rayon::{Cancel, Error};
use rayon::prelude::*;
use support::Fake;

#[test]
fn an_adaptor_a_stream_and_a_query_stop_starting_items_once_the_session_is_cancelled() {
    let fake = Fake::new();
    let cancel = Cancel::new();
    let session = fake
        .builder()
        .with_cancel(&cancel)
        .concurrency(1)
        .build()
        .unwrap();
    let tickets: Vec<String> = (0..8).map(|i| support::ticket(i, 300)).collect();
    // The third item's prompt cancels: the two before are answered, it and the rest not
    // (its prompt is made before it is admitted, and admission sees the cancel).
    let results: Vec<_> = tickets
        .par_iter()
        .enumerate()
        .claude_map(&session, |(i, t)| {
            if *i == 2 {
                cancel.cancel();
            }
            format!("Summarise this ticket:\n{t}")
        })
        .collect();
    let answered = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(answered, 2, "{results:?}");
    for failed in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(failed.error, Error::Cancelled) && failed.attempts == 0);
    }
    let streamed = tickets
        .clone()
        .into_iter()
        .claude_stream_map(&session, |t| format!("Summarise:\n{t}"))
        .filter(|r| !matches!(r, Err(f) if matches!(f.error, Error::Cancelled)))
        .count();
    assert_eq!(streamed, 0, "every streamed item was cancelled");
    assert!(matches!(
        session.query(format!("Summarise:\n{}", tickets[0])),
        Err(Error::Cancelled)
    ));
    assert_eq!(fake.prompts().len(), 2, "nothing was sent after the cancel");
    // A reset lets the session go on.
    cancel.reset();
    session
        .query(format!("Summarise:\n{}", tickets[1]))
        .unwrap();
}

#[test]
fn an_endless_pipeline_ends_when_the_session_is_cancelled() {
    let fake = Fake::new();
    let cancel = Cancel::new();
    let session = fake
        .builder()
        .with_cancel(&cancel)
        .concurrency(2)
        .build()
        .unwrap();
    let for_batches = cancel.clone();
    let running = Pipeline::builder(&session)
        .source(0u64..)
        .prompt(|n: &u64| format!("Summarise:\n{}", support::ticket(*n as usize, 300)))
        .batch_size(4)
        .on_batch(move |_batch| for_batches.cancel())
        .start()
        .unwrap();
    // A hang fails the test (without the session's cancel the source never stops pulling).
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(running.join());
    });
    let stats = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("the pipeline ended after the cancel");
    assert!(stats.batches >= 1 && stats.is_settled(), "{stats:?}");
    assert!(stats.received < 1_000, "it stopped pulling: {stats:?}");
    assert_eq!(stats.received, stats.succeeded + stats.failed);
}
