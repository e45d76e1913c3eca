//! Real tier: a batch leaves no transcript under `~/.claude/projects` by default, and
//! `persist_sessions(true)` keeps them (so the first test can fail). Skipped with a notice when
//! no CLI is installed.

use crate::support;

use std::time::Duration;

use support::{wait_until, Real};

const BATCH: usize = 4;

fn run_batch(real: &Real, persist: bool) {
    let session = real
        .builder()
        .concurrency(1)
        .cli(|c| c.persist_sessions(persist))
        .build()
        .unwrap();
    for i in 0..BATCH {
        session.query(format!("item {i}")).unwrap();
    }
    // Closing ends the processes, so nothing can be written after this point.
    let stats = session.close().unwrap();
    assert_eq!(stats.succeeded, BATCH as u64);
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn a_batch_leaves_no_transcripts_by_default() {
    let Some(real) = Real::start("a_batch_leaves_no_transcripts_by_default") else {
        return;
    };
    run_batch(&real, false);
    assert_eq!(real.api.request_count(), BATCH);
    let files = real.transcripts();
    assert!(files.is_empty(), "transcripts written: {files:?}");
}

#[test]
#[cfg_attr(claude_rayon_no_cli, ignore = "needs CLAUDE_CODE_BIN (README, Tests)")]
fn persist_sessions_keeps_transcripts() {
    let Some(real) = Real::start("persist_sessions_keeps_transcripts") else {
        return;
    };
    run_batch(&real, true);
    wait_until("transcripts appear", Duration::from_secs(5), || {
        !real.transcripts().is_empty()
    });
    let files = real.transcripts();
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "jsonl")),
        "{files:?}"
    );
}
