//! Push thousands of items through Claude from synchronous Rust, in parallel, safely and
//! cheaply.
//!
//! `claude-rayon` drives the Claude Code CLI (`claude`) as a pool of warm processes with
//! fresh context per item, and adds extension traits to rayon's parallel iterators:
//!
//! ```no_run
//! use claude_rayon::prelude::*;
//! use claude_rayon::Session;
//! use rayon::prelude::*;
//!
//! let session = Session::builder().model("sonnet").concurrency(8).requests_per_minute(50).build()?;
//! let files = vec!["src/lib.rs".to_string(), "src/main.rs".to_string()];
//! let reviews: Vec<_> = files
//!     .par_iter()
//!     .claude_map(&session, |f| format!("Find bugs in:\n{}", std::fs::read_to_string(f).unwrap_or_default()))
//!     .collect();
//! # Ok::<(), claude_rayon::Error>(())
//! ```
//!
//! The pieces:
//! - [`Session`]: the processes, their threads, and one item's life (budget, [`Throttle`],
//!   process, retries with [`RetryPolicy`]); [`Session::query`] for one prompt,
//!   [`Conversation`] for several turns with context.
//! - [`prelude`]: the extension traits (`claude_map` and friends).
//! - [`stream`]: the same on plain iterators (stdin lines, a log being read), lazily and in
//!   order: `claude_stream_map` and `claude_windows`.
//! - [`pipeline`]: [`Pipeline`](pipeline::Pipeline), for sources that never end (a queue, a
//!   channel) and results that go to a store in batches, with bounded memory and a graceful
//!   stop.
//! - `simulator` (feature `simulator`): a stand-in CLI for trying things without an API key.
//!
//! Guides (in the repository's `docs/` folder): getting started, a cookbook of recipes, a
//! tuning guide for concurrency and rate limits, and what the library saves against code
//! written by hand. See `ARCHITECTURE.md` for how the pieces fit together.

#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

// Process groups, signals and the parent-death signal have no Windows counterpart here.
#[cfg(not(unix))]
compile_error!(
    "claude-rayon supports Unix (Linux, macOS) only: it relies on process groups and signals \
     to make sure no claude process outlives your program"
);

mod admission;
mod backend;
mod budget;
mod cancel;
mod clock;
mod conversation;
mod engine;
mod error;
mod estimate;
mod failed;
pub mod iter;
mod journal;
pub mod pipeline;
pub mod prelude;
mod progress;
mod response;
mod retry;
#[cfg(feature = "redis")]
pub mod scale;
#[cfg(feature = "schema")]
mod schema;
mod session;
#[cfg(feature = "simulator")]
pub mod simulator;
mod stats;
pub mod stream;
mod throttle;

pub use budget::SharedBudget;
pub use cancel::Cancel;
pub use conversation::Conversation;
pub use error::{CliError, Error, UsageWindow};
pub use estimate::{Estimate, OutputBasis};
pub use failed::{Failed, MapResult, Outcome};
pub use journal::Journal;
pub use progress::{BatchProgress, Progress};
pub use response::{Response, Usage};
pub use retry::RetryPolicy;
pub use session::{
    ApiOptions, Backend, BatchCancel, CliOptions, Effort, PermissionMode, Session, SessionBuilder,
    CLI_ENV_VAR,
};
pub use stats::Stats;
pub use throttle::Throttle;

// Crates whose types appear in this crate's signatures, so that users name the same versions.
/// The channel crate of [`PipelineBuilder::source_channel`](pipeline::PipelineBuilder::source_channel).
pub use crossbeam_channel;
/// The progress-bar crate of
/// [`SessionBuilder::progress_draw_target`](SessionBuilder::progress_draw_target).
#[cfg(feature = "progress")]
pub use indicatif;
/// The schema crate of [`SessionBuilder::json_schema_of`]: derive its `JsonSchema` for the
/// types answers are parsed into.
#[cfg(feature = "schema")]
pub use schemars;
/// The JSON crate of [`Response::structured`] and [`SessionBuilder::json_schema`].
pub use serde_json;

// Every Rust snippet of the README and the guides is compiled (and, where it can run
// without a CLI, run) as a doc-test, so none of them rots.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeSnippets;

#[cfg(doctest)]
#[doc = include_str!("../docs/getting-started.md")]
struct GettingStartedSnippets;

#[cfg(doctest)]
#[doc = include_str!("../docs/tuning.md")]
struct TuningSnippets;

#[cfg(doctest)]
#[doc = include_str!("../docs/why.md")]
struct WhySnippets;

#[cfg(doctest)]
#[doc = include_str!("../docs/scaling-out.md")]
struct ScalingOutSnippets;

// docs/cookbook.md is compiled by the `cookbook` package, which has SQLite for one recipe.
