//! The real tier: every test that drives the real `claude` CLI against the mock Messages API
//! (crates/mock-api) and can share a process with the others, one module per topic, linked as
//! one binary because linking one test binary per file was most of `cargo test`'s build time.
//!
//! The tests run when `CLAUDE_CODE_BIN` points at a CLI (build.rs; README, "Tests"), else they
//! show as ignored. tests/real_git.rs sets `TMPDIR` for its whole process, so it stays a
//! binary of its own. Run the tier with `cargo test --all-features --test real --test real_git`,
//! one module with `--test real sealing::`.

#[path = "../support/mod.rs"]
mod support;

mod accounting;
mod answer_integrity;
mod api_errors;
mod backoff;
mod cache;
mod claude_map;
mod cli_smoke;
mod conversation;
mod descendants;
mod filter_group_by;
mod journal;
mod pipeline;
mod query;
mod recycling;
mod sealing;
mod sigpipe;
mod start_failures;
mod stream;
mod structured;
mod throttle;
mod timeout;
mod transcripts;
mod unreachable;
