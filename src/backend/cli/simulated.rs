//! A session on the built-in simulator ([`SessionBuilder::simulated`]): the program runs
//! itself again as the simulator, which works only when its `main` calls
//! `simulator::serve_if_requested()` first. When it does not, the copy runs the program
//! proper, which built a simulated session and started another copy, without end (6,707
//! processes after 15 s, then a misleading "CLI version" error). Two checks stop that:
//!
//! - The copy never builds a session: reaching `build()` with the simulator's variable in its
//!   own environment means `serve_if_requested` was not called.
//! - `build()` starts the program once, before any session process, and asks for a
//!   handshake only the simulator answers; anything else is
//!   [`CliError::SimulatorNotServed`], as soon as the copy ends (at the copy's own `build()`,
//!   at the latest after [`HANDSHAKE_TIMEOUT`]).
//!
//! [`SessionBuilder::simulated`]: crate::SessionBuilder::simulated

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::shorten;
use crate::simulator::{handshake_answer, HANDSHAKE_ENV_VAR, SIMULATOR_ENV_VAR};
use crate::{CliError, Error};

/// How long the program may take to answer the handshake. The simulator answers at once
/// (`serve_if_requested` is the first line of `main`); a program that does not serve usually
/// ends at its own `build()` well before this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a session with this environment runs the program itself as the simulator.
pub(crate) fn is_simulated(env: &[(String, String)]) -> bool {
    env.iter().any(|(k, v)| k == SIMULATOR_ENV_VAR && v == "1")
}

/// Refuse to build a session in a copy of the program started as the simulator: it should
/// be serving, and a session here would start yet another copy.
pub(crate) fn refuse_in_the_simulator() -> Result<(), Error> {
    if std::env::var_os(SIMULATOR_ENV_VAR).is_some_and(|v| v == "1") {
        return Err(Error::Cli(CliError::SimulatorNotServed {
            program: std::env::current_exe().unwrap_or_default(),
            detail: format!(
                "this copy was started as the simulator ({SIMULATOR_ENV_VAR}=1) and reached \
                 SessionBuilder::build() instead of serving"
            ),
        }));
    }
    Ok(())
}

/// Start `program` once as the simulator and check that it serves. A program that answered
/// is not asked again by this process.
pub(crate) fn handshake(
    program: &Path,
    env: &[(String, String)],
    env_remove: &[String],
) -> Result<(), Error> {
    static SERVING: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    let serving = SERVING.get_or_init(Default::default);
    if serving.lock().contains(program) {
        return Ok(());
    }
    let refuse = |detail: String| {
        Error::Cli(CliError::SimulatorNotServed {
            program: program.to_path_buf(),
            detail,
        })
    };
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let mut cmd = Command::new(program);
    cmd.arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for key in env_remove {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .env(SIMULATOR_ENV_VAR, "1")
        .env(HANDSHAKE_ENV_VAR, &nonce);
    // Its own group, so that whatever a copy that does not serve started ends with it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .map_err(|e| refuse(format!("it could not be started: {e}")))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    // Read on a thread so that a copy that never ends cannot hold build() past the limit.
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.by_ref().take(64 * 1024).read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let output = rx.recv_deadline(Instant::now() + HANDSHAKE_TIMEOUT);
    // SAFETY: killpg only sends a signal, to the group of a child not yet waited for.
    unsafe {
        libc::killpg(child.id() as libc::pid_t, libc::SIGKILL);
    }
    let status = child.wait().ok();
    let Ok(output) = output else {
        return Err(refuse(format!(
            "it gave no answer in {HANDSHAKE_TIMEOUT:?}"
        )));
    };
    if output
        .lines()
        .any(|line| line.trim() == handshake_answer(&nonce))
    {
        serving.lock().insert(program.to_path_buf());
        return Ok(());
    }
    let ended = match status.and_then(|s| s.code()) {
        Some(code) => format!("it exited with code {code}"),
        None => "it ended".to_string(),
    };
    let said = output.trim();
    Err(refuse(if said.is_empty() {
        format!("{ended} without a word on stdout")
    } else {
        format!("{ended} after printing {:?}", shorten(said, 100))
    }))
}
