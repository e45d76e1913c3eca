//! Real tier: a short `Pipeline` through the real CLI and the mock Messages API: every item's
//! answer reaches a batch beside its own item, batches are cut by size and by the end of the
//! source, and each item is one API call.
//! Skipped with a notice when no CLI is installed (CLAUDE_RAYON_REQUIRE_REAL_CLI=1 fails it).

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use claude_rayon::pipeline::Pipeline;
use claude_rayon::pipeline::{Batch, Flush};
use support::mock_api::Reply;
use support::Real;

/// A batch of (ticket id, answer) as the handler saw it.
type Stored = Batch<(u32, String)>;

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_short_pipeline_through_the_real_cli_batches_every_answer_with_its_item() {
    let Some(real) =
        Real::start("a_short_pipeline_through_the_real_cli_batches_every_answer_with_its_item")
    else {
        return;
    };
    real.api.set_reply(|prompt| {
        let n = prompt.strip_prefix("ticket ").unwrap_or("?");
        Reply::text(format!("urgency of {n}: low"))
    });
    let session = real.builder().concurrency(3).build().unwrap();
    let (tx, rx) = crossbeam_channel::bounded(4);
    std::thread::spawn(move || {
        for id in 0..12u32 {
            tx.send(id).unwrap();
        }
    });
    let batches: Arc<Mutex<Vec<Stored>>> = Arc::default();
    let stats = {
        let batches = Arc::clone(&batches);
        Pipeline::builder(&session)
            .source_channel(rx)
            .prompt(|id: &u32| format!("ticket {id}"))
            .transform(|id: &u32, answer| (*id, answer.text))
            .batch_size(5)
            // Long enough that only size and the end of the source cut batches here.
            .batch_timeout(Duration::from_secs(600))
            .on_batch(move |batch| batches.lock().unwrap().push(batch))
            .on_failed(|failed| panic!("item {} failed: {}", failed.item, failed.error))
            .run()
            .unwrap()
    };
    assert_eq!(
        (stats.received, stats.succeeded, stats.failed),
        (12, 12, 0),
        "{stats:#?}"
    );
    assert_eq!((stats.batches, stats.batched_items), (3, 12));
    assert_eq!(stats.on_failed_panics, 0);
    let batches = batches.lock().unwrap();
    let shape: Vec<(u64, usize, Flush)> =
        batches.iter().map(|b| (b.seq, b.len(), b.flush)).collect();
    assert_eq!(
        shape,
        [
            (0, 5, Flush::Full),
            (1, 5, Flush::Full),
            (2, 2, Flush::Drain)
        ]
    );
    let mut ids = Vec::new();
    for (id, text) in batches.iter().flat_map(|b| b.items.iter()) {
        assert_eq!(text, &format!("urgency of {id}: low"));
        ids.push(*id);
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..12).collect::<Vec<_>>());
    assert_eq!(real.api.request_count(), 12, "one API call per item");
    let session_stats = session.close().unwrap();
    assert_eq!((session_stats.succeeded, session_stats.failed), (12, 0));
}
