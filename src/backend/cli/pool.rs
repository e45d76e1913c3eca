//! The pool of warm CLI processes a session keeps, at most `concurrency` of them.

use parking_lot::{Condvar, Mutex};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a checkout waiting for a process to finish loading looks again.
const STARTING_POLL: Duration = Duration::from_millis(20);

use super::conn::PooledConn;
use super::process::{CliProcess, KillSwitch, Launch};
use crate::Error;

pub(crate) struct Pool {
    launch: Launch,
    capacity: usize,
    recycle: Recycle,
    /// At most this many processes start at once (a start costs ~0.8 s of CPU; many at once
    /// on few cores delay every first answer).
    max_starting: usize,
    fresh_per_item: bool,
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    idle: Vec<CliProcess>,
    /// ConnSource that exist: idle, leased, or being started.
    live: usize,
    /// ConnSource started that have not written their first line yet (the CLI writes nothing
    /// until it has loaded): each flag is set by the process's stdout reader.
    starting: Vec<Arc<AtomicBool>>,
    closed: bool,
    /// How many processes were ever started.
    started: u64,
    /// How many healthy processes were retired by [`Recycle`].
    recycled: u64,
    /// ConnSource held outside the pool: leased to an item, or kept by a conversation
    /// (held), so `close` can end them too.
    busy: Vec<(Arc<KillSwitch>, bool)>,
}

/// When a healthy warm process is retired between items and replaced by a fresh one: the
/// CLI's memory grows over a long headless session.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Recycle {
    /// After this many prompts.
    pub after_prompts: Option<u64>,
    /// Above this resident memory, in bytes.
    pub above_bytes: Option<u64>,
}

impl Recycle {
    /// Why `process` should be retired now, if it should.
    fn reason(&self, process: &CliProcess) -> Option<String> {
        let prompts = process.prompts_run();
        if self.after_prompts.is_some_and(|limit| prompts >= limit) {
            return Some(format!("it answered {prompts} prompts"));
        }
        let limit = self.above_bytes?;
        let rss = resident_bytes(process.pid())?;
        (rss > limit).then(|| {
            format!(
                "its resident memory is {} MB, above {} MB",
                rss / (1024 * 1024),
                limit / (1024 * 1024)
            )
        })
    }
}

/// The resident memory of process `pid` (Linux only): `/proc/PID/statm`'s resident pages,
/// the `VmRSS` of `/proc/PID/status` in a line a tenth its size, read at every checkin.
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system setting.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    Some(pages.saturating_mul(page_size))
}

impl Pool {
    pub(crate) fn new(
        launch: Launch,
        capacity: usize,
        max_starting: usize,
        fresh_per_item: bool,
        recycle: Recycle,
    ) -> Pool {
        Pool {
            launch,
            capacity,
            recycle,
            // With a process per item every start is an item: staggering them would only cap
            // its concurrency.
            max_starting: if fresh_per_item {
                capacity
            } else {
                max_starting.clamp(1, capacity)
            },
            fresh_per_item,
            state: Mutex::new(State {
                idle: Vec::new(),
                live: 0,
                starting: Vec::new(),
                closed: false,
                started: 0,
                recycled: 0,
                busy: Vec::new(),
            }),
            freed: Condvar::new(),
        }
    }

