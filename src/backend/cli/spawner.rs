//! Starting CLI processes, and making sure nothing they start outlives this program.
//!
//! Children are spawned from one long-lived thread: Linux delivers the parent-death signal
//! when the *thread* that forked a child exits, so spawning from short-lived worker threads
//! would kill healthy children. That signal reaches only the CLI itself, not what the CLI
//! starts (MCP servers, hook commands, tools' subprocesses), so the same thread also keeps a
//! watchdog: a small `/bin/sh` process in a process group of its own that reads a pipe from
//! this program. It learns each CLI's process group as it starts and ends, and the folders
//! the sessions' private working folders are made in; when the pipe closes (this program
//! ended, however it ended, `kill -9` and `exec` included) it kills those groups, then every
//! process that carries one of this program's two marks, then removes this program's
//! private folders.
//!
//! The marks: the variable [`OWNER_ENV_VAR`] in the environment, and a soft limit on file
//! locks (`RLIMIT_LOCKS`) set to a number of this program's own. A process that leaves its
//! group (`setsid`) and empties its environment (`env -i`) still has its limits: every
//! process inherits them through `fork` and `exec`, the CLI does not reset them for what it
//! starts (it closes inherited file descriptors, so an inherited descriptor would not do),
//! and Linux has not enforced that limit since 2.4.25, so the number changes nothing else.
//! Only the CLI processes get it (set between `fork` and `exec`), not this program, so a
//! program's own children are never taken for the CLI's.
//!
//! The pipe's write end must close when this program ends: a child this program forks
//! without `exec` would hold a copy and keep the watchdog waiting for as long as it lives, so
//! a `pthread_atfork` handler closes that copy in every forked child.
//!
//! Writing into a pipe whose reader died raises SIGPIPE, which kills a program that restored
//! its default action. Every thread that writes to a child's pipe blocks SIGPIPE first; the
//! write then fails with `EPIPE` instead, and the signal stays pending on that thread alone.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;
use std::thread;

use crossbeam_channel::Sender;
use parking_lot::Mutex;

/// The variable that marks every CLI process (and what it starts) as this program's.
pub(crate) const OWNER_ENV_VAR: &str = "CLAUDE_RAYON_OWNER";

/// Runs until its stdin closes, then kills what this program started and removes its
/// private folders (see the module docs). `$1` is the environment marker, `$2` the file-lock
/// limit marker (empty when there is none), `$3` the name prefix of this program's folders.
const WATCHDOG_SCRIPT: &str = r#"
trap '' INT TERM HUP QUIT TSTP TTIN TTOU PIPE
groups=' '
folders=''
while IFS= read -r line; do
  case $line in
    '+ '*) groups="$groups${line#+ } " ;;
    '- '*) g=${line#- }
      case $groups in *" $g "*) groups="${groups%% $g *} ${groups#* $g }" ;; esac ;;
    'd '*) folders="$folders${line#d }
" ;;
  esac
done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
n=0
while [ "$n" -lt 5 ]; do
  pids=$({ grep -lzx -- "CLAUDE_RAYON_OWNER=$1" /proc/[0-9]*/environ
    [ -z "$2" ] || grep -l -- "^Max file locks  *$2 " /proc/[0-9]*/limits; } 2>/dev/null |
    sed -n 's#^/proc/\([0-9]*\)/[a-z]*$#\1#p')
  [ -n "$pids" ] || break
  kill -s KILL $pids 2>/dev/null
  n=$((n + 1))
done
printf '%s' "$folders" | while IFS= read -r d; do
  [ -n "$d" ] && rm -rf -- "$d/$3"*
done
"#;

/// This program as the watchdog and the sweep of stale folders know it.
pub(crate) struct Host {
    pid: u32,
    /// When the process started, in clock ticks since boot: a pid is reused, a pid with its
    /// start time is not.
    start: u64,
    /// Tells two programs of one process apart (an `exec` keeps the pid and the start time).
    nonce: u64,
    /// The pid namespace: a pid means something only in its own.
    pid_namespace: u64,
}

impl Host {
    fn current() -> Host {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let pid = std::process::id();
        Host {
            pid,
            start: process_start(pid).unwrap_or(0),
            nonce: nanos,
            pid_namespace: pid_namespace().unwrap_or(0),
        }
    }

    /// The name every private folder of this program starts with.
    pub(crate) fn folder_prefix(&self) -> String {
        format!(
            "{FOLDER_PREFIX}{}-{}-{}-{:x}-",
            self.pid_namespace, self.pid, self.start, self.nonce
        )
    }

