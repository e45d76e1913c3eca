//! The Claude Code CLI backend: the process layer, which knows nothing above it.
//!
//! `locate` (finding the CLI), `protocol` (the stream-json lines), `process` (one persistent
//! CLI process), `pool` (up to `concurrency` of them), `seal` (what seals a process),
//! `secrets` (keeping keys out of errors and logs), `spawner` (the one thread that starts
//! processes, and the watchdog).

pub(crate) mod locate;
pub(crate) mod pool;
pub(crate) mod process;
pub(crate) mod protocol;
pub(crate) mod seal;
pub(crate) mod secrets;
pub(crate) mod spawner;