    /// Take an idle process, start a new one if there is room, or wait for one until
    /// `should_stop()` (`None`; asked under the lock, so a [`wake`](Self::wake) is never
    /// missed). An idle process whose context reset fails (see `process`) is killed and
    /// replaced here, before anything of the next item is written to it.
    pub(crate) fn checkout(
        self: &Arc<Self>,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Option<PooledConn>, Error> {
        let mut state = self.state.lock();
        loop {
            if state.closed {
                return Err(Error::Closed);
            }
            // Most recently used first: its pages are warm.
            if let Some(mut process) = state.idle.pop() {
                // Busy while its reset is checked, so a close() can reach it.
                let switch = process.kill_switch();
                state.busy.push((Arc::clone(&switch), false));
                drop(state);
                let ready = process.is_reusable() && process.settle_clear().is_ok();
                state = self.state.lock();
                if ready && !state.closed {
                    return Ok(Some(PooledConn::new(Arc::clone(self), process)));
                }
                state.busy.retain(|(s, _)| !Arc::ptr_eq(s, &switch));
                state.live -= 1;
                drop(state);
                drop(process);
                self.freed.notify_all();
                state = self.state.lock();
                continue;
            }
            state
                .starting
                .retain(|loaded| !loaded.load(Ordering::SeqCst));
            if state.live < self.capacity && state.starting.len() < self.max_starting {
                state.live += 1;
                // The start-up slot is taken before the spawn, so that others waiting see it.
                let loaded = Arc::new(AtomicBool::new(false));
                if !self.fresh_per_item {
                    state.starting.push(Arc::clone(&loaded));
                }
                drop(state);
                return match CliProcess::spawn(&self.launch, Arc::clone(&loaded)) {
                    Ok(process) => self.lease(process).map(Some),
                    Err(err) => {
                        loaded.store(true, Ordering::SeqCst);
                        self.state.lock().live -= 1;
                        self.freed.notify_all();
                        Err(err)
                    }
                };
            }
            if should_stop() {
                return Ok(None);
            }
            if state.live < self.capacity {
                // Room for a process, but enough are starting: look again when one has loaded
                // (its reader sets a flag; nothing notifies the pool).
                self.freed.wait_for(&mut state, STARTING_POLL);
            } else {
                self.freed.wait(&mut state);
            }
        }
    }

    /// Make waiting checkouts ask their `should_stop` again.
    pub(crate) fn wake(&self) {
        // Under the lock: a checkout between its question and its wait cannot miss this.
        let _state = self.state.lock();
        self.freed.notify_all();
    }

    fn lease(self: &Arc<Self>, mut process: CliProcess) -> Result<PooledConn, Error> {
        let mut state = self.state.lock();
        if state.closed {
            // A close() came while this process was being started: it must not run.
            state.live -= 1;
            drop(state);
            process.kill();
            self.freed.notify_all();
            return Err(Error::Closed);
        }
        state.started += 1;
        state.busy.push((process.kill_switch(), false));
        Ok(PooledConn::new(Arc::clone(self), process))
    }

    /// Mark a busy process as held beyond one turn (a conversation's): a close kills it but
    /// does not wait for it.
    pub(super) fn hold(&self, pid: u32) {
        for (switch, held) in &mut self.state.lock().busy {
            if switch.pid() == pid {
                *held = true;
            }
        }
    }

    /// Take back a process that was checked out: kept warm for the next item, or retired.
    pub(super) fn checkin(&self, mut process: CliProcess) {
        // Retired here, between items: the item it answered is already handed on, and the
        // next one goes to another process.
        let retire = if self.fresh_per_item {
            None
        } else {
            self.recycle.reason(&process)
        };
        let reuse = !self.fresh_per_item && retire.is_none() && !self.state.lock().closed;
        if reuse {
            // The reset runs while the process waits for its next item.
            process.begin_clear();
        }
        let healthy = process.is_reusable();
        let mut state = self.state.lock();
        let pid = process.pid();
        state.busy.retain(|(switch, _)| switch.pid() != pid);
        if healthy && reuse && !state.closed {
            state.idle.push(process);
        } else {
            if healthy {
                if let Some(reason) = &retire {
                    state.recycled += 1;
                    log::debug!("retiring claude process {pid}: {reason}");
                }
            }
            state.live -= 1;
            drop(state);
            if healthy {
                // A healthy process may still be writing (telemetry, a transcript): let it
                // exit on its own, off this worker's path.
                let _ = std::thread::Builder::new()
                    .name("claude-rayon-shutdown".into())
                    .spawn(move || process.shutdown());
            } else {
                drop(process);
            }
        }
        self.freed.notify_all();
    }

    /// End every process and refuse new checkouts: idle ones cleanly; busy ones (an item in
    /// flight, a conversation) are killed, and the items in flight are waited for (up to
    /// `settle`) so that they are counted before `close` returns.
    pub(crate) fn close(&self, settle: Duration) {
        let idle = {
            let mut state = self.state.lock();
            state.closed = true;
            state.live -= state.idle.len();
            for (switch, _) in &state.busy {
                switch.kill();
            }
            std::mem::take(&mut state.idle)
        };
        self.freed.notify_all();
        // Close every stdin first so the processes exit side by side.
        let handles: Vec<_> = idle
            .into_iter()
            .map(|p| std::thread::spawn(move || p.shutdown()))
            .collect();
        for h in handles {
            let _ = h.join();
        }
        let deadline = Instant::now() + settle;
        let mut state = self.state.lock();
        while state.busy.iter().any(|(_, held)| !held) {
            if self.freed.wait_until(&mut state, deadline).timed_out() {
                break;
            }
        }
    }

    pub(crate) fn started(&self) -> u64 {
        self.state.lock().started
    }

    /// Healthy processes retired between items by the recycling settings.
    pub(crate) fn recycled(&self) -> u64 {
        self.state.lock().recycled
    }

    pub(crate) fn live(&self) -> usize {
        self.state.lock().live
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Idle processes die with the pool (CliProcess kills and reaps on drop).
        let idle = std::mem::take(&mut self.state.get_mut().idle);
        drop(idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn resident_memory_is_read_as_the_kernel_reports_it() {
        let me = std::process::id();
        let from_status = || -> u64 {
            let status = std::fs::read_to_string(format!("/proc/{me}/status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                * 1024
        };
        let before = from_status();
        let read = resident_bytes(me).unwrap();
        let after = from_status();
        // The test's threads may allocate meanwhile: within 16 MB of both readings.
        let slack = 16 * 1024 * 1024;
        assert!(read + slack >= before.min(after) && read <= before.max(after) + slack);
        assert!(resident_bytes(u32::MAX).is_none(), "no such process");
    }
}