    /// Whether a folder named `name` belongs to a program that has ended. `None` when the
    /// name is not one of ours or names another pid namespace (its pids mean nothing here).
    pub(crate) fn folder_owner_ended(&self, name: &str) -> Option<bool> {
        let rest = name.strip_prefix(FOLDER_PREFIX)?;
        let mut parts = rest.split('-');
        let namespace: u64 = parts.next()?.parse().ok()?;
        let pid: u32 = parts.next()?.parse().ok()?;
        let start: u64 = parts.next()?.parse().ok()?;
        let nonce = u64::from_str_radix(parts.next()?, 16).ok()?;
        if namespace != self.pid_namespace || pid == 0 || start == 0 {
            return None;
        }
        if pid == self.pid && start == self.start {
            // This process; another nonce is a program it ran before an `exec`.
            return Some(nonce != self.nonce);
        }
        Some(process_start(pid) != Some(start))
    }

    /// The file-lock limit that marks this program's CLI processes.
    fn lock_limit_marker(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self
            .pid
            .to_le_bytes()
            .into_iter()
            .chain(self.start.to_le_bytes())
            .chain(self.nonce.to_le_bytes())
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // Large, so that no one sets it by chance; far below "unlimited".
        (1 << 61) | (hash >> 3)
    }
}

/// What every private folder's name starts with (`seal::PrivateDir`).
pub(crate) const FOLDER_PREFIX: &str = "claude-rayon-";

/// This program's identity, taken once.
pub(crate) fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(Host::current)
}

/// When process `pid` started, in clock ticks since boot (`/proc/PID/stat`, field 22).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The inode of this process's pid namespace (`/proc/self/ns/pid` reads `pid:[N]`).
fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let text = link.to_str()?;
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// The file-lock limit a CLI process gets: (soft, hard), or `None` when the hard limit is
/// below the marker (someone set one) and it cannot be given.
pub(crate) fn lock_limit() -> Option<(u64, u64)> {
    static LIMIT: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let marker = host().lock_limit_marker();
        let hard = current_lock_limit()?.1;
        if hard != libc::RLIM_INFINITY && hard < marker {
            log::warn!("RLIMIT_LOCKS has a hard limit ({hard}): processes started by the CLI that leave its environment and group may outlive this program if it is killed");
            return None;
        }
        Some((marker, hard))
    })
}

fn current_lock_limit() -> Option<(u64, u64)> {
    // SAFETY: getrlimit writes into the struct passed.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        (libc::getrlimit(libc::RLIMIT_LOCKS, &mut limit) == 0)
            .then_some((limit.rlim_cur, limit.rlim_max))
    }
}

enum Request {
    Spawn(Box<Command>, Sender<std::io::Result<Child>>),
    /// A process group that no longer needs watching (killed and about to be reaped).
    Forget(u32),
    /// A folder in which private folders of this program are made.
    Folder(PathBuf),
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
                                tell(pipe, &format!("+ {}", child.id()));
                            }
                            let _ = reply.send(child);
                        }
                        Request::Forget(pgid) => {
                            if let Some(pipe) = watchdog.as_mut() {
                                tell(pipe, &format!("- {pgid}"));
                            }
                        }
                        Request::Folder(parent) => {
                            if let Some(pipe) = watchdog.as_mut() {
                                let mut line = b"d ".to_vec();
                                line.extend_from_slice(parent.as_os_str().as_bytes());
                                tell_bytes(pipe, &line);
                            }
                        }
                    }
                    if watchdog.as_ref().is_some_and(|w| w.failed) {
                        log::warn!("the claude-rayon watchdog ended; processes started by the CLI may outlive this program if it is killed");
                        // Forked children must not close whatever takes its number next.
                        WATCHDOG_PIPE.store(-1, Ordering::SeqCst);
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

/// Have the watchdog remove this program's private folders in `parent` when the program
/// ends, however it ends. Told once per folder; a name the pipe's lines cannot carry (a
/// line break in it) is left to the sweep of stale folders at a later start.
pub(crate) fn watch_folder(parent: &Path) {
    static TOLD: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    if parent.as_os_str().as_bytes().contains(&b'\n') {
        return;
    }
    if TOLD
        .get_or_init(Default::default)
        .lock()
        .insert(parent.to_path_buf())
    {
        let _ = spawner()
            .requests
            .lock()
            .send(Request::Folder(parent.to_path_buf()));
    }
}

struct Watchdog {
    stdin: ChildStdin,
    _child: Child,
    failed: bool,
}

fn tell(watchdog: &mut Watchdog, line: &str) {
    tell_bytes(watchdog, line.as_bytes());
}

fn tell_bytes(watchdog: &mut Watchdog, line: &[u8]) {
    let mut bytes = line.to_vec();
    bytes.push(b'\n');
    if watchdog.stdin.write_all(&bytes).is_err() {
        watchdog.failed = true;
    }
}

/// The watchdog pipe's write end, closed in every forked child (see the module docs); -1
/// when there is none.
static WATCHDOG_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn close_watchdog_pipe_in_child() {
    let fd = WATCHDOG_PIPE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: close is async-signal-safe; this runs in the child, on its own copy.
        unsafe {
            libc::close(fd);
        }
    }
}

