//! Group commit: every writer appends its line and waits until it is on disk; whoever finds
//! no write in progress writes and syncs everything pending at once, so at 20 items a second
//! and more, many items share one `fsync`.

use std::fs::File;
use std::io::Write;

use parking_lot::{Condvar, Mutex};

pub(crate) struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
    file: Mutex<File>,
}

#[derive(Default)]
struct State {
    /// Lines appended and not yet taken by a writer.
    pending: Vec<u8>,
    /// Lines appended so far, and lines on disk so far.
    appended: u64,
    durable: u64,
    /// Whether a writer is writing and syncing now.
    writing: bool,
    /// Failed writes, for the lines each carried (`from..to`): every waiter of a failed
    /// batch hears of it, however many batches failed since.
    failures: Vec<(u64, u64, String)>,
}

impl GroupCommit {
    pub(crate) fn new(file: File) -> GroupCommit {
        GroupCommit {
            state: Mutex::new(State::default()),
            done: Condvar::new(),
            file: Mutex::new(file),
        }
    }

    /// Append `line` and return once it is on disk (or its write failed).
    pub(crate) fn append(&self, line: &[u8]) -> Result<(), String> {
        let mut state = self.state.lock();
        state.pending.extend_from_slice(line);
        state.appended += 1;
        let mine = state.appended;
        loop {
            if state.durable >= mine {
                return match state
                    .failures
                    .iter()
                    .find(|(from, to, _)| (*from..*to).contains(&mine))
                {
                    Some((_, _, error)) => Err(error.clone()),
                    None => Ok(()),
                };
            }
            if state.writing {
                self.done.wait(&mut state);
                continue;
            }
            // Nobody is writing: write everything pending, ours included.
            state.writing = true;
            let batch = std::mem::take(&mut state.pending);
            let (from, to) = (state.durable + 1, state.appended + 1);
            drop(state);
            let written = {
                let mut file = self.file.lock();
                let before = file.metadata().map(|m| m.len());
                let written = file.write_all(&batch).and_then(|()| file.sync_data());
                if written.is_err() {
                    // A write that failed part way (a full disk) must not leave half a line
                    // for the next batch to be glued to: cut the file back to where it was.
                    if let Ok(len) = before {
                        let _ = file.set_len(len);
                    }
                }
                written
            };
            state = self.state.lock();
            state.writing = false;
            state.durable = to - 1;
            if let Err(error) = written {
                state.failures.push((from, to, error.to_string()));
            }
            self.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_line_of_many_writers_lands_once_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lines");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let commit = Arc::new(GroupCommit::new(file));
        std::thread::scope(|s| {
            for writer in 0..8 {
                let commit = Arc::clone(&commit);
                s.spawn(move || {
                    for i in 0..50 {
                        commit.append(format!("{writer}-{i}\n").as_bytes()).unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 400);
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(lines.len(), 400, "no line twice, none lost");
    }

    #[test]
    fn a_failed_write_is_reported_to_every_line_it_carried() {
        // Linux's /dev/full fails every write with "no space left on device".
        let Ok(full) = std::fs::OpenOptions::new().append(true).open("/dev/full") else {
            return;
        };
        let commit = Arc::new(GroupCommit::new(full));
        std::thread::scope(|s| {
            for i in 0..4 {
                let commit = Arc::clone(&commit);
                s.spawn(move || {
                    let error = commit.append(format!("line {i}\n").as_bytes()).unwrap_err();
                    assert!(error.contains("space"), "{error}");
                });
            }
        });
    }
}
