//! Shared bench helpers: sessions on the fake or the real CLI, medians, CPU time.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use claude_rayon::{Session, SessionBuilder};

/// The fake CLI built from this crate.
pub fn fake_cli() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_claude-rayon-sim"))
}

/// A builder on the fake CLI.
pub fn fake_builder() -> SessionBuilder {
    Session::builder().cli_path(fake_cli())
}

/// A builder for the real CLI with `env` (the mock API's) set and `remove` removed, on the
/// model the mock answers for and with no retries by the CLI.
pub fn real_builder(
    cli: &std::path::Path,
    env: &[(String, String)],
    remove: &[&str],
) -> SessionBuilder {
    let mut builder = Session::builder()
        .cli_path(cli)
        .model("claude-sonnet-4-5")
        .cli_max_retries(Some(0));
    for key in remove {
        builder = builder.env_remove(*key);
    }
    for (key, value) in env {
        builder = builder.env(key.clone(), value.clone());
    }
    builder
}

/// The real CLI from CLAUDE_CODE_BIN, if set.
pub fn real_cli() -> Option<PathBuf> {
    std::env::var_os("CLAUDE_CODE_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

pub fn percentile(mut values: Vec<Duration>, q: f64) -> Duration {
    values.sort();
    let index = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    values[index]
}

/// CPU time (user + system) this process has used, not counting children.
pub fn own_cpu_time() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