fn start_watchdog(owner: &str) -> Option<Watchdog> {
    use std::os::unix::process::CommandExt;
    let limit_marker = lock_limit().map(|(marker, _)| marker.to_string());
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        WATCHDOG_SCRIPT,
        "claude-rayon-watchdog",
        owner,
        limit_marker.as_deref().unwrap_or(""),
        &host().folder_prefix(),
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .env_remove(OWNER_ENV_VAR)
    // Out of this program's group, so a Ctrl-C meant for the program does not reach it.
    .process_group(0);
    if let Some((soft, hard)) = current_lock_limit() {
        // A program run by a CLI of another claude-rayon program carries that program's mark:
        // its watchdog must not, or the other's watchdog would kill it before it acts.
        if soft != hard {
            // SAFETY: setrlimit is a plain system call, safe between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: hard,
                        rlim_max: hard,
                    };
                    libc::setrlimit(libc::RLIMIT_LOCKS, &limit);
                    Ok(())
                });
            }
        }
    }
    match cmd.spawn() {
        Ok(mut child) => {
            let stdin = child.stdin.take().expect("stdin is piped");
            WATCHDOG_PIPE.store(stdin.as_raw_fd(), Ordering::SeqCst);
            static AT_FORK: OnceLock<()> = OnceLock::new();
            AT_FORK.get_or_init(|| {
                // SAFETY: registers a handler that only calls close.
                unsafe {
                    libc::pthread_atfork(None, None, Some(close_watchdog_pipe_in_child));
                }
            });
            Some(Watchdog {
                stdin,
                _child: child,
                failed: false,
            })
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_stale_only_when_its_program_ended() {
        let me = Host::current();
        assert!(me.start > 0 && me.pid_namespace > 0);
        let name = |ns: u64, pid: u32, start: u64, nonce: u64| {
            format!("{FOLDER_PREFIX}{ns}-{pid}-{start}-{nonce:x}-3-0")
        };
        let ns = me.pid_namespace;
        // Ours.
        assert_eq!(
            me.folder_owner_ended(&format!("{}3-0", me.folder_prefix())),
            Some(false)
        );
        // This process before an `exec`: same pid and start, another nonce.
        assert_eq!(
            me.folder_owner_ended(&name(ns, me.pid, me.start, me.nonce ^ 1)),
            Some(true)
        );
        // A live process of someone else, and the same pid with another start time.
        let parent = std::os::unix::process::parent_id();
        let parent_start = process_start(parent).unwrap();
        assert_eq!(
            me.folder_owner_ended(&name(ns, parent, parent_start, 7)),
            Some(false)
        );
        assert_eq!(
            me.folder_owner_ended(&name(ns, parent, parent_start + 1, 7)),
            Some(true)
        );
        // Another pid namespace, or not one of our names: not ours to judge.
        assert_eq!(me.folder_owner_ended(&name(ns + 1, parent, 1, 7)), None);
        for other in [
            "claude-rayon-notes",
            "claude-rayon-123-1-1a2b0",
            "claude-rayon-x-1-2-3-4-5",
            "other",
        ] {
            assert_eq!(me.folder_owner_ended(other), None, "{other}");
        }
    }

    #[test]
    fn the_lock_limit_mark_is_large_and_per_program() {
        let a = Host::current();
        let mut b = Host::current();
        b.nonce ^= 1;
        assert!(a.lock_limit_marker() >= 1 << 61);
        assert!(a.lock_limit_marker() < libc::RLIM_INFINITY);
        assert_ne!(a.lock_limit_marker(), b.lock_limit_marker());
    }
}
