//! Starting CLI processes, and making sure nothing they start outlives this program.
//!
//! Children are spawned from one long-lived thread: Linux delivers the parent-death signal
//! when the *thread* that forked a child exits, so spawning from short-lived worker threads
//! would kill healthy children. That signal reaches only the CLI itself, not what the CLI
//! starts (MCP servers, hook commands, tools' subprocesses), so the same thread also keeps a
//! watchdog: a small `/bin/sh` process in a process group of its own that reads a pipe from
//! this program. It learns each CLI's process group as it starts and ends; when the pipe
//! closes (this program ended, however it ended, `kill -9` included) it kills those groups,
//! then every process whose environment carries this program's marker, which catches
//! descendants that left their group.
//!
//! Writing into a pipe whose reader died raises SIGPIPE, which kills a program that restored
//! its default action. Every thread that writes to a child's pipe blocks SIGPIPE first; the
//! write then fails with `EPIPE` instead, and the signal stays pending on that thread alone.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::thread;

use crossbeam_channel::Sender;
use parking_lot::Mutex;

/// The variable that marks every CLI process (and what it starts) as this program's.
pub(crate) const OWNER_ENV_VAR: &str = "CLAUDE_RAYON_OWNER";

/// Runs until its stdin closes, then kills what this program started (see the module docs).
/// `$1` is the owner marker.
const WATCHDOG_SCRIPT: &str = r#"
trap '' INT TERM HUP QUIT TSTP TTIN TTOU PIPE
groups=' '
while read -r op g; do
  case $op in
    +) groups="$groups$g " ;;
    -) case $groups in *" $g "*) groups="${groups%% $g *} ${groups#* $g }" ;; esac ;;
  esac
done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
n=0
while [ "$n" -lt 5 ]; do
  pids=$(grep -lzx -- "CLAUDE_RAYON_OWNER=$1" /proc/[0-9]*/environ 2>/dev/null | sed -n 's#^/proc/\([0-9]*\)/environ$#\1#p')
  [ -n "$pids" ] || break
  kill -s KILL $pids 2>/dev/null
  n=$((n + 1))
done
"#;

enum Request {
    Spawn(Box<Command>, Sender<std::io::Result<Child>>),
    /// A process group that no longer needs watching (killed and about to be reaped).
    Forget(u32),
}

struct Spawner {
    requests: Mutex<Sender<Request>>,
    owner: String,
}

fn spawner() -> &'static Spawner {
    static SPAWNER: OnceLock<Spawner> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let owner = owner_marker();
        let (tx, rx) = crossbeam_channel::unbounded::<Request>();
        let marker = owner.clone();
        thread::Builder::new()
            .name("claude-rayon-spawner".into())
            .spawn(move || {
                block_sigpipe();
                let mut watchdog = start_watchdog(&marker);
                for request in rx {
                    match request {
                        Request::Spawn(mut cmd, reply) => {
                            let child = cmd.spawn();
                            if let (Ok(child), Some(pipe)) = (&child, watchdog.as_mut()) {
                                tell(pipe, '+', child.id());
                            }
                            let _ = reply.send(child);
                        }
                        Request::Forget(pgid) => {
                            if let Some(pipe) = watchdog.as_mut() {
                                tell(pipe, '-', pgid);
                            }
                        }
                    }
                    if watchdog.as_ref().is_some_and(|w| w.failed) {
                        log::warn!("the claude-rayon watchdog ended; processes started by the CLI may outlive this program if it is killed");
                        watchdog = None;
                    }
                }
            })
            .expect("cannot start the claude-rayon spawner thread");
        Spawner {
            requests: Mutex::new(tx),
            owner,
        }
    })
}

/// The marker value CLI processes carry in [`OWNER_ENV_VAR`].
pub(crate) fn owner_marker_value() -> &'static str {
    &spawner().owner
}

/// Spawn on the one spawner thread that lives as long as the program, and watch the child's
/// process group (the child must lead a group of its own).
pub(crate) fn spawn(cmd: Command) -> std::io::Result<Child> {
    let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
    spawner()
        .requests
        .lock()
        .send(Request::Spawn(Box::new(cmd), reply_tx))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// Stop watching a process group: its leader was killed and is about to be reaped, after
/// which its id may be given to someone else.
pub(crate) fn forget(pgid: u32) {
    let _ = spawner().requests.lock().send(Request::Forget(pgid));
}

struct Watchdog {
    stdin: ChildStdin,
    _child: Child,
    failed: bool,
}

fn tell(watchdog: &mut Watchdog, op: char, pgid: u32) {
    if writeln!(watchdog.stdin, "{op} {pgid}").is_err() {
        watchdog.failed = true;
    }
}

fn start_watchdog(owner: &str) -> Option<Watchdog> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", WATCHDOG_SCRIPT, "claude-rayon-watchdog", owner])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove(OWNER_ENV_VAR)
        // Out of this program's group, so a Ctrl-C meant for the program does not reach it.
        .process_group(0);
    match cmd.spawn() {
        Ok(mut child) => Some(Watchdog {
            stdin: child.stdin.take().expect("stdin is piped"),
            _child: child,
            failed: false,
        }),
        Err(e) => {
            log::warn!("cannot start the claude-rayon watchdog (/bin/sh: {e}); processes started by the CLI may outlive this program if it is killed");
            None
        }
    }
}

fn owner_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}", std::process::id())
}

/// Block SIGPIPE for the calling thread, so a write into a dead child's pipe fails with
/// `EPIPE` instead of ending the program.
pub(crate) fn block_sigpipe() {
    // SAFETY: plain libc calls on a local, zero-initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
