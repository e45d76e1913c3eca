//! The Claude Code CLI backend: the process layer, which knows nothing above it.
//!
//! `locate` (finding the CLI), `protocol` (the stream-json lines), `process` (one persistent
//! CLI process), `pool` (up to `concurrency` of them), `conn` (a leased process as a
//! connection), `seal` (what seals a process), `secrets` (keeping keys out of errors and
//! logs), `spawner` (the one thread that starts processes, and the watchdog). `options`
//! holds the settings only the CLI understands; `launch` turns them into a command line,
//! `fingerprint` into the journal's key, and `simulated` checks a session on the built-in
//! simulator. [`start`] makes a session's backend of them all.

mod conn;
mod fingerprint;
mod launch;
pub(crate) mod locate;
mod options;
pub(crate) mod pool;
pub(crate) mod process;
pub(crate) mod protocol;
pub(crate) mod seal;
pub(crate) mod secrets;
#[cfg(feature = "simulator")]
mod simulated;
pub(crate) mod spawner;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{Backend, BackendStats, Checkout, Conn, Started};
use crate::backend::spec::AnswerSpec;
use crate::Error;
pub use options::{CliOptions, PermissionMode};
use pool::Pool;
use process::Launch;
use seal::PrivateDir;

/// Request overhead on top of the prompt with the default flags (system prompt off, no
/// tools): about 1.2 KB, so roughly 300 tokens.
const REQUEST_OVERHEAD_TOKENS: u64 = 300;

/// Peak memory of one CLI process over a long run, before it is recycled (measured: ~300 MB
/// while it starts, growing to 467-475 MiB by 2,000 items; `benches/process_memory.rs`).
pub(crate) const CLI_PEAK_BYTES: u64 = 480 * 1024 * 1024;

/// Warn when `concurrency` processes at their peak would not fit in the memory available.
fn warn_if_memory_is_short(concurrency: usize) {
    let needed = CLI_PEAK_BYTES.saturating_mul(concurrency as u64);
    if let Some(available) = memory_available_bytes() {
        if needed > available {
            log::warn!(
                "concurrency {concurrency} needs about {} MB for its claude processes (~480 MB \
                 each over a long run), more than the {} MB available: expect swapping or the OOM \
                 killer; lower concurrency",
                needed / (1024 * 1024),
                available / (1024 * 1024)
            );
        }
    }
}

/// `MemAvailable` from `/proc/meminfo` (Linux); `None` elsewhere.
fn memory_available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Find and check the CLI for session `session_id`, and make its pool: `spec` is what every
/// answer is asked with, `concurrency` the most processes, `timeout` an item's longest time.
/// `options` were validated.
pub(crate) fn start(
    session_id: u64,
    spec: &AnswerSpec,
    concurrency: usize,
    timeout: Duration,
    options: &CliOptions,
) -> Result<Started, Error> {
    // A copy of this program started as the simulator must serve, never start another.
    #[cfg(feature = "simulator")]
    simulated::refuse_in_the_simulator()?;
    let program = locate::find_cli(options.cli_path.as_deref())?;
    #[cfg(feature = "simulator")]
    let is_simulated = simulated::is_simulated(&options.env);
    #[cfg(not(feature = "simulator"))]
    let is_simulated = false;
    if is_simulated {
        // The program itself as the simulator: check that it serves, once, instead of
        // asking its version (which a program that does not serve answers by running).
        #[cfg(feature = "simulator")]
        simulated::handshake(&program, &options.cli_env(), &options.env_remove)?;
    } else {
        seal::check_cli_version(&program, &options.cli_env(), &options.env_remove)?;
    }
    let answer_settings = options.answer_settings(spec);
    let private_dir = match &options.cwd {
        Some(_) => None,
        None => Some(seal::PrivateDir::create(session_id)?),
    };
    let launch = Launch {
        program: program.clone(),
        args: options.cli_args(spec),
        env: {
            let mut env = options.cli_env();
            // Git looks for a repository no higher than the private folder: a temp folder
            // inside a work tree does not make the CLI's git calls run in that tree.
            if let Some(parent) = private_dir.as_ref().and_then(|d| d.path().parent()) {
                env.push((
                    "GIT_CEILING_DIRECTORIES".to_string(),
                    parent.to_string_lossy().into_owned(),
                ));
            }
            env
        },
        env_remove: options.env_remove.clone(),
        cwd: options
            .cwd
            .clone()
            .or_else(|| private_dir.as_ref().map(|d| d.path().to_path_buf())),
        secrets: Arc::new(options.secrets()),
        interpret_item_text: options.interpret_item_text,
        clear_timeout: timeout.min(Duration::from_secs(30)),
        max_line_bytes: options.max_line_bytes,
        start_failures: Default::default(),
    };
    let pool = Pool::new(
        launch,
        concurrency,
        options.max_starting_processes,
        options.fresh_process_per_item,
        pool::Recycle {
            after_prompts: options.recycle_after_items,
            above_bytes: options.recycle_above_memory,
        },
    );
    warn_if_memory_is_short(concurrency);
    Ok(Started {
        program: Some(program),
        backend: Box::new(CliBackend {
            pool: Arc::new(pool),
            private_dir: Mutex::new(private_dir),
        }),
        answer_settings,
        model: spec.model.clone(),
    })
}

/// A session's CLI processes, and the private folder they run in.
pub(crate) struct CliBackend {
    pool: Arc<Pool>,
    /// The processes' private working folder when no `cwd` was given; removed at release.
    private_dir: Mutex<Option<PrivateDir>>,
}

impl Backend for CliBackend {
    fn checkout(&self, should_stop: &dyn Fn() -> bool) -> Result<Checkout, Error> {
        Ok(match self.pool.checkout(should_stop)? {
            Some(conn) => Checkout::Ready(Box::new(conn) as Box<dyn Conn>),
            None => Checkout::Stopped,
        })
    }

    fn wake(&self) {
        self.pool.wake();
    }

    fn request_overhead_tokens(&self) -> u64 {
        REQUEST_OVERHEAD_TOKENS
    }

    fn close(&self, settle: Duration) {
        self.pool.close(settle);
    }

    fn release(&self) {
        drop(self.private_dir.lock().take());
    }

    fn stats(&self) -> BackendStats {
        BackendStats {
            processes_started: self.pool.started(),
            processes_live: self.pool.live() as u64,
            processes_recycled: self.pool.recycled(),
        }
    }
}

impl fmt::Debug for CliBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CliBackend")
            .field("live_processes", &self.pool.live())
            .finish()
    }
}
