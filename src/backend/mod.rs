//! What answers a turn. Below the session and the engine: today the one backend is the
//! Claude Code CLI (`cli`), a pool of warm processes.

pub(crate) mod cli;
