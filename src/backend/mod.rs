//! What answers a turn. Below the session and the engine: today the one backend is the
//! Claude Code CLI (`cli`), a pool of warm processes. `spec` is what every backend is told
//! about answers.

pub(crate) mod cli;
pub(crate) mod spec;
