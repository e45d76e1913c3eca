//! The fast tier: every test that runs on the fake CLI (`claude-rayon-sim`) or the mock
//! Messages API and can share a process with the others, one module per topic, linked as one
//! binary because linking one test binary per file was most of `cargo test`'s build time. The
//! adaptor and engine tests run on both backends (`on_both_backends!`, tests/support/backends.rs).
//!
//! Tests that change what the whole process sees (environment variables, the working folder)
//! or need a process of their own stay separate binaries: tests/cli_locate.rs,
//! tests/simulated_without_serve.rs, tests/architecture.rs, tests/examples.rs.
//! Run one module with `cargo test --all-features --test fast journal::`.

#[path = "../support/mod.rs"]
mod support;

mod answer_integrity;
mod api_backend;
mod batches;
mod budget;
mod cache_gate;
mod claude_filter;
mod claude_group_by;
mod claude_map;
mod docs;
mod estimate;
mod hostile_settings;
mod journal;
mod pipeline;
mod private_folders;
mod progress;
mod properties;
mod retries;
mod sealing;
mod session_cancel;
mod session_context;
mod session_failures;
mod session_flags;
mod session_lifecycle;
mod start_failures;
mod stats;
mod stream_map;
mod stream_windows;
mod test_backends;
mod throttle_shared;
mod typed_answers;
mod usage_windows;
